// The CUDA backend where the project was built without nvcc (see cuda_backend.h).
#include "runtime/cuda_backend.h"

namespace mstplan {

bool cuda_backend_compiled() { return false; }

Expected<std::unique_ptr<Backend>> make_cuda_backend(int) {
  return make_error(ErrorKind::unsupported,
                    "this mst-plan was built without the CUDA backend (no nvcc at build time); rebuild with "
                    "-DMSTPLAN_CUDA=ON, or use --backend cpu");
}

}  // namespace mstplan
