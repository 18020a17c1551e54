// Rotary embedding in place (reference.h's rope, reference.cpp's arithmetic).
//
// The inverse frequencies are computed on the host exactly as the reference computes them (the
// same double-precision std::pow and scaling code) and passed by value in the kernel's parameters
// (no device memory). One block per row: the block's threads first compute the row's cos and sin
// (angle = position * inv_freq in double, as the reference, then rounded to float) into shared
// memory, then rotate every (head, i) pair, consecutive threads on consecutive columns.
// The rotation uses the _rn intrinsics (no FMA contraction): x1 cos - x2 sin and x2 cos + x1 sin
// are the reference's fp32 operations.
#include <cmath>
#include <numbers>
#include <stdexcept>
#include <string>

#include "kernels/cuda/device.cuh"
#include "kernels/cuda/rope.cuh"
#include "kernels/rope_frequencies.h"

namespace mstplan::cuda {
namespace {

using i64 = std::int64_t;

constexpr int kThreads = 128;
constexpr int kMaxHalf = 256;  ///< head_dim up to 512

struct InvFreq {
  double f[kMaxHalf];
};

__global__ void __launch_bounds__(kThreads) rope_kernel(View x, i64 head_dim, InvFreq inv, i64 first_position, bool inverse) {
  __shared__ double freq[kMaxHalf];
  __shared__ float cs[kMaxHalf], sn[kMaxHalf];
  const i64 half = head_dim / 2, heads = x.cols / head_dim, rows = x.rows();
  for (i64 i = threadIdx.x; i < half; i += kThreads) freq[i] = inv.f[i];
  for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
    __syncthreads();  // freq written; cs / sn no longer read for the previous row
    const auto pos = static_cast<double>(first_position + x.position(r));
    for (i64 i = threadIdx.x; i < half; i += kThreads) {
      const double angle = pos * freq[i];
      const auto s = static_cast<float>(sin(angle));
      cs[i] = static_cast<float>(cos(angle));
      sn[i] = inverse ? -s : s;
    }
    __syncthreads();
    const i64 base = x.buffer_row(r) * x.cols;
    for (i64 p = threadIdx.x; p < heads * half; p += kThreads) {
      const i64 h = p / half, i = p - h * half;
      const i64 c1 = base + h * head_dim + i, c2 = c1 + half;
      const float x1 = load_at(x, c1), x2 = load_at(x, c2), c = cs[i], s = sn[i];
      store_at(x, c1, __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s)));
      store_at(x, c2, __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s)));
    }
  }
}

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("rope: " + what);
}

}  // namespace

Status rope(const View& x, std::int64_t head_dim, const Rope& rope, std::int64_t seq_len, bool inverse,
            cudaStream_t stream) {
  return launch_status("rope", [&] {
    require(head_dim > 0 && head_dim % 2 == 0, "head_dim must be even and positive");
    require(x.cols % head_dim == 0, "cols not a multiple of head_dim");
    require(head_dim / 2 <= kMaxHalf, "head_dim above 512 is not supported");
    require(x.dtype == DType::bf16 || x.dtype == DType::fp32, "x must be bf16 or fp32");
    require(rope.scaling != RopeScaling::dynamic || rope.max_position_embeddings > 0, "dynamic scaling needs max_position_embeddings");
    if (rope.scaling == RopeScaling::llama3) {
      require(rope.original_max_position_embeddings > 0, "llama3 scaling needs original_max_position_embeddings");
      require(rope.high_freq_factor != rope.low_freq_factor, "llama3 needs high_freq_factor != low_freq_factor");
    }
    InvFreq inv{};  // the reference's frequencies (one shared function), passed by value to the kernel
    kernels::rope_inverse_frequencies(rope, head_dim, seq_len, inv.f);

    const i64 rows = x.seqs * x.positions;
    if (rows == 0 || x.cols == 0) return;
    MSTPLAN_LAUNCH(blocks_for(rows, 1), kThreads, 0, stream, rope_kernel)(x, head_dim, inv, rope.first_position, inverse);
  });
}

}  // namespace mstplan::cuda
