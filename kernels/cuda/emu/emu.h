#pragma once
// A CPU emulation of CUDA's execution model, to run the kernels of kernels/cuda/ where there is no
// GPU (this machine, CI): the same .cu sources, compiled by the host compiler with this header
// included first (kernels/CMakeLists.txt generates one wrapper .cpp per .cu).
//
// What it models: a launch's grid of blocks, each block's threads run as fibers (own stacks,
// switched in emu.cpp) in one OS thread; __syncthreads as a block barrier of the threads that have
// not exited; warp shuffles through a warp barrier; static __shared__ variables (function-local
// statics: blocks run one at a time) and dynamic shared memory (a per-block buffer filled with
// 0xFF bytes, NaN as floats, before each block); atomics; the launch limits of an H100 (1,024
// threads per block, grid y/z 65,535, 48 KiB of dynamic shared memory unless raised with
// cudaFuncSetAttribute, at most 227 KiB) as launch errors that cudaGetLastError reports; the
// runtime calls of the launchers, the tests and runtime/cuda_backend.cpp (emu.cpp: device memory
// on the heap, copies as memcpy, streams and synchronisation as no-ops, the default memory pool);
// and cuBLASLt's matmul (cublaslt_emu.cpp).
//
// What it catches: indexing and tiling errors, a missing __syncthreads (warps run one at a time
// up to the next block barrier, warps and lanes in increasing or decreasing order drawn per phase
// by a seeded generator, so a read of another thread's unsynchronised write sees the old value in
// one of the orders; device.cuh caps grid-stride grids at 3 blocks so loops iterate), a barrier
// that some threads never reach (aborts with the kernel and block), shuffles in divergent code,
// launch configurations the hardware refuses, GEMM layouts cuBLASLt would refuse. Under
// AddressSanitizer, out-of-bounds reads and writes of device buffers.
// What it cannot: timing, the memory model beyond barriers, FMA contraction (nvcc fuses a * b + c,
// the host does not: results may differ by an ulp), the real pool's rounding and cuBLASLt's own
// memory.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>

#define MSTPLAN_CUDA_EMU 1

namespace mstplan::emu {

/// The running emulated thread's coordinates.
struct ThreadCoords {
  uint3 thread_idx{};
  uint3 block_idx{};
  dim3 block_dim;
  dim3 grid_dim;
};
[[nodiscard]] const ThreadCoords& coords();

/// __syncthreads: waits until every thread of the block that has not exited arrives.
void sync_block();
/// The shuffle exchange: `bits` from this lane, the value of lane `lane ^ lane_mask` (within
/// groups of `width` lanes; a lane of a later group gives this lane's own value) back.
[[nodiscard]] std::uint64_t shuffle_xor(std::uint64_t bits, unsigned mask, int lane_mask, int width);
/// This block's dynamic shared memory (0xFF bytes at the block's start).
[[nodiscard]] void* dynamic_shared();

/// One thread's body: calls the kernel with its own copy of the launch's arguments.
using ThreadBody = void (*)(const void* launch);
/// Runs a grid (or records a launch error for cudaGetLastError); `kernel` identifies the function
/// for cudaFuncSetAttribute's limit, `name` (its source spelling) for messages.
void run_grid(dim3 grid, dim3 block, std::size_t dynamic_shared_bytes, const void* kernel, const char* name,
              ThreadBody body, const void* launch);

template <typename... P>
class Launch {
 public:
  Launch(dim3 grid, dim3 block, std::size_t shared_bytes, void (*kernel)(P...), const char* name)
      : grid_(grid), block_(block), shared_bytes_(shared_bytes), kernel_(kernel), name_(name) {}

  /// The <<<...>>>(args) call: the arguments are converted to the kernel's parameter types once,
  /// as a launch copies them, and every thread receives its own copy.
  template <typename... A>
  void operator()(A&&... args) const {
    const Bound bound{kernel_, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
    run_grid(grid_, block_, shared_bytes_, reinterpret_cast<const void*>(kernel_), name_, &Launch::run_thread,
             &bound);
  }

 private:
  struct Bound {
    void (*kernel)(P...);
    std::tuple<std::decay_t<P>...> args;
  };
  static void run_thread(const void* launch) {
    const auto* bound = static_cast<const Bound*>(launch);
    std::apply(bound->kernel, bound->args);
  }
  dim3 grid_, block_;
  std::size_t shared_bytes_;
  void (*kernel_)(P...);
  const char* name_;
};

/// MSTPLAN_LAUNCH's emulated form (kernels/cuda/device.cuh).
template <typename... P>
Launch<P...> launch(dim3 grid, dim3 block, std::size_t shared_bytes, cudaStream_t /*stream*/, void (*kernel)(P...),
                    const char* name) {
  return Launch<P...>(grid, block, shared_bytes, kernel, name);
}

}  // namespace mstplan::emu

/// cuda_runtime.h's typed overload (declared for nvcc only).
template <typename T>
cudaError_t cudaFuncSetAttribute(T* entry, cudaFuncAttribute attr, int value) {
  return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(entry), attr, value);
}

// ---- The device-side names kernels use -------------------------------------------------------

#define threadIdx (::mstplan::emu::coords().thread_idx)
#define blockIdx (::mstplan::emu::coords().block_idx)
#define blockDim (::mstplan::emu::coords().block_dim)
#define gridDim (::mstplan::emu::coords().grid_dim)

// Blocks run one at a time in one OS thread, so a function-local static is one block's shared
// variable.
#undef __shared__
#define __shared__ static
#undef __launch_bounds__
#define __launch_bounds__(...)

/// extern __shared__ T name[] (see kernels/cuda/device.cuh).
#define MSTPLAN_EMU_DYNAMIC_SHARED(type, name) type* const name = static_cast<type*>(::mstplan::emu::dynamic_shared())

inline void __syncthreads() { ::mstplan::emu::sync_block(); }

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8);
  std::uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = ::mstplan::emu::shuffle_xor(bits, mask, lane_mask, width);
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}

inline float atomicAdd(float* address, float value) { return std::atomic_ref<float>(*address).fetch_add(value); }
inline double atomicAdd(double* address, double value) {
  return std::atomic_ref<double>(*address).fetch_add(value);
}
inline int atomicAdd(int* address, int value) { return std::atomic_ref<int>(*address).fetch_add(value); }
inline unsigned atomicAdd(unsigned* address, unsigned value) {
  return std::atomic_ref<unsigned>(*address).fetch_add(value);
}

// Round-to-nearest intrinsics: the host's IEEE operations (the emulation target is compiled with
// -ffp-contract=off, so nothing is fused that the kernel did not fuse with fmaf).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __int_as_float(int x) { return std::bit_cast<float>(x); }
inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
