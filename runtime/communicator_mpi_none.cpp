// Builds without MPI (libopenmpi-dev absent when cmake ran): multi-rank runs are refused.
#include "runtime/communicator.h"

namespace mstplan {

Expected<Communicator*> mpi_world() {
  return make_error(ErrorKind::unsupported,
                    "this build has no MPI: install libopenmpi-dev and openmpi-bin (scripts/setup.sh does) and "
                    "rebuild, then run each rank with mpirun -np N");
}

}  // namespace mstplan
