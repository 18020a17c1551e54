#pragma once
// The CPU backend: host memory for both "device" and host pools, and the reference kernels.
// Runs any plan whose bytes fit in this machine's memory; slow (plain loops), exact to define.
#include <memory>

#include "runtime/backend.h"

namespace mstplan {

[[nodiscard]] std::unique_ptr<Backend> make_cpu_backend();

}  // namespace mstplan
