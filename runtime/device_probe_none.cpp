// Build without the CUDA backend: the probe says so (see device_probe.h).
#include <fmt/format.h>

#include "runtime/device_probe.h"

namespace mstplan::runtime {

bool cuda_compiled() { return false; }

DeviceProbe probe_devices() {
  DeviceProbe probe;
  probe.status = "this build has no CUDA backend (configure with -DMSTPLAN_CUDA=ON where nvcc is installed)";
  return probe;
}

}  // namespace mstplan::runtime
