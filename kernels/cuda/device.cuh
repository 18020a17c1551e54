#pragma once
// Device-side helpers shared by the kernels (included by .cu files only): element access of a
// View with fp32 arithmetic and round-to-nearest-even bf16 stores, as the reference does.
#include <cuda_bf16.h>

#include <exception>
#include <string>

#include "kernels/cuda/status.h"
#include "kernels/cuda/view.h"

// A kernel launch, `kernel<<<grid, block, shared_bytes, stream>>>(args)`, written
// MSTPLAN_LAUNCH(grid, block, shared_bytes, stream, kernel)(args) so that the same source also
// runs under the CPU emulation (kernels/cuda/emu/emu.h, which defines MSTPLAN_CUDA_EMU); and
// `extern __shared__ T name[]` written MSTPLAN_DYNAMIC_SHARED(T, name).
#if defined(MSTPLAN_CUDA_EMU)
#define MSTPLAN_LAUNCH(grid, block, shared_bytes, stream, ...) \
  ::mstplan::emu::launch(grid, block, shared_bytes, stream, __VA_ARGS__, #__VA_ARGS__)
#define MSTPLAN_DYNAMIC_SHARED(type, name) MSTPLAN_EMU_DYNAMIC_SHARED(type, name)
#else
#define MSTPLAN_LAUNCH(grid, block, shared_bytes, stream, ...) __VA_ARGS__<<<grid, block, shared_bytes, stream>>>
#define MSTPLAN_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

namespace mstplan::cuda {

/// A launcher's body run to a Status: an argument check that throws inside the .cu file becomes
/// "kernel: what", and a failed launch (cudaGetLastError) "kernel: the CUDA error".
template <class Body>
Status launch_status(const char* kernel, Body&& body) {
  try {
    body();
  } catch (const std::exception& e) {
    return Status{e.what()};
  }
  if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) {
    return Status{std::string(kernel) + ": " + cudaGetErrorString(e)};
  }
  return Status{};
}

/// Element `offset` of the view's buffer (counted from its data pointer) as fp32, and storing
/// with round-to-nearest-even to bf16: for kernels that compute buffer offsets themselves.
__device__ __forceinline__ float load_at(const View& v, std::int64_t offset) {
  switch (v.dtype) {
    case DType::bf16: return __bfloat162float(static_cast<const __nv_bfloat16*>(v.data)[offset]);
    case DType::fp32: return static_cast<const float*>(v.data)[offset];
    case DType::int32: return static_cast<float>(static_cast<const std::int32_t*>(v.data)[offset]);
    case DType::int64: return static_cast<float>(static_cast<const std::int64_t*>(v.data)[offset]);
  }
  return 0.0f;
}
__device__ __forceinline__ void store_at(const View& v, std::int64_t offset, float x) {
  switch (v.dtype) {
    case DType::bf16: static_cast<__nv_bfloat16*>(v.data)[offset] = __float2bfloat16_rn(x); break;
    case DType::fp32: static_cast<float*>(v.data)[offset] = x; break;
    case DType::int32: static_cast<std::int32_t*>(v.data)[offset] = static_cast<std::int32_t>(x); break;
    case DType::int64: static_cast<std::int64_t*>(v.data)[offset] = static_cast<std::int64_t>(x); break;
  }
}

/// Address of element (r, c) of a view.
__device__ __forceinline__ char* element_address(const View& v, std::int64_t r, std::int64_t c) {
  const std::int64_t size = v.dtype == DType::bf16 ? 2 : (v.dtype == DType::int64 ? 8 : 4);
  return static_cast<char*>(v.data) + (v.buffer_row(r) * v.cols + c) * size;
}

__device__ __forceinline__ float load(const View& v, std::int64_t r, std::int64_t c) {
  const char* p = element_address(v, r, c);
  switch (v.dtype) {
    case DType::bf16: return __bfloat162float(*reinterpret_cast<const __nv_bfloat16*>(p));
    case DType::fp32: return *reinterpret_cast<const float*>(p);
    case DType::int32: return static_cast<float>(*reinterpret_cast<const std::int32_t*>(p));
    case DType::int64: return static_cast<float>(*reinterpret_cast<const std::int64_t*>(p));
  }
  return 0.0f;
}

__device__ __forceinline__ void store(const View& v, std::int64_t r, std::int64_t c, float x) {
  char* p = element_address(v, r, c);
  switch (v.dtype) {
    case DType::bf16: *reinterpret_cast<__nv_bfloat16*>(p) = __float2bfloat16_rn(x); break;
    case DType::fp32: *reinterpret_cast<float*>(p) = x; break;
    case DType::int32: *reinterpret_cast<std::int32_t*>(p) = static_cast<std::int32_t>(x); break;
    case DType::int64: *reinterpret_cast<std::int64_t*>(p) = static_cast<std::int64_t>(x); break;
  }
}

/// A bf16 or fp32 matrix whose rows are (group g, index i) pairs at buffer row
/// base + g * gstride + i: attention's batch x seq activations (g = batch), its (batch*heads) x
/// seq statistics and eager scores (g = batch*heads + head).
struct Mat {
  char* data = nullptr;
  DType dtype = DType::fp32;
  std::int64_t cols = 0;
  std::int64_t base = 0;
  std::int64_t gstride = 0;
};

__device__ __forceinline__ std::int64_t mat_index(const Mat& m, std::int64_t g, std::int64_t i, std::int64_t c) {
  return (m.base + g * m.gstride + i) * m.cols + c;
}
__device__ __forceinline__ float mat_load(const Mat& m, std::int64_t g, std::int64_t i, std::int64_t c) {
  const std::int64_t idx = mat_index(m, g, i, c);
  if (m.dtype == DType::bf16) return __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(m.data)[idx]);
  return reinterpret_cast<const float*>(m.data)[idx];
}
__device__ __forceinline__ void mat_store(const Mat& m, std::int64_t g, std::int64_t i, std::int64_t c, float x) {
  const std::int64_t idx = mat_index(m, g, i, c);
  if (m.dtype == DType::bf16) {
    reinterpret_cast<__nv_bfloat16*>(m.data)[idx] = __float2bfloat16_rn(x);
  } else {
    reinterpret_cast<float*>(m.data)[idx] = x;
  }
}

/// Token ids and labels (int32 or int64 views).
__device__ __forceinline__ std::int64_t load_index(const View& v, std::int64_t r) {
  const char* p = element_address(v, r, 0);
  return v.dtype == DType::int64 ? *reinterpret_cast<const std::int64_t*>(p)
                                 : static_cast<std::int64_t>(*reinterpret_cast<const std::int32_t*>(p));
}

/// The most blocks blocks_for gives. Under the CPU emulation a small odd number, so that the
/// tests run every grid-stride loop through several iterations, as a tensor of more than 65,535
/// blocks' worth does on the GPU.
#if defined(MSTPLAN_CUDA_EMU)
inline constexpr std::int64_t kMaxGridStrideBlocks = 3;
#else
inline constexpr std::int64_t kMaxGridStrideBlocks = 65535;
#endif

/// Blocks of `threads` covering `n` items, capped for grid-stride loops.
inline unsigned blocks_for(std::int64_t n, unsigned threads) {
  const std::int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > kMaxGridStrideBlocks ? kMaxGridStrideBlocks : b));
}

}  // namespace mstplan::cuda
