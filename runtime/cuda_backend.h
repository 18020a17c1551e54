#pragma once
// The CUDA backend: device tensors from a stream-ordered pool (cudaMallocFromPoolAsync on one
// stream; the pool keeps what it reserved, as a caching allocator does), offloaded tensors in
// pinned host memory, GEMMs through cuBLASLt and the kernels of kernels/cuda/. Besides the
// allocator's exact counts it reports the pool's used and reserved high-water marks and
// cudaMemGetInfo, with the context and cuBLASLt's own bytes shown apart (DeviceMemoryReport).
//
// Where the project was built without nvcc, or no device is visible, make_cuda_backend fails as
// a value (ErrorKind::unsupported).
//
//   Expected<std::unique_ptr<Backend>> gpu = make_cuda_backend();
#include <memory>

#include "planner/error.h"
#include "runtime/backend.h"

namespace mstplan {

/// Whether this build has the CUDA backend.
[[nodiscard]] bool cuda_backend_compiled();
[[nodiscard]] Expected<std::unique_ptr<Backend>> make_cuda_backend(int device = 0);

}  // namespace mstplan
