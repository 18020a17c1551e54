// LM-head cross-entropy (reference.h's cross_entropy_forward / cross_entropy_backward): one block
// per row, fp32 arithmetic.
//
// Forward, per row r with target t (t < 0: ignored):
//   one pass over the V logits keeps a running (max, sum of exp(x - max)) per thread (the online
//   softmax), merged across the block: lse = max + log(sum) (-inf for a row of -inf only);
//   loss += (lse - x_t) * scale for a kept row (one atomicAdd per row);
//   lse[r] = lse when asked; dlogits[r][c] = (exp(x_c - lse) - [c == t]) * scale * (1 - (x_c/cap)^2)
//   (the last factor only when cap > 0: the logits are already capped, x = cap * tanh(z / cap), so
//   dx/dz = 1 - tanh^2 = 1 - (x/cap)^2), and 0 for an ignored row.
// Backward: the same dlogits from the kept lse.
//
// dlogits may be the logits' own buffer (the reference reads the target's logit before writing):
// every read of the first pass happens before the block's first barrier, and the second pass reads
// each element before the same thread overwrites it. A target >= V (the reference rejects it)
// gives NaN: loss, and the row of dlogits.
#include "kernels/cuda/cross_entropy.cuh"

#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/cuda/device.cuh"

namespace mstplan::cuda {

namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float quiet_nan() { return __int_as_float(0x7fc00000); }

/// A running max and sum of exp(x - max).
struct MaxSum {
  float max;
  float sum;
};

__device__ __forceinline__ MaxSum push(MaxSum a, float x) {
  if (x > a.max) {  // a new max: rescale what was summed (exp(-inf) = 0 for the first value)
    a.sum = a.sum * expf(a.max - x) + 1.0f;
    a.max = x;
  } else if (a.max != -INFINITY || x != x) {  // -inf - -inf would be NaN; a NaN logit poisons the sum
    a.sum += expf(x - a.max);
  }
  return a;
}

__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.max, b.max);
  if (m == -INFINITY) return {m, a.sum + b.sum};
  return {m, a.sum * expf(a.max - m) + b.sum * expf(b.max - m)};
}

/// The block's merged (max, sum), returned to every thread. Ends with a barrier after which
/// `shared` may be reused; begins with one only implicitly (callers have none pending).
__device__ MaxSum block_merge(MaxSum v) {
  __shared__ float max_of[kWarps], sum_of[kWarps];
  __shared__ MaxSum total;
  for (int offset = 16; offset > 0; offset >>= 1) {
    const MaxSum o{__shfl_xor_sync(0xffffffffu, v.max, offset), __shfl_xor_sync(0xffffffffu, v.sum, offset)};
    v = merge(v, o);
  }
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  if (lane == 0) {
    max_of[warp] = v.max;
    sum_of[warp] = v.sum;
  }
  __syncthreads();
  if (warp == 0) {
    MaxSum w = lane < kWarps ? MaxSum{max_of[lane], sum_of[lane]} : MaxSum{-INFINITY, 0.0f};
    for (int offset = 16; offset > 0; offset >>= 1) {
      const MaxSum o{__shfl_xor_sync(0xffffffffu, w.max, offset), __shfl_xor_sync(0xffffffffu, w.sum, offset)};
      w = merge(w, o);
    }
    if (lane == 0) total = w;
  }
  __syncthreads();
  return total;
}

/// Row pointer of view row r (the view's dtype is T).
template <typename T>
__device__ __forceinline__ T* row_of(const View& v, std::int64_t r) {
  return static_cast<T*>(v.data) + v.buffer_row(r) * v.cols;
}

/// dlogits row = (softmax - onehot) * scale * dcap; 0 for an ignored row (target < 0).
template <typename TL, typename TD>
__device__ void write_dlogits(const TL* logits, TD* dlogits, std::int64_t vocab, float lse, std::int64_t target,
                              float scale, float softcap) {
  for (std::int64_t c = threadIdx.x; c < vocab; c += blockDim.x) {
    if (target < 0) {
      dlogits[c] = from_float<TD>(0.0f);
      continue;
    }
    const float y = to_float(logits[c]);
    float d = expf(y - lse) - (c == target ? 1.0f : 0.0f);
    d *= scale;
    if (softcap > 0.0f) {
      const float t = y / softcap;
      d *= 1.0f - t * t;
    }
    if (target >= vocab) d = quiet_nan();
    dlogits[c] = from_float<TD>(d);
  }
}

template <typename TL, typename TD>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(View logits, View targets, float scale, float softcap, float* loss, View lse, bool has_lse,
                   View dlogits, bool has_dlogits) {
  const std::int64_t r = blockIdx.x;
  const std::int64_t vocab = logits.cols;
  const TL* row = row_of<const TL>(logits, r);
  const std::int64_t target = load_index(targets, r);
  MaxSum acc{-INFINITY, 0.0f};
  for (std::int64_t c = threadIdx.x; c < vocab; c += blockDim.x) acc = push(acc, to_float(row[c]));
  // The target's logit, read before any thread of the block can write dlogits (the barrier in
  // block_merge orders it), as the reference reads it before overwriting.
  const float target_logit = (threadIdx.x == 0 && target >= 0 && target < vocab) ? to_float(row[target]) : 0.0f;
  const MaxSum total = block_merge(acc);
  const float row_lse = total.max == -INFINITY ? -INFINITY : total.max + logf(total.sum);
  if (threadIdx.x == 0) {
    if (has_lse) store(lse, r, 0, row_lse);
    if (target >= 0) atomicAdd(loss, (target < vocab ? row_lse - target_logit : quiet_nan()) * scale);
  }
  if (has_dlogits) write_dlogits(row, row_of<TD>(dlogits, r), vocab, row_lse, target, scale, softcap);
}

template <typename TL, typename TD>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(View logits, View lse, View targets, float scale, float softcap, View dlogits) {
  const std::int64_t r = blockIdx.x;
  write_dlogits(row_of<const TL>(logits, r), row_of<TD>(dlogits, r), logits.cols, load(lse, r, 0),
                load_index(targets, r), scale, softcap);
}

bool is_float(DType t) { return t == DType::bf16 || t == DType::fp32; }

/// Calls f(TL{}, TD{}) with the element types of the logits and dlogits views (bf16 or fp32).
template <typename F>
void dispatch(DType logits, DType dlogits, F&& f) {
  if (logits == DType::fp32) {
    if (dlogits == DType::fp32) f(float{}, float{});
    else f(float{}, __nv_bfloat16{});
  } else {
    if (dlogits == DType::fp32) f(__nv_bfloat16{}, float{});
    else f(__nv_bfloat16{}, __nv_bfloat16{});
  }
}

}  // namespace

Status cross_entropy_forward(const View& logits, const View& targets, float scale, float softcap, float* loss,
                             const View* lse, const View* dlogits, cudaStream_t stream) {
  return launch_status("cross_entropy_forward", [&] {
    const std::int64_t rows = logits.rows();
    if (rows <= 0 || loss == nullptr || !is_float(logits.dtype)) return;
    if (dlogits != nullptr && !is_float(dlogits->dtype)) return;
    const View lse_view = lse != nullptr ? *lse : View{};
    const View dlogits_view = dlogits != nullptr ? *dlogits : View{};
    dispatch(logits.dtype, dlogits != nullptr ? dlogits->dtype : DType::fp32, [&](auto tl, auto td) {
      using TL = decltype(tl);
      using TD = decltype(td);
      MSTPLAN_LAUNCH(static_cast<unsigned>(rows), kThreads, 0, stream, forward_kernel<TL, TD>)(
          logits, targets, scale, softcap, loss, lse_view, lse != nullptr, dlogits_view, dlogits != nullptr);
    });
  });
}

Status cross_entropy_backward(const View& logits, const View& lse, const View& targets, float scale, float softcap,
                              const View& dlogits, cudaStream_t stream) {
  return launch_status("cross_entropy_backward", [&] {
    const std::int64_t rows = logits.rows();
    if (rows <= 0 || !is_float(logits.dtype) || !is_float(dlogits.dtype)) return;
    dispatch(logits.dtype, dlogits.dtype, [&](auto tl, auto td) {
      using TL = decltype(tl);
      using TD = decltype(td);
      MSTPLAN_LAUNCH(static_cast<unsigned>(rows), kThreads, 0, stream, backward_kernel<TL, TD>)(logits, lse, targets, scale,
                                                                                    softcap, dlogits);
    });
  });
}

}  // namespace mstplan::cuda
