#pragma once
// What the CUDA launchers take: a View mirroring kernels/reference/reference.h's, and the shapes
// and parameters of kernels/boundary.h, so that .cu files never include planner headers (nvcc 13
// cannot compile fmt 9's consteval format checks). runtime/cuda_backend.cpp converts the views.
//
// Every launcher has its reference twin's contract (reference.h), enqueues on `stream` and
// returns without synchronising; launch errors surface through cudaGetLastError.
#include <cstdint>

#include <cuda_runtime_api.h>

#include "kernels/boundary.h"

namespace mstplan::cuda {

enum class DType : std::uint8_t { bf16, fp32, int32, int64 };

/// A strided set of rows on the device: `seqs` groups of `positions` rows; group g starts at row
/// g * seq_stride + first; each row has `cols` contiguous elements (see ref::View).
struct View {
  void* data = nullptr;
  DType dtype = DType::fp32;
  std::int64_t cols = 1;
  std::int64_t seqs = 1;
  std::int64_t positions = 0;
  std::int64_t seq_stride = 0;
  std::int64_t first = 0;

#if defined(__CUDACC__) || defined(MSTPLAN_CUDA_EMU)
  __host__ __device__ std::int64_t rows() const { return seqs * positions; }
  __host__ __device__ std::int64_t buffer_row(std::int64_t r) const {
    return (r / positions) * seq_stride + first + r % positions;
  }
  __host__ __device__ std::int64_t position(std::int64_t r) const { return first + r % positions; }
#else
  [[nodiscard]] std::int64_t rows() const { return seqs * positions; }
#endif
};

using kernels::AttentionShape;

using kernels::Rope;
using kernels::RopeScaling;

using kernels::AdamW;

using kernels::GatedActivation;
using kernels::QuantFormat;
using kernels::Quantized;

}  // namespace mstplan::cuda
