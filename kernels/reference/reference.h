#pragma once
// CPU reference kernels: plain loops written for clarity, the oracle every other backend is
// compared with. Storage is bf16 (round to nearest even on store) or fp32; arithmetic is fp32
// (sums of products accumulate in fp32, then round once on store).
//
// Every kernel reads and writes `View`s: matrices whose rows are (sequence, position) pairs, so a
// mini-sequence chunk of a B x S x cols activation is a view of B groups of P rows, S rows apart.
// None of them allocates memory that grows with the problem: scratch is at most O(head_dim) or
// O(cols) of locals per row, so the executor's byte count is the whole story.
//
// Weights are stored as Hugging Face does: a linear layer's weight is (out x in), y = x W^T + b.
//
//   View x = contiguous(ptr, DType::bf16, rows, d);
//   ref::matmul_xwt(x, w, std::nullopt, y, /*accumulate=*/false);
#include <cstdint>
#include <optional>

#include "kernels/boundary.h"
#include "planner/dtype.h"

namespace mstplan::ref {

/// A strided set of rows: `seqs` groups of `positions` rows; group g starts at row
/// g * seq_stride + first of the underlying buffer; each row has `cols` contiguous elements.
struct View {
  void* data = nullptr;
  DType dtype = DType::fp32;
  std::int64_t cols = 1;
  std::int64_t seqs = 1;
  std::int64_t positions = 0;
  std::int64_t seq_stride = 0;  ///< rows between the first rows of consecutive groups
  std::int64_t first = 0;       ///< buffer row of group 0's first row

  [[nodiscard]] std::int64_t rows() const { return seqs * positions; }
  /// The buffer row holding view row r.
  [[nodiscard]] std::int64_t buffer_row(std::int64_t r) const {
    return (r / positions) * seq_stride + first + r % positions;
  }
  /// The position in its sequence of view row r, when groups are sequences of the buffer.
  [[nodiscard]] std::int64_t position(std::int64_t r) const { return first + r % positions; }
};

/// splitmix64's increment and its output at counter `state` (already incremented), and that
/// output as a double uniform in (0, 1): the counter-based stream of initialisation.
inline constexpr std::uint64_t kGolden = 0x9E3779B97F4A7C15ull;
[[nodiscard]] constexpr std::uint64_t splitmix_at(std::uint64_t state) {
  std::uint64_t z = state;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
[[nodiscard]] constexpr double uniform01(std::uint64_t state) {
  return (static_cast<double>(splitmix_at(state) >> 11) + 0.5) * 0x1.0p-53;
}

/// x = mean + std * N(0, 1) per element, element e (row-major over the view's rows) from the
/// counter-based stream at `state` (Box-Muller on uniform01 at counters 2e+1 and 2e+2, in double):
/// initialisation, the same values on every backend (kernels/cuda/init.cu is its twin).
void fill_normal(const View& x, std::uint64_t state, double mean, double std);

/// A plain rows x cols matrix.
[[nodiscard]] View contiguous(void* data, DType dtype, std::int64_t rows, std::int64_t cols);

/// bf16 <-> fp32 (round to nearest even; NaN stays NaN).
[[nodiscard]] std::uint16_t to_bf16(float x);
[[nodiscard]] float from_bf16(std::uint16_t x);
/// Element (r, c) of a view as fp32 (bf16, fp32; int32 and int64 converted) and storing with
/// rounding to the view's dtype.
[[nodiscard]] float load(const View& v, std::int64_t r, std::int64_t c);
void store(const View& v, std::int64_t r, std::int64_t c, float value);
/// Integer element (token ids, labels: int32 or int64 views).
[[nodiscard]] std::int64_t load_index(const View& v, std::int64_t r);

// ---- GEMMs (fp32 accumulation; `accumulate` adds to the output instead of overwriting) ------

/// y (rows x out) = x (rows x in) . w^T (w: out x in) [+ bias (1 x out)].
void matmul_xwt(const View& x, const View& w, const std::optional<View>& bias, const View& y, bool accumulate);
/// dx (rows x in) = dy (rows x out) . w (out x in).
void matmul_xw(const View& dy, const View& w, const View& dx, bool accumulate);
/// dw (out x in) = dy^T (out x rows) . x (rows x in): a weight gradient summed over the rows.
void matmul_dw(const View& dy, const View& x, const View& dw, bool accumulate);
/// db (1 x out) = sum over rows of dy.
void bias_grad(const View& dy, const View& db, bool accumulate);

// ---- Norms --------------------------------------------------------------------------------

/// RMSNorm: rstd = 1/sqrt(mean(x^2) + eps) per row (fp32 view, cols 1);
/// y = x * rstd * (w + offset), offset 0 (Llama) or 1 (Gemma's `1 + weight`).
void rmsnorm_forward(const View& x, const View& w, float eps, float offset, const View& y, const View& rstd);
/// y again from the kept x and rstd (selective recompute).
void rmsnorm_apply(const View& x, const View& rstd, const View& w, float offset, const View& y);
/// Backward of rmsnorm_forward. dx = J^T dy [+ residual] (overwrites dx); dw (when given)
/// gets sum over rows of dy * x * rstd, accumulated or overwritten.
void rmsnorm_backward(const View& dy, const View& x, const View& rstd, const View& w, float offset,
                      const std::optional<View>& residual, const View& dx, const std::optional<View>& dw,
                      bool dw_accumulate);

// ---- Rotary embedding (Hugging Face's rotate_half convention) ----------------------------

/// The rotary embedding's parameters (kernels/boundary.h): head_dim / 2 frequencies with the
/// model's scaling (none, linear, llama3; dynamic equals none up to the original length).
using kernels::Rope;
using kernels::RopeScaling;
/// Rotates every head of x (rows x heads*head_dim) in place at the view's positions:
/// x' = x cos + rotate_half(x) sin, rotate_half(x) = (-x2, x1) for the two halves of a head;
/// positions count from rope.first_position.
/// `inverse` applies the transpose (the backward: dx = R^T dx').
void rope(const View& x, std::int64_t head_dim, const Rope& rope, std::int64_t seq_len, bool inverse);

// ---- Attention (causal, GQA; q: T x heads*hd, k, v: T x kv_heads*hd, T = batch x seq) -------

using kernels::AttentionShape;
/// Blockwise with an online softmax (FlashAttention-2's algorithm): o (T x heads*hd) and
/// lse (fp32, batch x heads x seq, row-major) of the scaled, capped, masked scores. With
/// s.queries (context parallelism) q, o, lse, dq and delta hold those positions only
/// (T = batch x queries for them), and dk, dv those queries' share of the gradients.
void attention_forward(const AttentionShape& s, const View& q, const View& k, const View& v, const View& o,
                       const View& lse);
/// Its backward from q, k, v, o, lse and dout: dq, dk, dv (overwritten). `dq_accum` (fp32,
/// T x heads*hd) and `delta` (fp32, batch x heads x seq) are the workspaces the program gives.
void attention_backward(const AttentionShape& s, const View& q, const View& k, const View& v, const View& o,
                        const View& lse, const View& dout, const View& dq, const View& dk, const View& dv,
                        const View& dq_accum, const View& delta);

/// Eager attention, one matrix product at a time; scores and probs are (batch*heads*seq) x seq.
/// scores = mask(cap(q.k * scale)) with -inf where masked. No soft-capping (its backward would
/// need the capped scores, which the eager program does not keep).
void eager_scores(const AttentionShape& s, const View& q, const View& k, const View& scores);
/// probs = softmax over each row (0 where masked).
void eager_softmax(const View& scores, const View& probs);
/// o = probs . v (per head, GQA).
void eager_pv(const AttentionShape& s, const View& probs, const View& v, const View& o);
/// dprobs = dout . v^T (fp32).
void eager_dprobs(const AttentionShape& s, const View& dout, const View& v, const View& dprobs);
/// dv = probs^T . dout, summed over the query heads sharing each kv head.
void eager_dv(const AttentionShape& s, const View& probs, const View& dout, const View& dv);
/// dscores = probs * (dprobs - rowsum(probs * dprobs)).
void eager_softmax_backward(const View& probs, const View& dprobs, const View& dscores);
/// dq = dscores . k * scale; dk = dscores^T . q * scale (summed over the group).
void eager_dq(const AttentionShape& s, const View& dscores, const View& k, const View& dq);
void eager_dk(const AttentionShape& s, const View& dscores, const View& q, const View& dk);

// ---- MLP activation -----------------------------------------------------------------------

using kernels::GatedActivation;  ///< silu(g) * u; gelu_tanh(g) * u
void gated_forward(GatedActivation a, const View& g, const View& u, const View& out);
void gated_backward(GatedActivation a, const View& dout, const View& g, const View& u, const View& dg,
                    const View& du);

// ---- Elementwise --------------------------------------------------------------------------

/// out = a + b.
void add(const View& a, const View& b, const View& out);
/// x = cap * tanh(x / cap), in place.
void softcap(const View& x, float cap);
using kernels::QuantFormat;
using kernels::Quantized;
/// The bytes of a quantized weight (kernels::Quantized) from its values `w` (rows x cols, row
/// major): nearest code per element, block scales as the layout says; host-side, for the runtime's
/// initialisation. `out` holds quantized_bytes(q) bytes.
void quantize(const Quantized& q, const float* w, std::uint8_t* out);
/// The weight back from its bytes (`bytes`: a contiguous int8 view of quantized_bytes(q)
/// elements) into `out` (rows x cols), rounded to out's dtype.
void dequantize(const Quantized& q, const View& bytes, const View& out);
/// out = s x, rounded to out's dtype (out may be x): a LoRA branch's alpha / r.
void scale(const View& x, float s, const View& out);
/// dst = src (any two views of equal shape; converts dtype).
void copy(const View& src, const View& dst);
/// Every element 0.
void zero(const View& x);

// ---- Embedding ----------------------------------------------------------------------------

/// out[r] = table[tokens[r]] * scale (Gemma scales by sqrt(d), rounded to the storage dtype).
void embedding_forward(const View& tokens, const View& table, float scale, const View& out);
/// dtable[tokens[r]] += dout[r] * scale (always accumulates).
void embedding_backward(const View& dout, const View& tokens, float scale, const View& dtable);

// ---- LM head loss -------------------------------------------------------------------------

/// Cross-entropy of logits (rows x V, fp32, already soft-capped when `softcap` > 0) against
/// `targets` (int32/int64, one per row; -100 ignored). Adds sum(loss of non-ignored rows) *
/// `scale` to *loss (scale is 1 / the step's count of non-ignored targets).
/// lse (fp32, rows x 1) when given receives each row's log-sum-exp; dlogits when given
/// receives (softmax - onehot) * scale * d(cap)/dx (0 for ignored rows).
void cross_entropy_forward(const View& logits, const View& targets, float scale, float softcap, float* loss,
                           const std::optional<View>& lse, const std::optional<View>& dlogits);
/// dlogits from logits and the kept lse.
void cross_entropy_backward(const View& logits, const View& lse, const View& targets, float scale, float softcap,
                            const View& dlogits);

// ---- Optimizers (one parameter tensor; element-wise) -------------------------------------

using kernels::AdamW;
/// PyTorch's AdamW: p -= lr * wd * p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
/// p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps). With a master copy (fp32) the
/// update is applied to it and w receives it rounded.
void adamw(const AdamW& o, const View& g, const View& w, const View& m, const View& v,
           const std::optional<View>& master);
/// p -= lr * (g + wd * p), on the master when given.
void sgd(float lr, float weight_decay, const View& g, const View& w, const std::optional<View>& master);

}  // namespace mstplan::ref
