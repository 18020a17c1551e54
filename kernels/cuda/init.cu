#include "kernels/cuda/init.cuh"

#include "kernels/cuda/device.cuh"

namespace mstplan::cuda {
namespace {

constexpr std::uint64_t kGolden = 0x9E3779B97F4A7C15ull;

// splitmix64's output at an (incremented) counter, as a double uniform in (0, 1); the same
// arithmetic as ref::uniform01.
__device__ __forceinline__ double uniform01(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (static_cast<double>(z >> 11) + 0.5) * 0x1.0p-53;
}

__global__ void fill_normal_kernel(View x, std::uint64_t state, double mean, double std, std::int64_t n) {
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const double u = uniform01(state + (2 * static_cast<std::uint64_t>(e) + 1) * kGolden);
    const double v = uniform01(state + (2 * static_cast<std::uint64_t>(e) + 2) * kGolden);
    const double normal = sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
    store(x, e / x.cols, e % x.cols, static_cast<float>(mean + std * normal));
  }
}

}  // namespace

Status fill_normal(const View& x, std::uint64_t state, double mean, double std, cudaStream_t stream) {
  return launch_status("fill_normal", [&] {
    const std::int64_t n = x.seqs * x.positions * x.cols;
    if (n == 0) return;
    constexpr unsigned threads = 256;
    MSTPLAN_LAUNCH(blocks_for(n, threads), threads, 0, stream, fill_normal_kernel)(x, state, mean, std, n);
  });
}

}  // namespace mstplan::cuda
