#pragma once
// Helpers of the CUDA_* tests: skip without a device, host tensors filled from a seed, their
// device copies, and the comparison of a CUDA kernel's output with its CPU reference twin.
//
//   MSTPLAN_REQUIRE_CUDA();                       // GTEST_SKIP() where no device is visible
//   HostTensor x(DType::bf16, 37, 129, 1);        // rows, cols, seed: N(0, 1) values, rounded
//   DeviceTensor dx(x);                           // a device copy
//   ref::rmsnorm_forward(x.view(), ...);          // the reference on the host copy
//   EXPECT_LAUNCHED(cuda::rmsnorm_forward(dx.view(), ..., nullptr));   // the launcher's status
//   EXPECT_LT(max_error(dy.download(), y), 1e-6); // elementwise, relative to max(1, |ref|)
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "kernels/cuda/status.h"
#include "kernels/cuda/view.h"
#include "kernels/reference/reference.h"

namespace mstplan::test {

/// Whether a CUDA device can be used (false also where the runtime or driver is missing).
[[nodiscard]] bool cuda_device_available();

#define MSTPLAN_REQUIRE_CUDA()                                                         \
  do {                                                                                 \
    if (!::mstplan::test::cuda_device_available()) GTEST_SKIP() << "no CUDA device";   \
  } while (0)

/// A launcher's status: a failure fails the test, naming the kernel and why (the comparisons
/// after it then fail too).
#define EXPECT_LAUNCHED(status)                                      \
  do {                                                               \
    const ::mstplan::cuda::Status launched_ = (status);              \
    EXPECT_TRUE(launched_.ok()) << launched_.error;                  \
  } while (0)

/// A rows x cols host matrix of one dtype; values N(0, std) from `seed` (rounded to the dtype;
/// integers uniform in [0, int_range) instead).
struct HostTensor {
  HostTensor(DType dtype, std::int64_t rows, std::int64_t cols, std::uint64_t seed, float std = 1.0f,
             std::int64_t int_range = 0);
  DType dtype;
  std::int64_t rows, cols;
  std::vector<unsigned char> bytes;
  [[nodiscard]] ref::View view() { return ref::contiguous(bytes.data(), dtype, rows, cols); }
  [[nodiscard]] float at(std::int64_t r, std::int64_t c) const;
  void set(std::int64_t r, std::int64_t c, float x);
};

/// Rows of a view over a buffer: `seqs` groups of `positions` rows, `seq_stride` apart, from
/// `first` (a mini-sequence chunk of each sequence, say).
struct Layout {
  std::int64_t seqs, positions, seq_stride, first;
};
[[nodiscard]] inline Layout contiguous_layout(std::int64_t rows) { return {1, rows, rows, 0}; }
/// Rows the buffer under a layout needs.
[[nodiscard]] inline std::int64_t buffer_rows(const Layout& l) {
  return (l.seqs - 1) * l.seq_stride + l.first + l.positions;
}

/// A host tensor's view under a layout.
[[nodiscard]] ref::View shaped(HostTensor& t, const Layout& l);

/// A device copy of a HostTensor (same bytes), freed on destruction.
class DeviceTensor {
 public:
  explicit DeviceTensor(const HostTensor& host);
  ~DeviceTensor();
  DeviceTensor(const DeviceTensor&) = delete;
  DeviceTensor& operator=(const DeviceTensor&) = delete;
  /// The whole matrix, contiguous.
  [[nodiscard]] cuda::View view() const;
  /// The device data under a host view's shape (seqs, positions, strides, first).
  [[nodiscard]] cuda::View like(const ref::View& shape) const;
  /// Synchronises the device and copies the bytes back into a HostTensor of the same shape.
  [[nodiscard]] HostTensor download() const;
  [[nodiscard]] void* data() const { return data_; }

 private:
  DType dtype_;
  std::int64_t rows_, cols_;
  void* data_ = nullptr;
};

[[nodiscard]] cuda::DType to_cuda(DType dtype);
/// A device pointer under a reference view's shape.
[[nodiscard]] cuda::View to_cuda(const ref::View& v, void* device_data);

/// max over elements of |a - b| / max(1, |b|).
[[nodiscard]] double max_error(const HostTensor& a, const HostTensor& b);

}  // namespace mstplan::test
