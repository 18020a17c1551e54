// CUDA eager attention pieces (kernels/cuda/eager.cu) against their CPU reference twins
// (ref::eager_*), each piece fed the reference's result of the previous one, at odd sizes, GQA,
// sliding windows, bf16 and fp32.
//
// Tolerances (max_error: |cuda - ref| / max(1, |ref|), elementwise):
//  - fp32 outputs: 1e-4. The products accumulate in fp32 over the reduced index in the
//    reference's order; they differ by FMA contraction only (softmax and its backward: by the
//    reassociated row sums), a few ulps of sums of at most 2 * 130 O(1) terms: around 1e-6.
//  - bf16 outputs: 1e-2. A fp32 difference of ~1e-6 can move a value across a rounding boundary:
//    one bf16 step, at most 2^-7 = 0.0078 relative to max(1, |ref|).
// max_error ignores elements where both sides are -inf (their difference is NaN), and a finite
// value against -inf too, so the masks of the scores are compared apart (same_infinities).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "kernels/cuda/eager.cuh"
#include "kernels/reference/reference.h"
#include "tests/cuda/cuda_test_util.h"

namespace mstplan::test {
namespace {

using i64 = std::int64_t;

constexpr double kFp32Tolerance = 1e-4;
constexpr double kBf16Tolerance = 1e-2;

double tolerance(DType dtype) { return dtype == DType::bf16 ? kBf16Tolerance : kFp32Tolerance; }

/// Where either side is infinite, the other is the same infinity.
bool same_infinities(const HostTensor& a, const HostTensor& b) {
  if (a.rows != b.rows || a.cols != b.cols) return false;
  for (i64 r = 0; r < a.rows; ++r) {
    for (i64 c = 0; c < a.cols; ++c) {
      const float x = a.at(r, c), y = b.at(r, c);
      if ((std::isinf(x) || std::isinf(y)) && x != y) return false;
    }
  }
  return true;
}

struct Case {
  i64 batch, seq, heads, kv_heads, head_dim;
  DType dtype;
  i64 window = 0;
};

std::string describe(const Case& c) {
  return "batch " + std::to_string(c.batch) + " seq " + std::to_string(c.seq) + " heads " + std::to_string(c.heads) +
         "/" + std::to_string(c.kv_heads) + " head_dim " + std::to_string(c.head_dim) + " " +
         (c.dtype == DType::bf16 ? "bf16" : "fp32") + " window " + std::to_string(c.window);
}

cuda::AttentionShape cuda_shape(const ref::AttentionShape& s) {
  cuda::AttentionShape c;
  c.batch = s.batch;
  c.seq = s.seq;
  c.heads = s.heads;
  c.kv_heads = s.kv_heads;
  c.head_dim = s.head_dim;
  c.scale = s.scale;
  c.softcap = s.softcap;
  c.window = s.window;
  return c;
}

/// The whole eager chain, forward and backward, one piece at a time. dprobs is fp32 (as the eager
/// program keeps it), every other tensor of the case's dtype.
void check_eager(const Case& c) {
  SCOPED_TRACE(describe(c));
  ref::AttentionShape s;
  s.batch = c.batch;
  s.seq = c.seq;
  s.heads = c.heads;
  s.kv_heads = c.kv_heads;
  s.head_dim = c.head_dim;
  s.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.head_dim)));
  s.window = c.window;
  const cuda::AttentionShape cs = cuda_shape(s);
  const DType dt = c.dtype;
  const i64 tokens = c.batch * c.seq, q_cols = c.heads * c.head_dim, kv_cols = c.kv_heads * c.head_dim;
  const i64 score_rows = c.batch * c.heads * c.seq;
  const double tol = tolerance(dt);

  HostTensor q(dt, tokens, q_cols, 1), k(dt, tokens, kv_cols, 2), v(dt, tokens, kv_cols, 3), dout(dt, tokens, q_cols, 4);
  const DeviceTensor d_q(q), d_k(k), d_v(v), d_dout(dout);

  // scores = mask(scale q.k)
  HostTensor scores(dt, score_rows, c.seq, 5);
  const DeviceTensor d_scores(scores);
  ref::eager_scores(s, q.view(), k.view(), scores.view());
  EXPECT_LAUNCHED(cuda::eager_scores(cs, d_q.view(), d_k.view(), d_scores.view(), nullptr));
  const HostTensor got_scores = d_scores.download();
  EXPECT_LT(max_error(got_scores, scores), tol) << "scores";
  EXPECT_TRUE(same_infinities(got_scores, scores)) << "scores: the mask";

  // probs = softmax(scores)
  HostTensor probs(dt, score_rows, c.seq, 6);
  const DeviceTensor d_scores_ref(scores), d_probs(probs);
  ref::eager_softmax(scores.view(), probs.view());
  EXPECT_LAUNCHED(cuda::eager_softmax(d_scores_ref.view(), d_probs.view(), nullptr));
  EXPECT_LT(max_error(d_probs.download(), probs), tol) << "probs";

  // o = probs . v
  HostTensor o(dt, tokens, q_cols, 7);
  const DeviceTensor d_probs_ref(probs), d_o(o);
  ref::eager_pv(s, probs.view(), v.view(), o.view());
  EXPECT_LAUNCHED(cuda::eager_pv(cs, d_probs_ref.view(), d_v.view(), d_o.view(), nullptr));
  EXPECT_LT(max_error(d_o.download(), o), tol) << "o";

  // dprobs = dout . v^T (fp32)
  HostTensor dprobs(DType::fp32, score_rows, c.seq, 8);
  const DeviceTensor d_dprobs(dprobs);
  ref::eager_dprobs(s, dout.view(), v.view(), dprobs.view());
  EXPECT_LAUNCHED(cuda::eager_dprobs(cs, d_dout.view(), d_v.view(), d_dprobs.view(), nullptr));
  EXPECT_LT(max_error(d_dprobs.download(), dprobs), kFp32Tolerance) << "dprobs";

  // dv = probs^T . dout, summed over the group
  HostTensor dv(dt, tokens, kv_cols, 9);
  const DeviceTensor d_dv(dv);
  ref::eager_dv(s, probs.view(), dout.view(), dv.view());
  EXPECT_LAUNCHED(cuda::eager_dv(cs, d_probs_ref.view(), d_dout.view(), d_dv.view(), nullptr));
  EXPECT_LT(max_error(d_dv.download(), dv), tol) << "dv";

  // dscores = probs * (dprobs - rowsum(probs * dprobs))
  HostTensor dscores(dt, score_rows, c.seq, 10);
  const DeviceTensor d_dprobs_ref(dprobs), d_dscores(dscores);
  ref::eager_softmax_backward(probs.view(), dprobs.view(), dscores.view());
  EXPECT_LAUNCHED(cuda::eager_softmax_backward(d_probs_ref.view(), d_dprobs_ref.view(), d_dscores.view(), nullptr));
  EXPECT_LT(max_error(d_dscores.download(), dscores), tol) << "dscores";

  // dq = dscores . k * scale, dk = dscores^T . q * scale (summed over the group)
  HostTensor dq(dt, tokens, q_cols, 11), dk(dt, tokens, kv_cols, 12);
  const DeviceTensor d_dscores_ref(dscores), d_dq(dq), d_dk(dk);
  ref::eager_dq(s, dscores.view(), k.view(), dq.view());
  EXPECT_LAUNCHED(cuda::eager_dq(cs, d_dscores_ref.view(), d_k.view(), d_dq.view(), nullptr));
  EXPECT_LT(max_error(d_dq.download(), dq), tol) << "dq";
  ref::eager_dk(s, dscores.view(), q.view(), dk.view());
  EXPECT_LAUNCHED(cuda::eager_dk(cs, d_dscores_ref.view(), d_q.view(), d_dk.view(), nullptr));
  EXPECT_LT(max_error(d_dk.download(), dk), tol) << "dk";
}

TEST(CUDA_Eager, OddLengthsAndGqa) {
  MSTPLAN_REQUIRE_CUDA();
  for (const DType dt : {DType::fp32, DType::bf16}) {
    check_eager({1, 1, 2, 1, 16, dt});
    check_eager({2, 37, 4, 2, 16, dt});
    check_eager({2, 130, 4, 2, 64, dt});
    check_eager({1, 130, 4, 1, 256, dt});
    check_eager({1, 67, 3, 3, 24, dt});
  }
}

TEST(CUDA_Eager, SlidingWindow) {
  MSTPLAN_REQUIRE_CUDA();
  for (const DType dt : {DType::fp32, DType::bf16}) {
    check_eager({2, 130, 4, 2, 16, dt, 17});
    check_eager({1, 130, 2, 1, 64, dt, 1});
    check_eager({1, 200, 2, 2, 16, dt, 70});  // whole 64 x 64 tiles left of the window
  }
}

// A row that is all -inf gives probabilities 0 (as the reference does), and softmax's backward
// works on views of rows inside a larger buffer.
TEST(CUDA_Eager, SoftmaxMaskedRowsAndStridedViews) {
  MSTPLAN_REQUIRE_CUDA();
  for (const DType dt : {DType::fp32, DType::bf16}) {
    SCOPED_TRACE(dt == DType::bf16 ? "bf16" : "fp32");
    const i64 rows = 5, cols = 300;
    HostTensor scores(dt, rows, cols, 1, 3.0f);
    for (i64 c = 0; c < cols; ++c) scores.set(2, c, -std::numeric_limits<float>::infinity());
    for (i64 c = 100; c < cols; ++c) scores.set(3, c, -std::numeric_limits<float>::infinity());
    HostTensor probs(dt, rows, cols, 2);
    const DeviceTensor d_scores(scores), d_probs(probs);
    ref::eager_softmax(scores.view(), probs.view());
    EXPECT_LAUNCHED(cuda::eager_softmax(d_scores.view(), d_probs.view(), nullptr));
    const HostTensor got = d_probs.download();
    EXPECT_LT(max_error(got, probs), tolerance(dt));
    for (i64 c = 0; c < cols; ++c) EXPECT_EQ(got.at(2, c), 0.0f);

    // Rows 1, 2 and 4, 5 of a 7-row buffer: two groups of 2 rows, 3 rows apart, from row 1.
    HostTensor p(dt, 7, cols, 3), dp(DType::fp32, 7, cols, 4), ds(dt, 7, cols, 5);
    const DeviceTensor d_p(p), d_dp(dp), d_ds(ds);
    auto strided = [](HostTensor& t) { return ref::View{t.bytes.data(), t.dtype, t.cols, 2, 2, 3, 1}; };
    ref::eager_softmax_backward(strided(p), strided(dp), strided(ds));
    EXPECT_LAUNCHED(cuda::eager_softmax_backward(d_p.like(strided(p)), d_dp.like(strided(dp)), d_ds.like(strided(ds)), nullptr));
    EXPECT_LT(max_error(d_ds.download(), ds), tolerance(dt));
  }
}

}  // namespace
}  // namespace mstplan::test
