// Parts of the device probe shared by the CUDA and the CUDA-less build.
#include <fmt/format.h>

#include "runtime/device_probe.h"

namespace mstplan::runtime {

std::string cuda_version_string(int version) {
  return fmt::format("{}.{}", version / 1000, (version % 1000) / 10);
}

}  // namespace mstplan::runtime
