// CUDA AdamW and SGD against their CPU reference twins: bf16 weights and state, an fp32 master with
// fp32 or bf16 state, all fp32; weight decay on and off, steps 1 and 10 (bias corrections), odd
// sizes; the state in a flat 1 x n buffer while the gradient is rows x cols, and strided (chunk)
// views, since element k is the k-th in row-major order of each view. Whole buffers are compared.
//
// Tolerance: none. The bias corrections are computed on the host by the same expression, and each
// element goes through the same IEEE-rounded fp32 operations in the same order (products, sums,
// a quotient and a square root with no FMA contraction, no fast math, denormals kept on both
// sides), then the same round-to-nearest-even stores: the results are bit-exact.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kernels/cuda/optimizer.cuh"
#include "tests/cuda/cuda_test_util.h"

namespace mstplan {
namespace {

using i64 = std::int64_t;
using test::DeviceTensor;
using test::HostTensor;
using test::max_error;

using test::buffer_rows;
using test::Layout;
using test::shaped;

/// A parameter's shape: the gradient / weight layout (rows x cols) and whether the state is a
/// flat 1 x n buffer.
struct Shape {
  Layout layout;
  i64 cols;
  bool flat_state;
};

std::vector<Shape> shapes() {
  return {
      {{1, 1, 1, 0}, 1, false},      {{1, 37, 37, 0}, 129, false}, {{1, 37, 37, 0}, 129, true},
      {{1, 1, 1, 0}, 1000, true},    {{2, 13, 40, 7}, 37, false},  {{2, 13, 40, 7}, 37, true},
  };
}

struct Dtypes {
  const char* name;
  DType g, w, state;
  bool master;  // fp32 master weights
};

const std::vector<Dtypes>& dtype_sets() {
  static const std::vector<Dtypes> all = {
      {"bf16", DType::bf16, DType::bf16, DType::bf16, false},
      {"bf16 + fp32 master and state", DType::bf16, DType::bf16, DType::fp32, true},
      {"bf16 + fp32 master, bf16 state", DType::bf16, DType::bf16, DType::bf16, true},
      {"fp32 grad, bf16 weights + master", DType::fp32, DType::bf16, DType::fp32, true},
      {"fp32", DType::fp32, DType::fp32, DType::fp32, false},
  };
  return all;
}

std::string describe(const Dtypes& d, const Shape& s) {
  return std::string(d.name) + " seqs " + std::to_string(s.layout.seqs) + " positions " +
         std::to_string(s.layout.positions) + " first " + std::to_string(s.layout.first) + " cols " +
         std::to_string(s.cols) + (s.flat_state ? " flat state" : "");
}

TEST(CUDA_Optimizer, AdamWMatchesReferenceExactly) {
  MSTPLAN_REQUIRE_CUDA();
  std::uint64_t seed = 1;
  for (const Dtypes& d : dtype_sets()) {
    for (const Shape& s : shapes()) {
      for (const float wd : {0.0f, 0.1f}) {
        for (const i64 step : {i64{1}, i64{10}}) {
          const i64 rows = buffer_rows(s.layout), n = s.layout.seqs * s.layout.positions * s.cols;
          HostTensor g(d.g, rows, s.cols, seed++, 0.01f), w(d.w, rows, s.cols, seed++, 0.05f);
          HostTensor master(DType::fp32, rows, s.cols, seed++, 0.05f);
          // State: v must be >= 0 (a running mean of squares); m any sign.
          HostTensor m(d.state, s.flat_state ? 1 : rows, s.flat_state ? n : s.cols, seed++, 1e-3f);
          HostTensor v(d.state, s.flat_state ? 1 : rows, s.flat_state ? n : s.cols, seed++, 1e-3f);
          for (i64 r = 0; r < v.rows; ++r) {
            for (i64 c = 0; c < v.cols; ++c) v.set(r, c, v.at(r, c) * v.at(r, c));
          }
          DeviceTensor dg(g), dw(w), dmaster(master), dm(m), dv(v);
          const ref::View gv = shaped(g, s.layout), wv = shaped(w, s.layout), masterv = shaped(master, s.layout);
          const ref::View mv = s.flat_state ? m.view() : shaped(m, s.layout);
          const ref::View vv = s.flat_state ? v.view() : shaped(v, s.layout);

          ref::AdamW o;
          o.lr = 1e-3f;
          o.beta1 = 0.9f;
          o.beta2 = 0.95f;
          o.eps = 1e-8f;
          o.weight_decay = wd;
          o.step = step;
          std::optional<ref::View> rmaster;
          if (d.master) rmaster = masterv;
          ref::adamw(o, gv, wv, mv, vv, rmaster);

          cuda::AdamW co;
          co.lr = o.lr;
          co.beta1 = o.beta1;
          co.beta2 = o.beta2;
          co.eps = o.eps;
          co.weight_decay = o.weight_decay;
          co.step = o.step;
          const cuda::View cmaster = dmaster.like(masterv);
          EXPECT_LAUNCHED(cuda::adamw(co, dg.like(gv), dw.like(wv), dm.like(mv), dv.like(vv), d.master ? &cmaster : nullptr, nullptr));
          ASSERT_EQ(cudaGetLastError(), cudaSuccess);

          const std::string what = describe(d, s) + " wd " + std::to_string(wd) + " step " + std::to_string(step);
          EXPECT_EQ(max_error(dw.download(), w), 0.0) << "w " << what;
          EXPECT_EQ(max_error(dm.download(), m), 0.0) << "m " << what;
          EXPECT_EQ(max_error(dv.download(), v), 0.0) << "v " << what;
          EXPECT_EQ(max_error(dmaster.download(), master), 0.0) << "master " << what;
          EXPECT_EQ(max_error(dg.download(), g), 0.0) << "g (read only) " << what;
        }
      }
    }
  }
}

TEST(CUDA_Optimizer, SgdMatchesReferenceExactly) {
  MSTPLAN_REQUIRE_CUDA();
  std::uint64_t seed = 1000;
  for (const Dtypes& d : dtype_sets()) {
    for (const Shape& s : shapes()) {
      for (const float wd : {0.0f, 0.1f}) {
        const i64 rows = buffer_rows(s.layout);
        HostTensor g(d.g, rows, s.cols, seed++, 0.01f), w(d.w, rows, s.cols, seed++, 0.05f);
        HostTensor master(DType::fp32, rows, s.cols, seed++, 0.05f);
        DeviceTensor dg(g), dw(w), dmaster(master);
        const ref::View gv = shaped(g, s.layout), wv = shaped(w, s.layout), masterv = shaped(master, s.layout);
        std::optional<ref::View> rmaster;
        if (d.master) rmaster = masterv;
        ref::sgd(0.01f, wd, gv, wv, rmaster);
        const cuda::View cmaster = dmaster.like(masterv);
        EXPECT_LAUNCHED(cuda::sgd(0.01f, wd, dg.like(gv), dw.like(wv), d.master ? &cmaster : nullptr, nullptr));
        ASSERT_EQ(cudaGetLastError(), cudaSuccess);
        const std::string what = describe(d, s) + " wd " + std::to_string(wd);
        EXPECT_EQ(max_error(dw.download(), w), 0.0) << "w " << what;
        EXPECT_EQ(max_error(dmaster.download(), master), 0.0) << "master " << what;
      }
    }
  }
}

}  // namespace
}  // namespace mstplan
