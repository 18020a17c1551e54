// The CUDA emulation itself (kernels/cuda/emu/): the coordinates a launch gives, barriers and
// shuffles with CUDA's semantics, that a missing barrier shows, atomics, the launch limits as
// launch errors, and that a barrier some threads never reach aborts with the kernel's name.
// The kernels below are compiled under the emulation like kernels/cuda/*.cu.
#include "kernels/cuda/emu/emu.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/cuda/device.cuh"

namespace mstplan {
namespace {

/// A device buffer of n values of T, read back with host().
template <typename T>
class Buffer {
 public:
  explicit Buffer(std::size_t n, T fill = T{}) : n_(n) {
    EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&data_), n * sizeof(T)), cudaSuccess);
    const std::vector<T> values(n, fill);
    EXPECT_EQ(cudaMemcpy(data_, values.data(), n * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  }
  ~Buffer() { cudaFree(data_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  [[nodiscard]] T* get() const { return data_; }
  [[nodiscard]] std::vector<T> host() const {
    std::vector<T> values(n_);
    EXPECT_EQ(cudaMemcpy(values.data(), data_, n_ * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return values;
  }

 private:
  std::size_t n_;
  T* data_ = nullptr;
};

__global__ void write_coordinates(int* out) {
  const unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const unsigned thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned per_block = blockDim.x * blockDim.y * blockDim.z;
  out[block * per_block + thread] = static_cast<int>(1000 * block + thread);
}

TEST(Emu, EveryThreadOfEveryBlockRunsOnceWithItsCoordinates) {
  // grid 3 x 2 x 2 = 12 blocks of 5 x 4 x 3 = 60 threads: 720 slots, each written once.
  Buffer<int> out(720, -1);
  MSTPLAN_LAUNCH(dim3(3, 2, 2), dim3(5, 4, 3), 0, nullptr, write_coordinates)(out.get());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const std::vector<int> got = out.host();
  for (int i = 0; i < 720; ++i) EXPECT_EQ(got[i], 1000 * (i / 60) + i % 60) << "slot " << i;
}

/// out[t] = the value thread t+1 (mod n) put in shared memory, with or without a barrier between.
template <bool kSync>
__global__ void rotate_through_shared(float* out) {
  MSTPLAN_DYNAMIC_SHARED(float, s);
  const unsigned t = threadIdx.x, n = blockDim.x;
  s[t] = static_cast<float>(t);
  if constexpr (kSync) __syncthreads();
  out[t] = s[(t + 1) % n];
}

TEST(Emu, ABarrierOrdersSharedMemoryAndAMissingOneShows) {
  constexpr unsigned n = 100;  // four warps, the last partial
  Buffer<float> out(n);
  MSTPLAN_LAUNCH(1, n, n * sizeof(float), nullptr, rotate_through_shared<true>)(out.get());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  std::vector<float> got = out.host();
  for (unsigned t = 0; t < n; ++t) EXPECT_EQ(got[t], static_cast<float>((t + 1) % n)) << "thread " << t;

  // Without the barrier, whichever order the threads run in, one of them reads a slot not yet
  // written: dynamic shared memory starts as 0xFF bytes, a NaN.
  MSTPLAN_LAUNCH(1, n, n * sizeof(float), nullptr, rotate_through_shared<false>)(out.get());
  got = out.host();
  int stale = 0;
  for (float x : got) stale += std::isnan(x) ? 1 : 0;
  EXPECT_GE(stale, 1);
}

__global__ void shuffles(const int* in, int* sum_out, int* half_out) {
  const unsigned t = threadIdx.x;
  int v = in[t];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  sum_out[t] = v;
  half_out[t] = __shfl_xor_sync(0xffffffffu, in[t], 16, 16);
}

TEST(Emu, ShufflesExchangeWithinAWarpAndAWidth) {
  // Two warps; the butterfly gives each lane its warp's sum. With width 16, lane ^ 16 is in a
  // later group for lanes 0-15 (they get their own value) and an earlier one for lanes 16-31.
  Buffer<int> in(64), sum(64), half(64);
  std::vector<int> values(64);
  for (int i = 0; i < 64; ++i) values[i] = i * i;
  cudaMemcpy(in.get(), values.data(), sizeof(int) * 64, cudaMemcpyHostToDevice);
  MSTPLAN_LAUNCH(1, 64, 0, nullptr, shuffles)(in.get(), sum.get(), half.get());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const std::vector<int> s = sum.host(), h = half.host();
  int warp_sum[2] = {0, 0};
  for (int i = 0; i < 64; ++i) warp_sum[i / 32] += i * i;
  for (int i = 0; i < 64; ++i) {
    EXPECT_EQ(s[i], warp_sum[i / 32]) << "lane " << i;
    const int lane = i % 32, source = lane < 16 ? i : i - 16;
    EXPECT_EQ(h[i], source * source) << "lane " << i;
  }
}

__global__ void count_threads(float* total) { atomicAdd(total, 1.0f); }

TEST(Emu, AtomicsSeeEveryThread) {
  Buffer<float> total(1, 0.0f);
  MSTPLAN_LAUNCH(7, 130, 0, nullptr, count_threads)(total.get());
  EXPECT_EQ(total.host()[0], 910.0f);  // 7 blocks x 130 threads
}

TEST(Emu, LaunchesBeyondTheDeviceLimitsAreLaunchErrors) {
  Buffer<float> total(1, 0.0f);
  // 1,025 threads in a block; a grid's y of 65,536: refused, nothing runs.
  MSTPLAN_LAUNCH(1, 1025, 0, nullptr, count_threads)(total.get());
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  MSTPLAN_LAUNCH(dim3(1, 65536), 1, 0, nullptr, count_threads)(total.get());
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // reading the error clears it
  // 48 KiB of dynamic shared memory without opting in, 48 KiB + 4 bytes with.
  MSTPLAN_LAUNCH(1, 1, 48 * 1024 + 4, nullptr, count_threads)(total.get());
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  EXPECT_EQ(total.host()[0], 0.0f);
  ASSERT_EQ(cudaFuncSetAttribute(count_threads, cudaFuncAttributeMaxDynamicSharedMemorySize, 100 * 1024), cudaSuccess);
  MSTPLAN_LAUNCH(1, 1, 48 * 1024 + 4, nullptr, count_threads)(total.get());
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(total.host()[0], 1.0f);
  // An H100 opts in to 227 KiB at most.
  EXPECT_EQ(cudaFuncSetAttribute(count_threads, cudaFuncAttributeMaxDynamicSharedMemorySize, 228 * 1024),
            cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
}

__global__ void divergent_barrier(float* out) {
  // Lane 0 of warp 0 shuffles while its warp-mates wait at the block barrier: neither completes.
  if (threadIdx.x == 0) {
    out[0] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
  } else {
    __syncthreads();
  }
}

TEST(EmuDeathTest, ABarrierSomeThreadsNeverReachAbortsNamingTheKernel) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  Buffer<float> out(1);
  EXPECT_DEATH(MSTPLAN_LAUNCH(2, 64, 0, nullptr, divergent_barrier)(out.get()),
               "kernel divergent_barrier: no thread of a block can go on .*63 at __syncthreads, 1 at a warp "
               "shuffle, 0 exited, block \\(0, 0, 0\\)");
}

TEST(Emu, GridStrideGridsAreCappedSoThatLoopsIterate) {
  EXPECT_EQ(cuda::blocks_for(1, 256), 1u);
  EXPECT_EQ(cuda::blocks_for(1 << 20, 256), static_cast<unsigned>(cuda::kMaxGridStrideBlocks));
  EXPECT_LT(cuda::kMaxGridStrideBlocks, 4);
}

}  // namespace
}  // namespace mstplan
