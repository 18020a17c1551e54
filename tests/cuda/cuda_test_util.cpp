#include "tests/cuda/cuda_test_util.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

namespace mstplan::test {
namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

}  // namespace

bool cuda_device_available() {
  static const bool available = [] {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return count > 0;
  }();
  return available;
}

HostTensor::HostTensor(DType dt, std::int64_t r, std::int64_t c, std::uint64_t seed, float std, std::int64_t int_range)
    : dtype(dt), rows(r), cols(c), bytes(static_cast<std::size_t>(r * c * dtype_bytes(dt)), 0) {
  std::uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
  auto uniform = [&state] {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return (static_cast<double>(state >> 11) + 0.5) * 0x1.0p-53;
  };
  for (std::int64_t i = 0; i < r; ++i) {
    for (std::int64_t j = 0; j < c; ++j) {
      if (int_range > 0) {
        set(i, j, static_cast<float>(static_cast<std::int64_t>(uniform() * static_cast<double>(int_range))));
      } else {
        const double a = uniform(), b = uniform();
        set(i, j, static_cast<float>(std * std::sqrt(-2 * std::log(a)) * std::cos(6.283185307179586 * b)));
      }
    }
  }
}

float HostTensor::at(std::int64_t r, std::int64_t c) const {
  const auto i = static_cast<std::size_t>(r * cols + c);
  switch (dtype) {
    case DType::int32: {
      std::int32_t x;
      std::memcpy(&x, bytes.data() + i * 4, 4);
      return static_cast<float>(x);
    }
    case DType::int64: {
      std::int64_t x;
      std::memcpy(&x, bytes.data() + i * 8, 8);
      return static_cast<float>(x);
    }
    default: {
      const ref::View v = ref::contiguous(const_cast<unsigned char*>(bytes.data()), dtype, rows, cols);
      return ref::load(v, r, c);
    }
  }
}

void HostTensor::set(std::int64_t r, std::int64_t c, float x) {
  const auto i = static_cast<std::size_t>(r * cols + c);
  if (dtype == DType::int32) {
    const auto v = static_cast<std::int32_t>(x);
    std::memcpy(bytes.data() + i * 4, &v, 4);
  } else if (dtype == DType::int64) {
    const auto v = static_cast<std::int64_t>(x);
    std::memcpy(bytes.data() + i * 8, &v, 8);
  } else {
    ref::store(ref::contiguous(bytes.data(), dtype, rows, cols), r, c, x);
  }
}

DeviceTensor::DeviceTensor(const HostTensor& host) : dtype_(host.dtype), rows_(host.rows), cols_(host.cols) {
  check(cudaMalloc(&data_, std::max<std::size_t>(host.bytes.size(), 1)), "cudaMalloc");
  check(cudaMemcpy(data_, host.bytes.data(), host.bytes.size(), cudaMemcpyHostToDevice), "cudaMemcpy");
}

DeviceTensor::~DeviceTensor() { cudaFree(data_); }

cuda::View DeviceTensor::view() const {
  return cuda::View{data_, to_cuda(dtype_), cols_, 1, rows_, rows_, 0};
}

cuda::View DeviceTensor::like(const ref::View& shape) const { return to_cuda(shape, data_); }

HostTensor DeviceTensor::download() const {
  check(cudaDeviceSynchronize(), "kernel");
  HostTensor out(dtype_, rows_, cols_, 0);
  check(cudaMemcpy(out.bytes.data(), data_, out.bytes.size(), cudaMemcpyDeviceToHost), "cudaMemcpy");
  return out;
}

ref::View shaped(HostTensor& t, const Layout& l) {
  ref::View v = t.view();
  v.seqs = l.seqs;
  v.positions = l.positions;
  v.seq_stride = l.seq_stride;
  v.first = l.first;
  return v;
}

cuda::DType to_cuda(DType dtype) {
  switch (dtype) {
    case DType::bf16: return cuda::DType::bf16;
    case DType::fp32: return cuda::DType::fp32;
    case DType::int32: return cuda::DType::int32;
    case DType::int64: return cuda::DType::int64;
    default: throw std::invalid_argument("no CUDA view of this dtype");
  }
}

cuda::View to_cuda(const ref::View& v, void* device_data) {
  return cuda::View{device_data, to_cuda(v.dtype), v.cols, v.seqs, v.positions, v.seq_stride, v.first};
}

double max_error(const HostTensor& a, const HostTensor& b) {
  if (a.rows != b.rows || a.cols != b.cols) return INFINITY;
  double worst = 0;
  for (std::int64_t r = 0; r < a.rows; ++r) {
    for (std::int64_t c = 0; c < a.cols; ++c) {
      const double x = a.at(r, c), y = b.at(r, c);
      if (std::isnan(x) != std::isnan(y)) return INFINITY;
      worst = std::max(worst, std::fabs(x - y) / std::max(1.0, std::fabs(y)));
    }
  }
  return worst;
}

}  // namespace mstplan::test
