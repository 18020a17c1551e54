#pragma once
// What the CUDA launchers take: plain structs mirroring kernels/reference/reference.h (View,
// AttentionShape, Rope, AdamW), so that .cu files never include planner headers (nvcc 13 cannot
// compile fmt 9's consteval format checks). runtime/cuda_backend.cpp converts one to the other.
//
// Every launcher has its reference twin's contract (reference.h), enqueues on `stream` and
// returns without synchronising; launch errors surface through cudaGetLastError.
#include <cstdint>

#include <cuda_runtime_api.h>

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

struct AttentionShape {
  std::int64_t batch = 1, seq = 0, heads = 0, kv_heads = 0, head_dim = 0;
  float scale = 1.0f;
  float softcap = 0.0f;     ///< > 0: scores = softcap * tanh(scores / softcap)
  std::int64_t window = 0;  ///< > 0: query i sees keys (i - window, i]
};

struct Rope {
  double theta = 10000.0;
  int scaling = 0;  ///< 0 none, 1 linear, 2 dynamic, 3 llama3
  double factor = 1.0, low_freq_factor = 1.0, high_freq_factor = 4.0;
  std::int64_t original_max_position_embeddings = 0;
  std::int64_t max_position_embeddings = 0;
};

struct AdamW {
  float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.0f;
  std::int64_t step = 1;
};

enum class GatedActivation : std::uint8_t { swiglu, geglu };

}  // namespace mstplan::cuda
