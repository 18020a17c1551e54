// cuda::Gemm (cuBLASLt) and cuda::bias_grad against ref::matmul_xwt / matmul_xw / matmul_dw and
// ref::bias_grad, at odd sizes (rows 1, 37, 129; in / out 16, 64, 176, 515), bf16 and fp32,
// accumulate on and off, with and without bias, for contiguous views and chunk views (2 groups,
// first > 0, as a mini-sequence chunk of a batch), a chunk against a contiguous view, groups that
// do not line up (one matmul per common run of rows), and bf16 inputs with fp32 outputs. Outputs
// are pre-filled with random values and whole buffers are compared: rows outside the view must
// be left exactly as they were.
//
// Tolerances, per element, with M = sum of |products| of the element's dot product plus |bias|
// plus |old value| when accumulating (computed in double from the inputs):
//  - fp32: cuBLAS sums the products in another order (blocked, possibly split-K) than the
//    reference's sequential loop. Each result's rounding error is at most about n * 2^-24 * M
//    (n <= 515 terms) and in practice about sqrt(n) * 2^-24 * M (~1.4e-6 M); checked at 1e-5 M.
//    fp32 operands run in true fp32 (CUBLAS_COMPUTE_32F, no TF32); bf16 products are exact in fp32.
//  - bf16 outputs: the fp32 values before the final rounding differ as above, which may move the
//    result across a rounding boundary: one bf16 ulp, at most 2^-7 of max(|got|, |want|), on top.
//  - bf16 outputs rounded more than once: dw of a chunk view runs one matmul per group through
//    the output (beta 1), and a bias of another dtype than y (or no cuBLASLt algorithm with the
//    bias epilogue) is added by a kernel after the matmul: each extra rounding of an intermediate
//    (|intermediate| <= M) adds at most half an ulp, 2^-8 M.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/cuda/gemm.cuh"
#include "tests/cuda/cuda_test_util.h"

namespace mstplan {
namespace {

using i64 = std::int64_t;
using test::DeviceTensor;
using test::HostTensor;

constexpr double kFp32Sum = 1e-5;
constexpr double kBf16Ulp = 1.0 / 128;
constexpr double kBf16HalfUlp = 1.0 / 256;

/// A cuda::Gemm with a bound 32 MiB workspace.
struct GemmFixture {
  cuda::Gemm gemm;
  void* workspace = nullptr;
  static constexpr std::size_t kBytes = std::size_t{32} << 20;
  GemmFixture() {
    if (cudaMalloc(&workspace, kBytes) != cudaSuccess) workspace = nullptr;
    gemm.bind_workspace(workspace, workspace != nullptr ? kBytes : 0);
  }
  ~GemmFixture() { cudaFree(workspace); }
  GemmFixture(const GemmFixture&) = delete;
  GemmFixture& operator=(const GemmFixture&) = delete;
};

using test::buffer_rows;
using test::Layout;
using test::shaped;
Layout plain(i64 rows) { return test::contiguous_layout(rows); }

/// The view's elements as fp32, row-major over the view's rows.
std::vector<float> values(const ref::View& v) {
  std::vector<float> out(static_cast<std::size_t>(v.rows() * v.cols));
  for (i64 r = 0; r < v.rows(); ++r) {
    for (i64 c = 0; c < v.cols; ++c) out[static_cast<std::size_t>(r * v.cols + c)] = ref::load(v, r, c);
  }
  return out;
}

const char* name(DType t) { return t == DType::bf16 ? "bf16" : "fp32"; }

std::string describe(const Layout& l) {
  return "(seqs " + std::to_string(l.seqs) + " positions " + std::to_string(l.positions) + " stride " +
         std::to_string(l.seq_stride) + " first " + std::to_string(l.first) + ")";
}

/// Whole buffers: rows of `view` within the tolerance above (`magnitude` per view element,
/// row-major over the view's rows), every other row unchanged.
void expect_close(const HostTensor& got, const HostTensor& want, const ref::View& view,
                  const std::vector<double>& magnitude, int extra_roundings, const std::string& what) {
  ASSERT_EQ(got.rows, want.rows);
  ASSERT_EQ(got.cols, want.cols);
  std::vector<i64> view_row(static_cast<std::size_t>(want.rows), -1);
  for (i64 r = 0; r < view.rows(); ++r) view_row[static_cast<std::size_t>(view.buffer_row(r))] = r;
  const bool bf16 = want.dtype == DType::bf16;
  i64 bad = 0;
  std::ostringstream first;
  for (i64 br = 0; br < want.rows; ++br) {
    const i64 r = view_row[static_cast<std::size_t>(br)];
    for (i64 c = 0; c < want.cols; ++c) {
      const double g = got.at(br, c), w = want.at(br, c);
      double tol = 0.0;
      if (r >= 0) {
        const double m = magnitude[static_cast<std::size_t>(r * want.cols + c)];
        tol = kFp32Sum * m;
        if (bf16) tol += kBf16Ulp * std::max(std::fabs(g), std::fabs(w)) + extra_roundings * kBf16HalfUlp * m;
      }
      const bool ok = r >= 0 ? std::fabs(g - w) <= tol : (g == w || (std::isnan(g) && std::isnan(w)));
      if (!ok && bad++ == 0) {
        first << "buffer row " << br << " col " << c << ": got " << g << " want " << w << " tolerance " << tol
              << (r < 0 ? " (outside the view)" : "");
      }
    }
  }
  EXPECT_EQ(bad, 0) << what << ": first mismatch at " << first.str();
}

/// y = x . w^T [+ b] (accumulate: y +=) on the device and in the reference.
void check_xwt(GemmFixture& f, DType in_t, DType out_t, std::optional<DType> bias_t, const Layout& xl,
               const Layout& yl, i64 in, i64 out, bool accumulate, std::uint64_t seed) {
  const std::string what = std::string("xwt ") + name(in_t) + "->" + name(out_t) +
                           (bias_t ? std::string(" bias ") + name(*bias_t) : std::string()) + " x " + describe(xl) +
                           " y " + describe(yl) + " in " + std::to_string(in) + " out " + std::to_string(out) +
                           (accumulate ? " accumulate" : "");
  HostTensor x(in_t, buffer_rows(xl), in, seed), w(in_t, out, in, seed + 1), y(out_t, buffer_rows(yl), out, seed + 2);
  std::optional<HostTensor> b;
  if (bias_t) b.emplace(*bias_t, 1, out, seed + 3);
  HostTensor want = y;
  const ref::View xv = shaped(x, xl), yv = shaped(y, yl), want_v = shaped(want, yl);
  const std::optional<ref::View> bv = b ? std::optional<ref::View>(b->view()) : std::nullopt;
  ref::matmul_xwt(xv, w.view(), bv, want_v, accumulate);

  DeviceTensor dx(x), dw(w), dy(y);
  std::optional<DeviceTensor> db;
  cuda::View bias_view;
  if (b) {
    db.emplace(*b);
    bias_view = db->view();
  }
  EXPECT_EQ(f.gemm.xwt(dx.like(xv), dw.view(), b ? &bias_view : nullptr, dy.like(yv), accumulate, nullptr).error, "") << what;
  const HostTensor got = dy.download();
  ASSERT_EQ(cudaGetLastError(), cudaSuccess) << what;

  const std::vector<float> xs = values(xv), ws = values(w.view()), ys = values(yv);
  const std::vector<float> bs = b ? values(b->view()) : std::vector<float>(static_cast<std::size_t>(out), 0.0f);
  std::vector<double> m(static_cast<std::size_t>(xv.rows() * out));
  for (i64 r = 0; r < xv.rows(); ++r) {
    for (i64 o = 0; o < out; ++o) {
      double s = std::fabs(bs[static_cast<std::size_t>(o)]);
      for (i64 i = 0; i < in; ++i) {
        s += std::fabs(static_cast<double>(xs[static_cast<std::size_t>(r * in + i)]) *
                       ws[static_cast<std::size_t>(o * in + i)]);
      }
      if (accumulate) s += std::fabs(ys[static_cast<std::size_t>(r * out + o)]);
      m[static_cast<std::size_t>(r * out + o)] = s;
    }
  }
  // A bias is added in the epilogue (one rounding) or by a kernel after the matmul (two).
  expect_close(got, want, yv, m, b ? 1 : 0, what);
}

/// dx = dy . w (accumulate: dx +=).
void check_xw(GemmFixture& f, DType in_t, DType out_t, const Layout& dyl, const Layout& dxl, i64 in, i64 out,
              bool accumulate, std::uint64_t seed) {
  const std::string what = std::string("xw ") + name(in_t) + "->" + name(out_t) + " dy " + describe(dyl) + " dx " +
                           describe(dxl) + " in " + std::to_string(in) + " out " + std::to_string(out) +
                           (accumulate ? " accumulate" : "");
  HostTensor dy(in_t, buffer_rows(dyl), out, seed), w(in_t, out, in, seed + 1), dx(out_t, buffer_rows(dxl), in, seed + 2);
  HostTensor want = dx;
  const ref::View dyv = shaped(dy, dyl), dxv = shaped(dx, dxl), want_v = shaped(want, dxl);
  ref::matmul_xw(dyv, w.view(), want_v, accumulate);

  DeviceTensor d_dy(dy), d_w(w), d_dx(dx);
  EXPECT_EQ(f.gemm.xw(d_dy.like(dyv), d_w.view(), d_dx.like(dxv), accumulate, nullptr).error, "") << what;
  const HostTensor got = d_dx.download();
  ASSERT_EQ(cudaGetLastError(), cudaSuccess) << what;

  const std::vector<float> dys = values(dyv), ws = values(w.view()), dxs = values(dxv);
  std::vector<double> m(static_cast<std::size_t>(dyv.rows() * in));
  for (i64 r = 0; r < dyv.rows(); ++r) {
    for (i64 i = 0; i < in; ++i) {
      double s = accumulate ? std::fabs(dxs[static_cast<std::size_t>(r * in + i)]) : 0.0;
      for (i64 o = 0; o < out; ++o) {
        s += std::fabs(static_cast<double>(dys[static_cast<std::size_t>(r * out + o)]) *
                       ws[static_cast<std::size_t>(o * in + i)]);
      }
      m[static_cast<std::size_t>(r * in + i)] = s;
    }
  }
  expect_close(got, want, dxv, m, 0, what);
}

/// dw = dy^T . x summed over every row (accumulate: dw +=). `groups`: matmuls the device runs
/// through dw (extra roundings of a bf16 dw: groups - 1).
void check_dw(GemmFixture& f, DType in_t, DType out_t, const Layout& dyl, const Layout& xl, i64 in, i64 out,
              bool accumulate, int groups, std::uint64_t seed) {
  const std::string what = std::string("dw ") + name(in_t) + "->" + name(out_t) + " dy " + describe(dyl) + " x " +
                           describe(xl) + " in " + std::to_string(in) + " out " + std::to_string(out) +
                           (accumulate ? " accumulate" : "");
  HostTensor dy(in_t, buffer_rows(dyl), out, seed), x(in_t, buffer_rows(xl), in, seed + 1),
      dw(out_t, out, in, seed + 2);
  HostTensor want = dw;
  const ref::View dyv = shaped(dy, dyl), xv = shaped(x, xl);
  ref::matmul_dw(dyv, xv, want.view(), accumulate);

  DeviceTensor d_dy(dy), d_x(x), d_dw(dw);
  EXPECT_EQ(f.gemm.dw(d_dy.like(dyv), d_x.like(xv), d_dw.view(), accumulate, nullptr).error, "") << what;
  const HostTensor got = d_dw.download();
  ASSERT_EQ(cudaGetLastError(), cudaSuccess) << what;

  const std::vector<float> dys = values(dyv), xs = values(xv), dws = values(dw.view());
  std::vector<double> m(static_cast<std::size_t>(out * in));
  for (i64 o = 0; o < out; ++o) {
    for (i64 i = 0; i < in; ++i) {
      double s = accumulate ? std::fabs(dws[static_cast<std::size_t>(o * in + i)]) : 0.0;
      for (i64 r = 0; r < dyv.rows(); ++r) {
        s += std::fabs(static_cast<double>(dys[static_cast<std::size_t>(r * out + o)]) *
                       xs[static_cast<std::size_t>(r * in + i)]);
      }
      m[static_cast<std::size_t>(o * in + i)] = s;
    }
  }
  expect_close(got, want, dw.view(), m, groups - 1, what);
}

struct Dims {
  i64 in, out;
};
const std::vector<Dims>& dims() {
  static const std::vector<Dims> all = {{16, 64}, {176, 515}, {515, 16}};
  return all;
}
const std::vector<i64>& row_counts() {
  static const std::vector<i64> all = {1, 37, 129};
  return all;
}

// Two groups of 37 rows, 50 apart, from row 5 (rows 5..41 and 55..91), and the same rows of
// another buffer from row 3 (a chunk against a contiguous view).
constexpr Layout kChunk{2, 37, 50, 5};
constexpr Layout kChunkOther{2, 37, 45, 3};
constexpr Layout kContiguous74{1, 74, 74, 3};
// Groups that do not line up with kChunk's: 37 groups of 2 rows, 3 apart (one matmul per row).
constexpr Layout kPairs{37, 2, 3, 1};

TEST(CUDA_Gemm, XwtMatchesReference) {
  MSTPLAN_REQUIRE_CUDA();
  GemmFixture f;
  ASSERT_TRUE(f.gemm.ok());
  std::uint64_t seed = 100;
  for (const DType t : {DType::fp32, DType::bf16}) {
    for (const i64 rows : row_counts()) {
      for (const Dims& d : dims()) {
        for (const bool bias : {false, true}) {
          for (const bool accumulate : {false, true}) {
            check_xwt(f, t, t, bias ? std::optional<DType>(t) : std::nullopt, plain(rows), plain(rows), d.in, d.out,
                      accumulate, seed);
            seed += 10;
          }
        }
      }
    }
  }
}

TEST(CUDA_Gemm, XwMatchesReference) {
  MSTPLAN_REQUIRE_CUDA();
  GemmFixture f;
  ASSERT_TRUE(f.gemm.ok());
  std::uint64_t seed = 200;
  for (const DType t : {DType::fp32, DType::bf16}) {
    for (const i64 rows : row_counts()) {
      for (const Dims& d : dims()) {
        for (const bool accumulate : {false, true}) {
          check_xw(f, t, t, plain(rows), plain(rows), d.in, d.out, accumulate, seed);
          seed += 10;
        }
      }
    }
  }
}

TEST(CUDA_Gemm, DwMatchesReference) {
  MSTPLAN_REQUIRE_CUDA();
  GemmFixture f;
  ASSERT_TRUE(f.gemm.ok());
  std::uint64_t seed = 300;
  for (const DType t : {DType::fp32, DType::bf16}) {
    for (const i64 rows : row_counts()) {
      for (const Dims& d : dims()) {
        for (const bool accumulate : {false, true}) {
          check_dw(f, t, t, plain(rows), plain(rows), d.in, d.out, accumulate, 1, seed);
          seed += 10;
        }
      }
    }
  }
}

TEST(CUDA_Gemm, ChunkViews) {
  MSTPLAN_REQUIRE_CUDA();
  GemmFixture f;
  ASSERT_TRUE(f.gemm.ok());
  std::uint64_t seed = 400;
  for (const DType t : {DType::fp32, DType::bf16}) {
    for (const Dims& d : {Dims{64, 176}, Dims{515, 16}}) {
      for (const bool accumulate : {false, true}) {
        // Both operands chunked (one strided-batched matmul), and a chunk against a contiguous
        // view starting at row 3 (its batch stride is the group's row count).
        check_xwt(f, t, t, t, kChunk, kChunkOther, d.in, d.out, accumulate, seed++);
        check_xwt(f, t, t, std::nullopt, kChunk, kContiguous74, d.in, d.out, accumulate, seed++);
        check_xw(f, t, t, kChunk, kChunkOther, d.in, d.out, accumulate, seed++);
        check_xw(f, t, t, kContiguous74, kChunk, d.in, d.out, accumulate, seed++);
        check_dw(f, t, t, kChunk, kChunkOther, d.in, d.out, accumulate, 2, seed++);
        check_dw(f, t, t, kChunk, kContiguous74, d.in, d.out, accumulate, 2, seed++);
      }
    }
  }
}

TEST(CUDA_Gemm, GroupsThatDoNotLineUp) {
  MSTPLAN_REQUIRE_CUDA();
  GemmFixture f;
  ASSERT_TRUE(f.gemm.ok());
  std::uint64_t seed = 500;
  // 37 groups of 2 rows against 2 groups of 37: one matmul per row (the runs both share).
  for (const bool accumulate : {false, true}) {
    check_xwt(f, DType::bf16, DType::bf16, DType::bf16, kChunk, kPairs, 176, 64, accumulate, seed++);
    check_xwt(f, DType::fp32, DType::fp32, std::nullopt, kPairs, kChunk, 64, 176, accumulate, seed++);
    check_xw(f, DType::bf16, DType::bf16, kPairs, kChunk, 176, 64, accumulate, seed++);
    check_dw(f, DType::fp32, DType::fp32, kChunk, kPairs, 176, 64, accumulate, 74, seed++);
  }
}

TEST(CUDA_Gemm, Bf16InputsFp32Outputs) {
  MSTPLAN_REQUIRE_CUDA();
  GemmFixture f;
  ASSERT_TRUE(f.gemm.ok());
  std::uint64_t seed = 600;
  for (const bool accumulate : {false, true}) {
    // An fp32 bias takes the epilogue (D's dtype); a bf16 one is added by the kernel.
    check_xwt(f, DType::bf16, DType::fp32, DType::fp32, kChunk, kChunkOther, 176, 515, accumulate, seed++);
    check_xwt(f, DType::bf16, DType::fp32, DType::bf16, plain(37), plain(37), 515, 64, accumulate, seed++);
    check_xwt(f, DType::bf16, DType::fp32, std::nullopt, plain(129), plain(129), 16, 176, accumulate, seed++);
    // A bf16 y with an fp32 bias (another dtype than D's): the kernel, two roundings.
    check_xwt(f, DType::bf16, DType::bf16, DType::fp32, plain(37), plain(37), 64, 176, accumulate, seed++);
    check_xw(f, DType::bf16, DType::fp32, kChunk, kChunkOther, 176, 515, accumulate, seed++);
    check_dw(f, DType::bf16, DType::fp32, plain(129), plain(129), 515, 176, accumulate, 1, seed++);
    check_dw(f, DType::bf16, DType::fp32, kChunk, kChunkOther, 64, 16, accumulate, 2, seed++);
  }
}

TEST(CUDA_Gemm, DwOfNoRows) {
  MSTPLAN_REQUIRE_CUDA();
  GemmFixture f;
  ASSERT_TRUE(f.gemm.ok());
  for (const bool accumulate : {false, true}) {
    // A sum over no rows: zeros, or dw unchanged when accumulating.
    check_dw(f, DType::fp32, DType::fp32, plain(0), plain(0), 16, 64, accumulate, 1, 700);
  }
}

TEST(CUDA_Gemm, ReportsUnsupportedOperands) {
  MSTPLAN_REQUIRE_CUDA();
  GemmFixture f;
  ASSERT_TRUE(f.gemm.ok());
  HostTensor x(DType::bf16, 4, 16, 1), w(DType::fp32, 8, 16, 2), y(DType::fp32, 4, 8, 3);
  DeviceTensor dx(x), dw(w), dy(y);
  EXPECT_NE(f.gemm.xwt(dx.view(), dw.view(), nullptr, dy.view(), false, nullptr).error, "");  // inputs of two dtypes
  HostTensor w16(DType::bf16, 8, 16, 2);
  DeviceTensor dw16(w16);
  EXPECT_EQ(f.gemm.xwt(dx.view(), dw16.view(), nullptr, dy.view(), false, nullptr).error, "");  // each call resets the error
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

/// db = sum over rows of dy (accumulate: db +=).
void check_bias_grad(DType dy_t, DType db_t, const Layout& l, i64 cols, bool accumulate, std::uint64_t seed) {
  const std::string what = std::string("bias_grad ") + name(dy_t) + "->" + name(db_t) + " dy " + describe(l) +
                           " cols " + std::to_string(cols) + (accumulate ? " accumulate" : "");
  HostTensor dy(dy_t, buffer_rows(l), cols, seed), db(db_t, 1, cols, seed + 1);
  HostTensor want = db;
  const ref::View dyv = shaped(dy, l);
  ref::bias_grad(dyv, want.view(), accumulate);
  DeviceTensor d_dy(dy), d_db(db);
  EXPECT_LAUNCHED(cuda::bias_grad(d_dy.like(dyv), d_db.view(), accumulate, nullptr));
  const HostTensor got = d_db.download();
  ASSERT_EQ(cudaGetLastError(), cudaSuccess) << what;
  const std::vector<float> dys = values(dyv), dbs = values(db.view());
  std::vector<double> m(static_cast<std::size_t>(cols));
  for (i64 c = 0; c < cols; ++c) {
    double s = accumulate ? std::fabs(dbs[static_cast<std::size_t>(c)]) : 0.0;
    for (i64 r = 0; r < dyv.rows(); ++r) s += std::fabs(dys[static_cast<std::size_t>(r * cols + c)]);
    m[static_cast<std::size_t>(c)] = s;
  }
  expect_close(got, want, db.view(), m, 0, what);
}

TEST(CUDA_Gemm, BiasGradMatchesReference) {
  MSTPLAN_REQUIRE_CUDA();
  std::uint64_t seed = 800;
  for (const DType t : {DType::fp32, DType::bf16}) {
    for (const Layout& l : {plain(1), plain(37), plain(129), kChunk, plain(0)}) {
      for (const i64 cols : {i64{16}, i64{515}}) {
        for (const bool accumulate : {false, true}) {
          check_bias_grad(t, t, l, cols, accumulate, seed);
          check_bias_grad(t, DType::fp32, l, cols, accumulate, seed + 1);
          seed += 2;
        }
      }
    }
  }
}

}  // namespace
}  // namespace mstplan
