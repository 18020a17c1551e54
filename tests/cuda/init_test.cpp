// The device's initialisation gives the reference's values (the CPU backend's): the same
// counter-based stream, the same double arithmetic (the device's log and cos may differ from glibc's in the last bit of a
// double, which changes a float result only when it lies within that bit of a rounding boundary:
// tolerance one fp32 ulp, 2^-23 relative, and one bf16 ulp, 2^-7 relative to max(1, |x|)).
#include <gtest/gtest.h>

#include "kernels/cuda/init.cuh"
#include "tests/cuda/cuda_test_util.h"

namespace mstplan {
namespace {

TEST(CUDA_Init, FillNormalMatchesTheReference) {
  MSTPLAN_REQUIRE_CUDA();
  for (DType dtype : {DType::fp32, DType::bf16}) {
    for (std::int64_t rows : {1, 37, 1001}) {
      test::HostTensor want(dtype, rows, 3, 1), before(dtype, rows, 3, 2);
      ref::fill_normal(want.view(), 0x1234567ull + static_cast<std::uint64_t>(rows), 1.0, 0.1);
      test::DeviceTensor got(before);
      EXPECT_LAUNCHED(cuda::fill_normal(got.view(), 0x1234567ull + static_cast<std::uint64_t>(rows), 1.0, 0.1, nullptr));
      const double tolerance = dtype == DType::bf16 ? 1.0 / 128 : 0x1.0p-22;
      EXPECT_LE(test::max_error(got.download(), want), tolerance) << to_string(dtype) << " rows " << rows;
    }
  }
}

}  // namespace
}  // namespace mstplan
