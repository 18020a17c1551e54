// CUDA RMSNorm forward, apply and backward against their CPU reference twins, at odd sizes, for
// contiguous views and chunk views (2 groups, first > 0), bf16 and fp32, Llama's offset 0 and
// Gemma's 1. Outputs are pre-filled with random values, so the whole buffers are compared: rows
// outside the view must be left as they were.
//
// Tolerances (test::max_error: |a - b| / max(1, |b|) elementwise):
//  - fp32 forward / backward: the row sums (sum of squares, the backward's dot product) and dw's
//    sum over rows are reduced in another order than the reference's loop; the relative
//    difference is about sqrt(n) * 2^-24 (~2e-6 at 1000 terms), checked at 1e-5.
//  - bf16 outputs: the fp32 values before rounding differ as above, which may move a result across
//    a rounding boundary: one bf16 ulp, at most 2^-7 of max(1, |b|) (8 significant bits).
//  - apply: the same IEEE operations on the same inputs ((x * rstd) * (w + offset), no FMA):
//    bit-exact.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kernels/cuda/norm.cuh"
#include "tests/cuda/cuda_test_util.h"

namespace mstplan {
namespace {

using i64 = std::int64_t;
using test::DeviceTensor;
using test::HostTensor;
using test::max_error;

constexpr double kBf16Ulp = 1.0 / 128;
constexpr double kFp32Reduction = 1e-5;
constexpr float kEps = 1e-6f;

using test::buffer_rows;
using test::Layout;
using test::shaped;

const std::vector<Layout>& layouts() {
  static const std::vector<Layout> all = {
      {1, 1, 1, 0}, {1, 37, 37, 0}, {1, 129, 129, 0}, {2, 13, 40, 7},  // chunk: rows 7..19 and 47..59
  };
  return all;
}

std::string describe(DType dtype, const Layout& l, i64 cols, float offset) {
  return std::string(dtype == DType::bf16 ? "bf16" : "fp32") + " seqs " + std::to_string(l.seqs) + " positions " +
         std::to_string(l.positions) + " first " + std::to_string(l.first) + " cols " + std::to_string(cols) +
         " offset " + std::to_string(offset);
}

TEST(CUDA_Norm, ForwardMatchesReference) {
  MSTPLAN_REQUIRE_CUDA();
  std::uint64_t seed = 1;
  for (const DType dtype : {DType::bf16, DType::fp32}) {
    const double tol = dtype == DType::bf16 ? kBf16Ulp : kFp32Reduction;
    for (const i64 cols : {i64{1}, i64{37}, i64{129}, i64{1000}}) {
      for (const Layout& l : layouts()) {
        for (const float offset : {0.0f, 1.0f}) {
          const i64 rows = buffer_rows(l);
          HostTensor x(dtype, rows, cols, seed++), w(dtype, 1, cols, seed++, 0.5f);
          HostTensor y(dtype, rows, cols, seed++), rstd(DType::fp32, rows, 1, seed++);
          DeviceTensor dx(x), dw(w), dy(y), drstd(rstd);
          const ref::View xv = shaped(x, l), yv = shaped(y, l), rv = shaped(rstd, l);
          ref::rmsnorm_forward(xv, w.view(), kEps, offset, yv, rv);
          EXPECT_LAUNCHED(cuda::rmsnorm_forward(dx.like(xv), dw.view(), kEps, offset, dy.like(yv), drstd.like(rv), nullptr));
          ASSERT_EQ(cudaGetLastError(), cudaSuccess);
          const std::string what = describe(dtype, l, cols, offset);
          EXPECT_LE(max_error(dy.download(), y), tol) << what;
          EXPECT_LE(max_error(drstd.download(), rstd), kFp32Reduction) << what;
        }
      }
    }
  }
}

TEST(CUDA_Norm, ApplyMatchesReferenceExactly) {
  MSTPLAN_REQUIRE_CUDA();
  std::uint64_t seed = 100;
  for (const DType dtype : {DType::bf16, DType::fp32}) {
    for (const i64 cols : {i64{1}, i64{37}, i64{129}, i64{1000}}) {
      for (const Layout& l : layouts()) {
        for (const float offset : {0.0f, 1.0f}) {
          const i64 rows = buffer_rows(l);
          HostTensor x(dtype, rows, cols, seed++), w(dtype, 1, cols, seed++, 0.5f);
          HostTensor y(dtype, rows, cols, seed++), rstd(DType::fp32, rows, 1, seed++, 0.3f);
          for (i64 r = 0; r < rows; ++r) rstd.set(r, 0, 1.0f + rstd.at(r, 0) * rstd.at(r, 0));  // positive
          DeviceTensor dx(x), dw(w), dy(y), drstd(rstd);
          const ref::View xv = shaped(x, l), yv = shaped(y, l), rv = shaped(rstd, l);
          ref::rmsnorm_apply(xv, rv, w.view(), offset, yv);
          EXPECT_LAUNCHED(cuda::rmsnorm_apply(dx.like(xv), drstd.like(rv), dw.view(), offset, dy.like(yv), nullptr));
          ASSERT_EQ(cudaGetLastError(), cudaSuccess);
          EXPECT_EQ(max_error(dy.download(), y), 0.0) << describe(dtype, l, cols, offset);
        }
      }
    }
  }
}

/// dw: none, overwritten, accumulated. in_place: dx is dy's storage.
struct BackwardCase {
  bool residual;
  int dw_mode;  // 0 none, 1 overwrite, 2 accumulate
  bool in_place;
};

TEST(CUDA_Norm, BackwardMatchesReference) {
  MSTPLAN_REQUIRE_CUDA();
  const std::vector<BackwardCase> cases = {
      {false, 0, false}, {false, 1, false}, {true, 2, false}, {true, 1, false}, {false, 2, true}, {true, 1, true},
  };
  std::uint64_t seed = 1000;
  for (const DType dtype : {DType::bf16, DType::fp32}) {
    const double tol = dtype == DType::bf16 ? kBf16Ulp : kFp32Reduction;
    for (const i64 cols : {i64{1}, i64{37}, i64{129}, i64{1000}}) {
      for (const Layout& l : layouts()) {
        for (const float offset : {0.0f, 1.0f}) {
          for (const BackwardCase& c : cases) {
            const i64 rows = buffer_rows(l);
            HostTensor x(dtype, rows, cols, seed++), w(dtype, 1, cols, seed++, 0.5f), dyt(dtype, rows, cols, seed++);
            HostTensor res(dtype, rows, cols, seed++), dxt(dtype, rows, cols, seed++), dwt(dtype, 1, cols, seed++);
            HostTensor y(dtype, rows, cols, seed++), rstd(DType::fp32, rows, 1, seed++);
            const ref::View xv = shaped(x, l), yv = shaped(y, l), rv = shaped(rstd, l);
            ref::rmsnorm_forward(xv, w.view(), kEps, offset, yv, rv);  // a realistic rstd
            DeviceTensor dx(x), dw(w), ddy(dyt), dres(res), ddx(dxt), ddw(dwt), drstd(rstd);

            HostTensor& dx_host = c.in_place ? dyt : dxt;
            const DeviceTensor& dx_dev = c.in_place ? ddy : ddx;
            const ref::View dyv = shaped(dyt, l), resv = shaped(res, l), dxv = shaped(dx_host, l);
            std::optional<ref::View> rres, rdw;
            if (c.residual) rres = resv;
            if (c.dw_mode > 0) rdw = dwt.view();
            ref::rmsnorm_backward(dyv, xv, rv, w.view(), offset, rres, dxv, rdw, c.dw_mode == 2);

            const cuda::View cres = dres.like(resv), cdw = ddw.view();
            EXPECT_LAUNCHED(cuda::rmsnorm_backward(ddy.like(dyv), dx.like(xv), drstd.like(rv), dw.view(), offset,
                                   c.residual ? &cres : nullptr, dx_dev.like(dxv), c.dw_mode > 0 ? &cdw : nullptr,
                                   c.dw_mode == 2, nullptr));
            ASSERT_EQ(cudaGetLastError(), cudaSuccess);
            const std::string what = describe(dtype, l, cols, offset) + " residual " + std::to_string(c.residual) +
                                     " dw " + std::to_string(c.dw_mode) + " in place " + std::to_string(c.in_place);
            EXPECT_LE(max_error(dx_dev.download(), dx_host), tol) << what;
            EXPECT_LE(max_error(ddw.download(), dwt), tol) << what;
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace mstplan
