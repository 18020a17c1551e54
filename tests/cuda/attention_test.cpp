// CUDA flash attention (kernels/cuda/attention.cu) against its CPU reference twin
// (ref::attention_forward / ref::attention_backward) at odd sizes, GQA, soft-capping, sliding
// windows, bf16 and fp32, head_dim 16 to 256 (every tile configuration of the kernels).
//
// Tolerances (max_error: |cuda - ref| / max(1, |ref|), elementwise):
//  - fp32 outputs, lse, delta, dq_accum: 1e-4. Both sides compute in fp32 from the same inputs;
//    they differ only in rounding: FMA contraction, the online softmax's reassociated row sums
//    (per-thread partial sums and a shuffle tree against a sequential sum) and, for dq, the order
//    of the atomic additions over key blocks. With scale = 1/sqrt(head_dim) the scores are O(1)
//    and each difference is a few fp32 ulps of sums of at most 2 * 130 * 4 terms: around 1e-6.
//  - bf16 outputs: 1e-2. The fp32 values before the final rounding differ by ~1e-6 relative,
//    so a stored value can differ by at most one bf16 step where the fp32 value lies next to a
//    rounding boundary: at most 2^-7 = 0.0078 relative to max(1, |ref|).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "kernels/cuda/attention.cuh"
#include "kernels/reference/reference.h"
#include "tests/cuda/cuda_test_util.h"

namespace mstplan::test {
namespace {

using i64 = std::int64_t;

constexpr double kFp32Tolerance = 1e-4;
constexpr double kBf16Tolerance = 1e-2;

struct Case {
  i64 batch, seq, heads, kv_heads, head_dim;
  DType dtype;
  float softcap = 0.0f;
  i64 window = 0;
  i64 seq_pad = 0;  ///< > 0: every sequence sits seq_pad rows apart in a larger buffer (strided views)
};

std::string describe(const Case& c) {
  return "batch " + std::to_string(c.batch) + " seq " + std::to_string(c.seq) + " heads " + std::to_string(c.heads) +
         "/" + std::to_string(c.kv_heads) + " head_dim " + std::to_string(c.head_dim) + " " +
         (c.dtype == DType::bf16 ? "bf16" : "fp32") + " softcap " + std::to_string(c.softcap) + " window " +
         std::to_string(c.window) + " seq_pad " + std::to_string(c.seq_pad);
}

ref::AttentionShape ref_shape(const Case& c) {
  ref::AttentionShape s;
  s.batch = c.batch;
  s.seq = c.seq;
  s.heads = c.heads;
  s.kv_heads = c.kv_heads;
  s.head_dim = c.head_dim;
  s.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.head_dim)));
  s.softcap = c.softcap;
  s.window = c.window;
  return s;
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

/// The rows of a batch x seq activation inside its buffer (seq_pad > 0: sequences seq + seq_pad
/// rows apart, starting at row 1; the rows in between are left alone by both sides).
i64 buffer_rows(const Case& c) { return c.seq_pad > 0 ? c.batch * (c.seq + c.seq_pad) + 1 : c.batch * c.seq; }

ref::View token_view(const Case& c, HostTensor& t) {
  if (c.seq_pad == 0) return t.view();
  return ref::View{t.bytes.data(), t.dtype, t.cols, c.batch, c.seq, c.seq + c.seq_pad, 1};
}

double tolerance(DType dtype) { return dtype == DType::bf16 ? kBf16Tolerance : kFp32Tolerance; }

/// Forward, then backward from the reference's o and lse, both sides from the same inputs.
void check_attention(const Case& c) {
  SCOPED_TRACE(describe(c));
  const ref::AttentionShape s = ref_shape(c);
  const cuda::AttentionShape cs = cuda_shape(s);
  const i64 rows = buffer_rows(c), q_cols = c.heads * c.head_dim, kv_cols = c.kv_heads * c.head_dim;
  const i64 stats = c.batch * c.heads * c.seq;
  HostTensor q(c.dtype, rows, q_cols, 1), k(c.dtype, rows, kv_cols, 2), v(c.dtype, rows, kv_cols, 3);
  HostTensor o(c.dtype, rows, q_cols, 4), lse(DType::fp32, stats, 1, 5);  // outputs start as noise
  const DeviceTensor d_q(q), d_k(k), d_v(v), d_o(o), d_lse(lse);

  ref::attention_forward(s, token_view(c, q), token_view(c, k), token_view(c, v), token_view(c, o), lse.view());
  EXPECT_LAUNCHED(cuda::attention_forward(cs, d_q.like(token_view(c, q)), d_k.like(token_view(c, k)), d_v.like(token_view(c, v)),
                          d_o.like(token_view(c, o)), d_lse.view(), nullptr));
  EXPECT_LT(max_error(d_o.download(), o), tolerance(c.dtype)) << "o";
  EXPECT_LT(max_error(d_lse.download(), lse), kFp32Tolerance) << "lse";

  // Backward: o and lse from the reference on both sides.
  HostTensor dout(c.dtype, rows, q_cols, 6);
  HostTensor dq(c.dtype, rows, q_cols, 7), dk(c.dtype, rows, kv_cols, 8), dv(c.dtype, rows, kv_cols, 9);
  HostTensor dq_accum(DType::fp32, rows, q_cols, 10), delta(DType::fp32, stats, 1, 11);
  const DeviceTensor d_o_ref(o), d_lse_ref(lse), d_dout(dout), d_dq(dq), d_dk(dk), d_dv(dv), d_dq_accum(dq_accum),
      d_delta(delta);
  ref::attention_backward(s, token_view(c, q), token_view(c, k), token_view(c, v), token_view(c, o), lse.view(),
                          token_view(c, dout), token_view(c, dq), token_view(c, dk), token_view(c, dv),
                          token_view(c, dq_accum), delta.view());
  EXPECT_LAUNCHED(cuda::attention_backward(cs, d_q.like(token_view(c, q)), d_k.like(token_view(c, k)), d_v.like(token_view(c, v)),
                           d_o_ref.like(token_view(c, o)), d_lse_ref.view(), d_dout.like(token_view(c, dout)),
                           d_dq.like(token_view(c, dq)), d_dk.like(token_view(c, dk)), d_dv.like(token_view(c, dv)),
                           d_dq_accum.like(token_view(c, dq_accum)), d_delta.view(), nullptr));
  EXPECT_LT(max_error(d_dq.download(), dq), tolerance(c.dtype)) << "dq";
  EXPECT_LT(max_error(d_dk.download(), dk), tolerance(c.dtype)) << "dk";
  EXPECT_LT(max_error(d_dv.download(), dv), tolerance(c.dtype)) << "dv";
  EXPECT_LT(max_error(d_delta.download(), delta), kFp32Tolerance) << "delta";
  EXPECT_LT(max_error(d_dq_accum.download(), dq_accum), kFp32Tolerance) << "dq_accum (the fp32 dq)";
}

// head_dim 16 (padded to the 64 tiles), seq 1 and odd lengths within and across key blocks.
TEST(CUDA_Attention, SmallHeadsOddLengths) {
  MSTPLAN_REQUIRE_CUDA();
  for (const DType dt : {DType::fp32, DType::bf16}) {
    check_attention({1, 1, 2, 1, 16, dt});
    check_attention({2, 37, 4, 2, 16, dt});
    check_attention({2, 130, 4, 2, 16, dt});
  }
}

// head_dim 64, 128 (and 80, padded to 128) and 256: each tile configuration, with GQA 4/2 and 4/1.
TEST(CUDA_Attention, HeadDims) {
  MSTPLAN_REQUIRE_CUDA();
  for (const DType dt : {DType::fp32, DType::bf16}) {
    check_attention({2, 130, 4, 2, 64, dt});
    check_attention({1, 130, 4, 1, 128, dt});
    check_attention({1, 37, 2, 2, 80, dt});
    check_attention({2, 130, 4, 2, 256, dt});
    check_attention({1, 1, 2, 1, 256, dt});
  }
}

// Soft-capping (a cap of the order of the scores, so tanh is far from linear), sliding windows
// smaller than the sequence (and than a key block), the two together.
TEST(CUDA_Attention, SoftcapAndWindow) {
  MSTPLAN_REQUIRE_CUDA();
  for (const DType dt : {DType::fp32, DType::bf16}) {
    check_attention({2, 130, 4, 2, 64, dt, 1.5f});
    check_attention({2, 130, 4, 2, 64, dt, 0.0f, 17});
    check_attention({1, 130, 4, 2, 64, dt, 0.0f, 1});
    check_attention({2, 130, 4, 2, 16, dt, 2.0f, 70});
    check_attention({1, 130, 2, 1, 128, dt, 1.5f, 33});
    check_attention({1, 130, 4, 2, 256, dt, 1.5f, 40});
  }
}

// Views of sequences inside a larger buffer (seqs = batch, positions = seq, seq_stride > seq).
TEST(CUDA_Attention, StridedSequences) {
  MSTPLAN_REQUIRE_CUDA();
  check_attention({2, 37, 4, 2, 64, DType::bf16, 0.0f, 0, 3});
  check_attention({2, 130, 4, 2, 16, DType::fp32, 1.5f, 20, 5});
}

}  // namespace
}  // namespace mstplan::test
