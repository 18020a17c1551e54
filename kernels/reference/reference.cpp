// CPU reference kernels: see reference.h. Plain loops, fp32 arithmetic, one rounding on store.
// Scratch is a handful of fp32 vectors of head_dim or cols elements; nothing grows with rows or seq.
#include "kernels/reference/reference.h"

#include "kernels/rope_frequencies.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <numbers>
#include <vector>

#include "planner/enum_names.h"
#include "planner/error.h"

namespace mstplan::ref {
namespace {

using i64 = std::int64_t;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr i64 kKeyBlock = 64;  ///< keys per block of the online softmax

/// Index of element (r, c) of a view in its buffer, in elements.
i64 element_index(const View& v, i64 r, i64 c) { return v.buffer_row(r) * v.cols + c; }

/// Row r of a view as fp32 into `out` (cols values): the row's address is computed once.
void load_row(const View& v, i64 r, float* out) {
  const i64 base = v.buffer_row(r) * v.cols;
  switch (v.dtype) {
    case DType::bf16: {
      const auto* p = static_cast<const std::uint16_t*>(v.data) + base;
      for (i64 c = 0; c < v.cols; ++c) out[c] = from_bf16(p[c]);
      return;
    }
    case DType::fp32: {
      const auto* p = static_cast<const float*>(v.data) + base;
      std::copy(p, p + v.cols, out);
      return;
    }
    default:
      for (i64 c = 0; c < v.cols; ++c) out[c] = load(v, r, c);
  }
}

/// Element k (row-major over the view's rows and cols) of a view: for kernels that only need
/// equal element counts (the optimizers).
float load_flat(const View& v, i64 k) { return load(v, k / v.cols, k % v.cols); }
void store_flat(const View& v, i64 k, float value) { store(v, k / v.cols, k % v.cols, value); }

/// `value` as the dtype stores it (bf16: rounded; fp32: unchanged).
float round_to(DType dtype, float value) { return dtype == DType::bf16 ? from_bf16(to_bf16(value)) : value; }

void check_same_shape(const View& a, const View& b, const char* kernel, const char* a_name, const char* b_name) {
  MSTPLAN_CHECK(a.rows() == b.rows() && a.cols == b.cols, "{}: {} is {}x{} but {} is {}x{}", kernel, a_name,
                a.rows(), a.cols, b_name, b.rows(), b.cols);
}

void check_rows(const View& v, i64 rows, const char* kernel, const char* name) {
  MSTPLAN_CHECK(v.rows() == rows, "{}: {} has {} rows, expected {}", kernel, name, v.rows(), rows);
}

void check_cols(const View& v, i64 cols, const char* kernel, const char* name) {
  MSTPLAN_CHECK(v.cols == cols, "{}: {} has {} cols, expected {}", kernel, name, v.cols, cols);
}

void check_fp32(const View& v, const char* kernel, const char* name) {
  MSTPLAN_CHECK(v.dtype == DType::fp32, "{}: {} must be fp32, got {}", kernel, name, to_string(v.dtype));
}

// ---- Attention helpers ----------------------------------------------------------------------

void check_attention_shape(const AttentionShape& s, const char* kernel) {
  MSTPLAN_CHECK(s.batch > 0 && s.seq > 0 && s.heads > 0 && s.kv_heads > 0 && s.head_dim > 0,
                "{}: bad shape batch {} seq {} heads {} kv_heads {} head_dim {}", kernel, s.batch, s.seq, s.heads,
                s.kv_heads, s.head_dim);
  MSTPLAN_CHECK(s.heads % s.kv_heads == 0, "{}: heads {} not a multiple of kv_heads {}", kernel, s.heads,
                s.kv_heads);
  MSTPLAN_CHECK(s.window >= 0, "{}: negative window {}", kernel, s.window);
  MSTPLAN_CHECK(s.softcap >= 0.0f, "{}: negative softcap {}", kernel, s.softcap);
  MSTPLAN_CHECK(s.queries >= 0 && s.query_first >= 0 && s.query_first + s.query_rows() <= s.seq,
                "{}: queries {} from {} of {} positions", kernel, s.queries, s.query_first, s.seq);
}

void check_q_like(const AttentionShape& s, const View& x, const char* kernel, const char* name) {
  check_rows(x, s.batch * s.query_rows(), kernel, name);
  check_cols(x, s.heads * s.head_dim, kernel, name);
}

void check_kv_like(const AttentionShape& s, const View& x, const char* kernel, const char* name) {
  check_rows(x, s.batch * s.seq, kernel, name);
  check_cols(x, s.kv_heads * s.head_dim, kernel, name);
}

/// lse, delta: fp32, one value per (batch, head, query).
void check_per_query(const AttentionShape& s, const View& x, const char* kernel, const char* name) {
  check_rows(x, s.batch * s.heads * s.query_rows(), kernel, name);
  check_cols(x, 1, kernel, name);
  check_fp32(x, kernel, name);
}

/// scores, probs, dprobs, dscores: (batch*heads*seq) x seq.
void check_scores_like(const AttentionShape& s, const View& x, const char* kernel, const char* name) {
  MSTPLAN_CHECK(s.query_rows() == s.seq && s.query_first == 0, "{}: eager attention runs every query", kernel);
  check_rows(x, s.batch * s.heads * s.seq, kernel, name);
  check_cols(x, s.seq, kernel, name);
}

i64 kv_head_of(const AttentionShape& s, i64 h) { return h / (s.heads / s.kv_heads); }

/// First key query i sees (keys first_key(i) ..= i).
i64 first_key(const AttentionShape& s, i64 i) { return s.window > 0 ? std::max<i64>(0, i - s.window + 1) : 0; }
/// Last query that sees key j (queries j ..= last_query(j)).
i64 last_query(const AttentionShape& s, i64 j) {
  return s.window > 0 ? std::min<i64>(s.seq - 1, j + s.window - 1) : s.seq - 1;
}
bool visible(const AttentionShape& s, i64 i, i64 j) { return j <= i && j >= first_key(s, i); }

/// Row `row` of x, columns [col0, col0 + out.size()), into out.
void load_row(const View& x, i64 row, i64 col0, std::vector<float>& out) {
  for (std::size_t e = 0; e < out.size(); ++e) out[e] = load(x, row, col0 + static_cast<i64>(e));
}

/// scale * q.k, then soft-capped when s.softcap > 0; `tanh_out` receives tanh(raw / cap) (0 without cap).
float attention_score(const AttentionShape& s, const std::vector<float>& q, const View& k, i64 krow, i64 kcol0,
                      float* tanh_out = nullptr) {
  float dot = 0.0f;
  for (std::size_t e = 0; e < q.size(); ++e) dot += q[e] * load(k, krow, kcol0 + static_cast<i64>(e));
  float score = dot * s.scale;
  float t = 0.0f;
  if (s.softcap > 0.0f) {
    t = std::tanh(score / s.softcap);
    score = s.softcap * t;
  }
  if (tanh_out != nullptr) *tanh_out = t;
  return score;
}

// ---- Activations ----------------------------------------------------------------------------

constexpr float kGeluK = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluC = 0.044715f;

/// act(g) and d act / dg.
void activation(GatedActivation a, float g, float& value, float& derivative) {
  if (a == GatedActivation::swiglu) {
    const float sig = 1.0f / (1.0f + std::exp(-g));
    value = g * sig;
    derivative = sig * (1.0f + g * (1.0f - sig));
  } else {
    const float t = std::tanh(kGeluK * (g + kGeluC * g * g * g));
    value = 0.5f * g * (1.0f + t);
    derivative = 0.5f * (1.0f + t) + 0.5f * g * (1.0f - t * t) * kGeluK * (1.0f + 3.0f * kGeluC * g * g);
  }
}

// ---- Cross-entropy helpers ------------------------------------------------------------------

/// log(sum(exp(logits row))).
float row_logsumexp(const View& logits, i64 r) {
  float mx = kNegInf;
  for (i64 c = 0; c < logits.cols; ++c) mx = std::max(mx, load(logits, r, c));
  if (mx == kNegInf) return kNegInf;
  float sum = 0.0f;
  for (i64 c = 0; c < logits.cols; ++c) sum += std::exp(load(logits, r, c) - mx);
  return mx + std::log(sum);
}

/// Target of row r, or -1 when ignored (any negative target, -100 by convention).
i64 row_target(const View& targets, i64 r, i64 vocab, const char* kernel) {
  const i64 t = load_index(targets, r);
  if (t < 0) return -1;
  MSTPLAN_CHECK(t < vocab, "{}: target {} of row {} outside the vocabulary of {}", kernel, t, r, vocab);
  return t;
}

/// dlogits row r = (softmax - onehot) * scale * dcap (0 for an ignored row).
void write_dlogits_row(const View& logits, i64 r, float lse, i64 target, float scale, float softcap,
                       const View& dlogits) {
  for (i64 c = 0; c < logits.cols; ++c) {
    if (target < 0) {
      store(dlogits, r, c, 0.0f);
      continue;
    }
    const float y = load(logits, r, c);
    float d = std::exp(y - lse) - (c == target ? 1.0f : 0.0f);
    d *= scale;
    if (softcap > 0.0f) {
      const float t = y / softcap;
      d *= 1.0f - t * t;
    }
    store(dlogits, r, c, d);
  }
}

}  // namespace

// ---- Views and element access ---------------------------------------------------------------

void fill_normal(const View& x, std::uint64_t state, double mean, double std) {
  const std::int64_t n = x.rows() * x.cols;
  for (std::int64_t e = 0; e < n; ++e) {
    const double u = uniform01(state + (2 * static_cast<std::uint64_t>(e) + 1) * kGolden);
    const double v = uniform01(state + (2 * static_cast<std::uint64_t>(e) + 2) * kGolden);
    const double normal = std::sqrt(-2.0 * std::log(u)) * std::cos(6.283185307179586 * v);
    store(x, e / x.cols, e % x.cols, static_cast<float>(mean + std * normal));
  }
}

View contiguous(void* data, DType dtype, std::int64_t rows, std::int64_t cols) {
  MSTPLAN_CHECK(rows >= 0 && cols > 0, "contiguous: bad shape {}x{}", rows, cols);
  View v;
  v.data = data;
  v.dtype = dtype;
  v.cols = cols;
  v.seqs = 1;
  v.positions = rows;
  v.seq_stride = rows;
  v.first = 0;
  return v;
}

std::uint16_t to_bf16(float x) {
  const auto bits = std::bit_cast<std::uint32_t>(x);
  if ((bits & 0x7F800000u) == 0x7F800000u && (bits & 0x007FFFFFu) != 0) {
    // NaN: keep the sign and the top of the payload, force a quiet bit so it cannot become inf.
    return static_cast<std::uint16_t>((bits >> 16) | 0x0040u);
  }
  const std::uint32_t rounding_bias = 0x7FFFu + ((bits >> 16) & 1u);  // ties to even
  return static_cast<std::uint16_t>((bits + rounding_bias) >> 16);
}

float from_bf16(std::uint16_t x) { return std::bit_cast<float>(static_cast<std::uint32_t>(x) << 16); }

float load(const View& v, std::int64_t r, std::int64_t c) {
  const i64 i = element_index(v, r, c);
  switch (v.dtype) {
    case DType::bf16: return from_bf16(static_cast<const std::uint16_t*>(v.data)[i]);
    case DType::fp32: return static_cast<const float*>(v.data)[i];
    case DType::int32: return static_cast<float>(static_cast<const std::int32_t*>(v.data)[i]);
    case DType::int64: return static_cast<float>(static_cast<const std::int64_t*>(v.data)[i]);
    case DType::int8: return static_cast<float>(static_cast<const std::int8_t*>(v.data)[i]);  // raw bytes, signed
    case DType::fp16: break;
  }
  MSTPLAN_CHECK(false, "load: unsupported dtype {}", to_string(v.dtype));
  return 0.0f;
}

void store(const View& v, std::int64_t r, std::int64_t c, float value) {
  const i64 i = element_index(v, r, c);
  switch (v.dtype) {
    case DType::bf16: static_cast<std::uint16_t*>(v.data)[i] = to_bf16(value); return;
    case DType::fp32: static_cast<float*>(v.data)[i] = value; return;
    case DType::int8:  // raw bytes: an integer in [-128, 127]
      MSTPLAN_CHECK(value >= -128.0f && value <= 127.0f && value == std::nearbyint(value),
                    "store: {} is not an int8 value", value);
      static_cast<std::int8_t*>(v.data)[i] = static_cast<std::int8_t>(value);
      return;
    case DType::fp16:
    case DType::int32:
    case DType::int64: break;
  }
  MSTPLAN_CHECK(false, "store: unsupported dtype {}", to_string(v.dtype));
}

std::int64_t load_index(const View& v, std::int64_t r) {
  const i64 i = element_index(v, r, 0);
  switch (v.dtype) {
    case DType::int32: return static_cast<const std::int32_t*>(v.data)[i];
    case DType::int64: return static_cast<const std::int64_t*>(v.data)[i];
    case DType::bf16:
    case DType::fp16:
    case DType::fp32:
    case DType::int8: break;
  }
  MSTPLAN_CHECK(false, "load_index: indices must be int32 or int64, got {}", to_string(v.dtype));
  return 0;
}

// ---- GEMMs ----------------------------------------------------------------------------------

void matmul_xwt(const View& x, const View& w, const std::optional<View>& bias, const View& y, bool accumulate) {
  const i64 rows = x.rows(), in = x.cols, out = w.rows();
  check_cols(w, in, "matmul_xwt", "w");
  check_rows(y, rows, "matmul_xwt", "y");
  check_cols(y, out, "matmul_xwt", "y");
  if (bias) {
    check_rows(*bias, 1, "matmul_xwt", "bias");
    check_cols(*bias, out, "matmul_xwt", "bias");
  }
  std::vector<float> xr(static_cast<std::size_t>(in)), wr(xr.size());  // one row of each
  for (i64 r = 0; r < rows; ++r) {
    load_row(x, r, xr.data());
    for (i64 o = 0; o < out; ++o) {
      load_row(w, o, wr.data());
      float acc = 0.0f;
      for (std::size_t i = 0; i < xr.size(); ++i) acc += xr[i] * wr[i];
      if (bias) acc += load(*bias, 0, o);
      if (accumulate) acc += load(y, r, o);
      store(y, r, o, acc);
    }
  }
}

void matmul_xw(const View& dy, const View& w, const View& dx, bool accumulate) {
  const i64 rows = dy.rows(), out = dy.cols, in = w.cols;
  check_rows(w, out, "matmul_xw", "w");
  check_rows(dx, rows, "matmul_xw", "dx");
  check_cols(dx, in, "matmul_xw", "dx");
  std::vector<float> acc(static_cast<std::size_t>(in)), wr(acc.size());  // one output row, one w row
  for (i64 r = 0; r < rows; ++r) {
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (i64 o = 0; o < out; ++o) {
      const float d = load(dy, r, o);
      load_row(w, o, wr.data());
      for (std::size_t i = 0; i < acc.size(); ++i) acc[i] += d * wr[i];
    }
    for (i64 i = 0; i < in; ++i) {
      float value = acc[static_cast<std::size_t>(i)];
      if (accumulate) value += load(dx, r, i);
      store(dx, r, i, value);
    }
  }
}

void matmul_dw(const View& dy, const View& x, const View& dw, bool accumulate) {
  const i64 rows = dy.rows(), out = dy.cols, in = x.cols;
  check_rows(x, rows, "matmul_dw", "x");
  check_rows(dw, out, "matmul_dw", "dw");
  check_cols(dw, in, "matmul_dw", "dw");
  std::vector<float> acc(static_cast<std::size_t>(in)), xr(acc.size());  // one output row, one x row
  for (i64 o = 0; o < out; ++o) {
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (i64 r = 0; r < rows; ++r) {
      const float d = load(dy, r, o);
      load_row(x, r, xr.data());
      for (std::size_t i = 0; i < acc.size(); ++i) acc[i] += d * xr[i];
    }
    for (i64 i = 0; i < in; ++i) {
      float value = acc[static_cast<std::size_t>(i)];
      if (accumulate) value += load(dw, o, i);
      store(dw, o, i, value);
    }
  }
}

void bias_grad(const View& dy, const View& db, bool accumulate) {
  check_rows(db, 1, "bias_grad", "db");
  check_cols(db, dy.cols, "bias_grad", "db");
  for (i64 o = 0; o < dy.cols; ++o) {
    float acc = 0.0f;
    for (i64 r = 0; r < dy.rows(); ++r) acc += load(dy, r, o);
    if (accumulate) acc += load(db, 0, o);
    store(db, 0, o, acc);
  }
}

// ---- Norms ----------------------------------------------------------------------------------

void rmsnorm_forward(const View& x, const View& w, float eps, float offset, const View& y, const View& rstd) {
  check_rows(w, 1, "rmsnorm_forward", "w");
  check_cols(w, x.cols, "rmsnorm_forward", "w");
  check_same_shape(x, y, "rmsnorm_forward", "x", "y");
  check_rows(rstd, x.rows(), "rmsnorm_forward", "rstd");
  check_cols(rstd, 1, "rmsnorm_forward", "rstd");
  check_fp32(rstd, "rmsnorm_forward", "rstd");
  for (i64 r = 0; r < x.rows(); ++r) {
    float sum_sq = 0.0f;
    for (i64 c = 0; c < x.cols; ++c) {
      const float v = load(x, r, c);
      sum_sq += v * v;
    }
    const float rs = 1.0f / std::sqrt(sum_sq / static_cast<float>(x.cols) + eps);
    store(rstd, r, 0, rs);
  }
  rmsnorm_apply(x, rstd, w, offset, y);
}

void rmsnorm_apply(const View& x, const View& rstd, const View& w, float offset, const View& y) {
  check_rows(w, 1, "rmsnorm_apply", "w");
  check_cols(w, x.cols, "rmsnorm_apply", "w");
  check_same_shape(x, y, "rmsnorm_apply", "x", "y");
  check_rows(rstd, x.rows(), "rmsnorm_apply", "rstd");
  check_cols(rstd, 1, "rmsnorm_apply", "rstd");
  for (i64 r = 0; r < x.rows(); ++r) {
    const float rs = load(rstd, r, 0);
    for (i64 c = 0; c < x.cols; ++c) store(y, r, c, load(x, r, c) * rs * (load(w, 0, c) + offset));
  }
}

void rmsnorm_backward(const View& dy, const View& x, const View& rstd, const View& w, float offset,
                      const std::optional<View>& residual, const View& dx, const std::optional<View>& dw,
                      bool dw_accumulate) {
  const i64 rows = x.rows(), cols = x.cols;
  check_same_shape(dy, x, "rmsnorm_backward", "dy", "x");
  check_same_shape(dx, x, "rmsnorm_backward", "dx", "x");
  check_rows(rstd, rows, "rmsnorm_backward", "rstd");
  check_cols(rstd, 1, "rmsnorm_backward", "rstd");
  check_rows(w, 1, "rmsnorm_backward", "w");
  check_cols(w, cols, "rmsnorm_backward", "w");
  if (residual) check_same_shape(*residual, x, "rmsnorm_backward", "residual", "x");
  if (dw) {
    check_rows(*dw, 1, "rmsnorm_backward", "dw");
    check_cols(*dw, cols, "rmsnorm_backward", "dw");
  }
  std::vector<float> dw_acc(dw ? static_cast<std::size_t>(cols) : 0, 0.0f);  // sum over rows, fp32
  for (i64 r = 0; r < rows; ++r) {
    const float rs = load(rstd, r, 0);
    // mean(dxhat * xhat), dxhat = dy * (w + offset), xhat = x * rstd; dw accumulates dy * xhat.
    float dot = 0.0f;
    for (i64 c = 0; c < cols; ++c) {
      const float xhat = load(x, r, c) * rs;
      const float g = load(dy, r, c);
      dot += g * (load(w, 0, c) + offset) * xhat;
      if (dw) dw_acc[static_cast<std::size_t>(c)] += g * xhat;
    }
    const float mean = dot / static_cast<float>(cols);
    for (i64 c = 0; c < cols; ++c) {
      const float xhat = load(x, r, c) * rs;
      const float dxhat = load(dy, r, c) * (load(w, 0, c) + offset);
      float value = rs * (dxhat - xhat * mean);
      if (residual) value += load(*residual, r, c);
      store(dx, r, c, value);
    }
  }
  if (dw) {
    for (i64 c = 0; c < cols; ++c) {
      float value = dw_acc[static_cast<std::size_t>(c)];
      if (dw_accumulate) value += load(*dw, 0, c);
      store(*dw, 0, c, value);
    }
  }
}

// ---- Rotary embedding -----------------------------------------------------------------------

void rope(const View& x, std::int64_t head_dim, const Rope& rope, std::int64_t seq_len, bool inverse) {
  MSTPLAN_CHECK(head_dim > 0 && head_dim % 2 == 0, "rope: head_dim {} must be even and positive", head_dim);
  MSTPLAN_CHECK(x.cols % head_dim == 0, "rope: cols {} not a multiple of head_dim {}", x.cols, head_dim);
  const i64 half = head_dim / 2;
  MSTPLAN_CHECK(rope.scaling != RopeScaling::dynamic || rope.max_position_embeddings > 0, "rope: dynamic scaling needs max_position_embeddings");
  if (rope.scaling == RopeScaling::llama3) {
    MSTPLAN_CHECK(rope.original_max_position_embeddings > 0,
                  "rope: llama3 scaling needs original_max_position_embeddings");
    MSTPLAN_CHECK(rope.high_freq_factor != rope.low_freq_factor, "rope: llama3 needs high_freq_factor != low_freq_factor");
  }
  std::vector<double> inv_freq(static_cast<std::size_t>(half));
  kernels::rope_inverse_frequencies(rope, head_dim, seq_len, inv_freq.data());

  const i64 heads = x.cols / head_dim;
  for (i64 r = 0; r < x.rows(); ++r) {
    const auto pos = static_cast<double>(rope.first_position + x.position(r));
    for (i64 i = 0; i < half; ++i) {
      const double angle = pos * inv_freq[static_cast<std::size_t>(i)];
      const auto cs = static_cast<float>(std::cos(angle));
      const float sn = inverse ? -static_cast<float>(std::sin(angle)) : static_cast<float>(std::sin(angle));
      for (i64 h = 0; h < heads; ++h) {
        const i64 c1 = h * head_dim + i, c2 = c1 + half;
        const float x1 = load(x, r, c1), x2 = load(x, r, c2);
        store(x, r, c1, x1 * cs - x2 * sn);
        store(x, r, c2, x2 * cs + x1 * sn);
      }
    }
  }
}

// ---- Attention ------------------------------------------------------------------------------

void attention_forward(const AttentionShape& s, const View& q, const View& k, const View& v, const View& o,
                       const View& lse) {
  const char* kernel = "attention_forward";
  check_attention_shape(s, kernel);
  check_q_like(s, q, kernel, "q");
  check_kv_like(s, k, kernel, "k");
  check_kv_like(s, v, kernel, "v");
  check_q_like(s, o, kernel, "o");
  check_per_query(s, lse, kernel, "lse");
  const auto hd = static_cast<std::size_t>(s.head_dim);
  std::vector<float> qi(hd), acc(hd);
  std::array<float, kKeyBlock> block{};  // scores of one key block
  const i64 qn = s.query_rows();

  for (i64 b = 0; b < s.batch; ++b) {
    for (i64 h = 0; h < s.heads; ++h) {
      const i64 kv_col = kv_head_of(s, h) * s.head_dim;
      for (i64 r = 0; r < qn; ++r) {
        const i64 t = b * qn + r, i = s.query_first + r;  // query row t at position i
        load_row(q, t, h * s.head_dim, qi);
        std::fill(acc.begin(), acc.end(), 0.0f);
        float running_max = kNegInf, running_sum = 0.0f;
        const i64 lo = first_key(s, i);
        for (i64 start = lo / kKeyBlock * kKeyBlock; start <= i; start += kKeyBlock) {
          const i64 j0 = std::max(lo, start), j1 = std::min(i, start + kKeyBlock - 1);
          float block_max = kNegInf;
          for (i64 j = j0; j <= j1; ++j) {
            const float sc = attention_score(s, qi, k, b * s.seq + j, kv_col);
            block[static_cast<std::size_t>(j - j0)] = sc;
            block_max = std::max(block_max, sc);
          }
          const float new_max = std::max(running_max, block_max);
          const float correction = std::exp(running_max - new_max);  // 0 for the first block
          running_sum *= correction;
          for (float& a : acc) a *= correction;
          for (i64 j = j0; j <= j1; ++j) {
            const float p = std::exp(block[static_cast<std::size_t>(j - j0)] - new_max);
            running_sum += p;
            for (std::size_t e = 0; e < hd; ++e) acc[e] += p * load(v, b * s.seq + j, kv_col + static_cast<i64>(e));
          }
          running_max = new_max;
        }
        for (std::size_t e = 0; e < hd; ++e) store(o, t, h * s.head_dim + static_cast<i64>(e), acc[e] / running_sum);
        store(lse, (b * s.heads + h) * qn + r, 0, running_max + std::log(running_sum));
      }
    }
  }
}

void attention_backward(const AttentionShape& s, const View& q, const View& k, const View& v, const View& o,
                        const View& lse, const View& dout, const View& dq, const View& dk, const View& dv,
                        const View& dq_accum, const View& delta) {
  const char* kernel = "attention_backward";
  check_attention_shape(s, kernel);
  check_q_like(s, q, kernel, "q");
  check_kv_like(s, k, kernel, "k");
  check_kv_like(s, v, kernel, "v");
  check_q_like(s, o, kernel, "o");
  check_per_query(s, lse, kernel, "lse");
  check_q_like(s, dout, kernel, "dout");
  check_q_like(s, dq, kernel, "dq");
  check_kv_like(s, dk, kernel, "dk");
  check_kv_like(s, dv, kernel, "dv");
  check_q_like(s, dq_accum, kernel, "dq_accum");
  check_fp32(dq_accum, kernel, "dq_accum");
  check_per_query(s, delta, kernel, "delta");
  const auto hd = static_cast<std::size_t>(s.head_dim);
  const i64 group = s.heads / s.kv_heads;
  const i64 qn = s.query_rows(), q_last = s.query_first + qn - 1;

  // delta = rowsum(dout * o) per (batch, head, query); dq_accum = 0.
  for (i64 b = 0; b < s.batch; ++b) {
    for (i64 h = 0; h < s.heads; ++h) {
      for (i64 i = 0; i < qn; ++i) {
        const i64 t = b * qn + i;
        float sum = 0.0f;
        for (i64 e = 0; e < s.head_dim; ++e) {
          const i64 c = h * s.head_dim + e;
          sum += load(dout, t, c) * load(o, t, c);
          store(dq_accum, t, c, 0.0f);
        }
        store(delta, (b * s.heads + h) * qn + i, 0, sum);
      }
    }
  }

  // Key-outer: dk, dv of key j gather every (query head of the group, query) that sees j (of
  // the queries held: with context parallelism, this rank's share of dk, dv).
  std::vector<float> kj(hd), vj(hd), qi(hd), doi(hd), dk_acc(hd), dv_acc(hd);
  for (i64 b = 0; b < s.batch; ++b) {
    for (i64 kvh = 0; kvh < s.kv_heads; ++kvh) {
      const i64 kv_col = kvh * s.head_dim;
      for (i64 j = 0; j < s.seq; ++j) {
        const i64 tj = b * s.seq + j;
        load_row(k, tj, kv_col, kj);
        load_row(v, tj, kv_col, vj);
        std::fill(dk_acc.begin(), dk_acc.end(), 0.0f);
        std::fill(dv_acc.begin(), dv_acc.end(), 0.0f);
        for (i64 h = kvh * group; h < (kvh + 1) * group; ++h) {
          const i64 q_col = h * s.head_dim;
          for (i64 i = std::max(j, s.query_first); i <= std::min(last_query(s, j), q_last); ++i) {
            const i64 ti = b * qn + (i - s.query_first);
            const i64 stat_row = (b * s.heads + h) * qn + (i - s.query_first);
            load_row(q, ti, q_col, qi);
            load_row(dout, ti, q_col, doi);
            float t = 0.0f;
            const float score = attention_score(s, qi, k, tj, kv_col, &t);
            const float p = std::exp(score - load(lse, stat_row, 0));
            float dp = 0.0f;
            for (std::size_t e = 0; e < hd; ++e) {
              dv_acc[e] += p * doi[e];
              dp += doi[e] * vj[e];
            }
            float ds = p * (dp - load(delta, stat_row, 0));  // d loss / d (capped score)
            if (s.softcap > 0.0f) ds *= 1.0f - t * t;        // d cap(z) / dz = 1 - tanh^2
            ds *= s.scale;                                   // d (scale q.k) / d q = scale k
            for (std::size_t e = 0; e < hd; ++e) {
              dk_acc[e] += ds * qi[e];
              const i64 c = q_col + static_cast<i64>(e);
              store(dq_accum, ti, c, load(dq_accum, ti, c) + ds * kj[e]);
            }
          }
        }
        for (std::size_t e = 0; e < hd; ++e) {
          store(dk, tj, kv_col + static_cast<i64>(e), dk_acc[e]);
          store(dv, tj, kv_col + static_cast<i64>(e), dv_acc[e]);
        }
      }
    }
  }
  copy(dq_accum, dq);
}

void eager_scores(const AttentionShape& s, const View& q, const View& k, const View& scores) {
  const char* kernel = "eager_scores";
  check_attention_shape(s, kernel);
  MSTPLAN_CHECK(s.softcap == 0.0f, "eager_scores: soft-capping {} is not supported by eager attention", s.softcap);
  check_q_like(s, q, kernel, "q");
  check_kv_like(s, k, kernel, "k");
  check_scores_like(s, scores, kernel, "scores");
  std::vector<float> qi(static_cast<std::size_t>(s.head_dim));
  for (i64 b = 0; b < s.batch; ++b) {
    for (i64 h = 0; h < s.heads; ++h) {
      const i64 kv_col = kv_head_of(s, h) * s.head_dim;
      for (i64 i = 0; i < s.seq; ++i) {
        load_row(q, b * s.seq + i, h * s.head_dim, qi);
        const i64 row = (b * s.heads + h) * s.seq + i;
        for (i64 j = 0; j < s.seq; ++j) {
          store(scores, row, j, visible(s, i, j) ? attention_score(s, qi, k, b * s.seq + j, kv_col) : kNegInf);
        }
      }
    }
  }
}

void eager_softmax(const View& scores, const View& probs) {
  check_same_shape(scores, probs, "eager_softmax", "scores", "probs");
  for (i64 r = 0; r < scores.rows(); ++r) {
    float mx = kNegInf;
    for (i64 c = 0; c < scores.cols; ++c) mx = std::max(mx, load(scores, r, c));
    if (mx == kNegInf) {  // a fully masked row
      for (i64 c = 0; c < scores.cols; ++c) store(probs, r, c, 0.0f);
      continue;
    }
    float sum = 0.0f;
    for (i64 c = 0; c < scores.cols; ++c) sum += std::exp(load(scores, r, c) - mx);
    for (i64 c = 0; c < scores.cols; ++c) store(probs, r, c, std::exp(load(scores, r, c) - mx) / sum);
  }
}

void eager_pv(const AttentionShape& s, const View& probs, const View& v, const View& o) {
  const char* kernel = "eager_pv";
  check_attention_shape(s, kernel);
  check_scores_like(s, probs, kernel, "probs");
  check_kv_like(s, v, kernel, "v");
  check_q_like(s, o, kernel, "o");
  std::vector<float> acc(static_cast<std::size_t>(s.head_dim));
  for (i64 b = 0; b < s.batch; ++b) {
    for (i64 h = 0; h < s.heads; ++h) {
      const i64 kv_col = kv_head_of(s, h) * s.head_dim;
      for (i64 i = 0; i < s.seq; ++i) {
        const i64 row = (b * s.heads + h) * s.seq + i;
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (i64 j = 0; j < s.seq; ++j) {
          const float p = load(probs, row, j);
          for (i64 e = 0; e < s.head_dim; ++e) acc[static_cast<std::size_t>(e)] += p * load(v, b * s.seq + j, kv_col + e);
        }
        for (i64 e = 0; e < s.head_dim; ++e) store(o, b * s.seq + i, h * s.head_dim + e, acc[static_cast<std::size_t>(e)]);
      }
    }
  }
}

void eager_dprobs(const AttentionShape& s, const View& dout, const View& v, const View& dprobs) {
  const char* kernel = "eager_dprobs";
  check_attention_shape(s, kernel);
  check_q_like(s, dout, kernel, "dout");
  check_kv_like(s, v, kernel, "v");
  check_scores_like(s, dprobs, kernel, "dprobs");
  std::vector<float> doi(static_cast<std::size_t>(s.head_dim));
  for (i64 b = 0; b < s.batch; ++b) {
    for (i64 h = 0; h < s.heads; ++h) {
      const i64 kv_col = kv_head_of(s, h) * s.head_dim;
      for (i64 i = 0; i < s.seq; ++i) {
        load_row(dout, b * s.seq + i, h * s.head_dim, doi);
        const i64 row = (b * s.heads + h) * s.seq + i;
        for (i64 j = 0; j < s.seq; ++j) {
          float dot = 0.0f;
          for (i64 e = 0; e < s.head_dim; ++e) dot += doi[static_cast<std::size_t>(e)] * load(v, b * s.seq + j, kv_col + e);
          store(dprobs, row, j, dot);
        }
      }
    }
  }
}

void eager_dv(const AttentionShape& s, const View& probs, const View& dout, const View& dv) {
  const char* kernel = "eager_dv";
  check_attention_shape(s, kernel);
  check_scores_like(s, probs, kernel, "probs");
  check_q_like(s, dout, kernel, "dout");
  check_kv_like(s, dv, kernel, "dv");
  const i64 group = s.heads / s.kv_heads;
  std::vector<float> acc(static_cast<std::size_t>(s.head_dim));
  for (i64 b = 0; b < s.batch; ++b) {
    for (i64 kvh = 0; kvh < s.kv_heads; ++kvh) {
      for (i64 j = 0; j < s.seq; ++j) {
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (i64 h = kvh * group; h < (kvh + 1) * group; ++h) {
          for (i64 i = 0; i < s.seq; ++i) {
            const float p = load(probs, (b * s.heads + h) * s.seq + i, j);
            for (i64 e = 0; e < s.head_dim; ++e) {
              acc[static_cast<std::size_t>(e)] += p * load(dout, b * s.seq + i, h * s.head_dim + e);
            }
          }
        }
        for (i64 e = 0; e < s.head_dim; ++e) store(dv, b * s.seq + j, kvh * s.head_dim + e, acc[static_cast<std::size_t>(e)]);
      }
    }
  }
}

void eager_softmax_backward(const View& probs, const View& dprobs, const View& dscores) {
  check_same_shape(probs, dprobs, "eager_softmax_backward", "probs", "dprobs");
  check_same_shape(probs, dscores, "eager_softmax_backward", "probs", "dscores");
  for (i64 r = 0; r < probs.rows(); ++r) {
    float dot = 0.0f;
    for (i64 c = 0; c < probs.cols; ++c) dot += load(probs, r, c) * load(dprobs, r, c);
    for (i64 c = 0; c < probs.cols; ++c) store(dscores, r, c, load(probs, r, c) * (load(dprobs, r, c) - dot));
  }
}

void eager_dq(const AttentionShape& s, const View& dscores, const View& k, const View& dq) {
  const char* kernel = "eager_dq";
  check_attention_shape(s, kernel);
  check_scores_like(s, dscores, kernel, "dscores");
  check_kv_like(s, k, kernel, "k");
  check_q_like(s, dq, kernel, "dq");
  std::vector<float> acc(static_cast<std::size_t>(s.head_dim));
  for (i64 b = 0; b < s.batch; ++b) {
    for (i64 h = 0; h < s.heads; ++h) {
      const i64 kv_col = kv_head_of(s, h) * s.head_dim;
      for (i64 i = 0; i < s.seq; ++i) {
        const i64 row = (b * s.heads + h) * s.seq + i;
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (i64 j = 0; j < s.seq; ++j) {
          const float d = load(dscores, row, j);
          for (i64 e = 0; e < s.head_dim; ++e) acc[static_cast<std::size_t>(e)] += d * load(k, b * s.seq + j, kv_col + e);
        }
        for (i64 e = 0; e < s.head_dim; ++e) {
          store(dq, b * s.seq + i, h * s.head_dim + e, acc[static_cast<std::size_t>(e)] * s.scale);
        }
      }
    }
  }
}

void eager_dk(const AttentionShape& s, const View& dscores, const View& q, const View& dk) {
  const char* kernel = "eager_dk";
  check_attention_shape(s, kernel);
  check_scores_like(s, dscores, kernel, "dscores");
  check_q_like(s, q, kernel, "q");
  check_kv_like(s, dk, kernel, "dk");
  const i64 group = s.heads / s.kv_heads;
  std::vector<float> acc(static_cast<std::size_t>(s.head_dim));
  for (i64 b = 0; b < s.batch; ++b) {
    for (i64 kvh = 0; kvh < s.kv_heads; ++kvh) {
      for (i64 j = 0; j < s.seq; ++j) {
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (i64 h = kvh * group; h < (kvh + 1) * group; ++h) {
          for (i64 i = 0; i < s.seq; ++i) {
            const float d = load(dscores, (b * s.heads + h) * s.seq + i, j);
            for (i64 e = 0; e < s.head_dim; ++e) {
              acc[static_cast<std::size_t>(e)] += d * load(q, b * s.seq + i, h * s.head_dim + e);
            }
          }
        }
        for (i64 e = 0; e < s.head_dim; ++e) {
          store(dk, b * s.seq + j, kvh * s.head_dim + e, acc[static_cast<std::size_t>(e)] * s.scale);
        }
      }
    }
  }
}

// ---- MLP activation -------------------------------------------------------------------------

void gated_forward(GatedActivation a, const View& g, const View& u, const View& out) {
  check_same_shape(g, u, "gated_forward", "g", "u");
  check_same_shape(g, out, "gated_forward", "g", "out");
  for (i64 r = 0; r < g.rows(); ++r) {
    for (i64 c = 0; c < g.cols; ++c) {
      float act = 0.0f, dact = 0.0f;
      activation(a, load(g, r, c), act, dact);
      store(out, r, c, act * load(u, r, c));
    }
  }
}

void gated_backward(GatedActivation a, const View& dout, const View& g, const View& u, const View& dg,
                    const View& du) {
  check_same_shape(g, u, "gated_backward", "g", "u");
  check_same_shape(g, dout, "gated_backward", "g", "dout");
  check_same_shape(g, dg, "gated_backward", "g", "dg");
  check_same_shape(g, du, "gated_backward", "g", "du");
  for (i64 r = 0; r < g.rows(); ++r) {
    for (i64 c = 0; c < g.cols; ++c) {
      const float d = load(dout, r, c), gv = load(g, r, c), uv = load(u, r, c);  // all read before any write
      float act = 0.0f, dact = 0.0f;
      activation(a, gv, act, dact);
      store(dg, r, c, d * uv * dact);
      store(du, r, c, d * act);
    }
  }
}

// ---- Elementwise ----------------------------------------------------------------------------

void add(const View& a, const View& b, const View& out) {
  check_same_shape(a, b, "add", "a", "b");
  check_same_shape(a, out, "add", "a", "out");
  for (i64 r = 0; r < a.rows(); ++r) {
    for (i64 c = 0; c < a.cols; ++c) store(out, r, c, load(a, r, c) + load(b, r, c));
  }
}

void softcap(const View& x, float cap) {
  MSTPLAN_CHECK(cap > 0.0f, "softcap: cap must be positive, got {}", cap);
  for (i64 r = 0; r < x.rows(); ++r) {
    for (i64 c = 0; c < x.cols; ++c) store(x, r, c, cap * std::tanh(load(x, r, c) / cap));
  }
}

// ---- Quantized weights (kernels::Quantized) ---------------------------------------------

namespace {

float read_f32(const std::uint8_t* p) {
  float x = 0.0f;
  std::memcpy(&x, p, sizeof(x));
  return x;
}
void write_f32(std::uint8_t* p, float x) { std::memcpy(p, &x, sizeof(x)); }

int nearest_code(QuantFormat f, float x) {
  int best = 0;
  float best_error = INFINITY;
  for (int q = 0; q < 16; ++q) {
    const float error = std::abs(x - kernels::quant_code(f, q));
    if (error < best_error) {
      best = q;
      best_error = error;
    }
  }
  return best;
}

// Block b's absmax as stored (double quantization: decoded from its int8 code).
float block_absmax(const Quantized& q, const std::uint8_t* bytes, i64 b) {
  const i64 n = q.rows * q.cols, blocks = (n + kernels::kQuantBlock - 1) / kernels::kQuantBlock;
  const std::uint8_t* scales = bytes + (n + 1) / 2;
  if (!q.double_quant) return read_f32(scales + 4 * b);
  const i64 groups = (blocks + kernels::kNestedBlock - 1) / kernels::kNestedBlock;
  const float g = read_f32(scales + blocks + 4 * (b / kernels::kNestedBlock));
  const float offset = read_f32(scales + blocks + 4 * groups);
  return static_cast<float>(static_cast<std::int8_t>(scales[b])) * g / 127.0f + offset;
}

}  // namespace

void quantize(const Quantized& q, const float* w, std::uint8_t* out) {
  const i64 n = q.rows * q.cols;
  std::memset(out, 0, static_cast<std::size_t>(kernels::quantized_bytes(q)));
  if (q.format == QuantFormat::int8_rows) {
    for (i64 r = 0; r < q.rows; ++r) {
      float s = 0.0f;
      for (i64 c = 0; c < q.cols; ++c) s = std::max(s, std::abs(w[r * q.cols + c]));
      write_f32(out + n + 4 * r, s);
      for (i64 c = 0; c < q.cols; ++c) {
        const float v = s > 0.0f ? std::nearbyint(127.0f * w[r * q.cols + c] / s) : 0.0f;
        out[r * q.cols + c] = static_cast<std::uint8_t>(static_cast<std::int8_t>(std::clamp(v, -127.0f, 127.0f)));
      }
    }
    return;
  }
  const i64 blocks = (n + kernels::kQuantBlock - 1) / kernels::kQuantBlock;
  std::vector<float> absmax(static_cast<std::size_t>(blocks), 0.0f);
  for (i64 e = 0; e < n; ++e) {
    float& m = absmax[static_cast<std::size_t>(e / kernels::kQuantBlock)];
    m = std::max(m, std::abs(w[e]));
  }
  std::uint8_t* scales = out + (n + 1) / 2;
  if (q.double_quant) {
    const i64 groups = (blocks + kernels::kNestedBlock - 1) / kernels::kNestedBlock;
    double sum = 0;
    for (float m : absmax) sum += m;
    const float offset = static_cast<float>(sum / static_cast<double>(blocks));
    write_f32(scales + blocks + 4 * groups, offset);
    for (i64 gi = 0; gi < groups; ++gi) {
      const i64 first = gi * kernels::kNestedBlock, last = std::min(blocks, first + kernels::kNestedBlock);
      float g = 0.0f;
      for (i64 b = first; b < last; ++b) g = std::max(g, std::abs(absmax[static_cast<std::size_t>(b)] - offset));
      write_f32(scales + blocks + 4 * gi, g);
      for (i64 b = first; b < last; ++b) {
        const float v = g > 0.0f ? std::nearbyint(127.0f * (absmax[static_cast<std::size_t>(b)] - offset) / g) : 0.0f;
        scales[b] = static_cast<std::uint8_t>(static_cast<std::int8_t>(std::clamp(v, -127.0f, 127.0f)));
      }
    }
  } else {
    for (i64 b = 0; b < blocks; ++b) write_f32(scales + 4 * b, absmax[static_cast<std::size_t>(b)]);
  }
  // Codes against the block scale as stored, so that dequantize() gives the nearest code's value.
  for (i64 e = 0; e < n; ++e) {
    const float m = block_absmax(q, out, e / kernels::kQuantBlock);
    const int code = m > 0.0f ? nearest_code(q.format, w[e] / m) : nearest_code(q.format, 0.0f);
    out[e / 2] = static_cast<std::uint8_t>(out[e / 2] | (e % 2 == 0 ? code << 4 : code));
  }
}

void dequantize(const Quantized& q, const View& bytes, const View& out) {
  const i64 n = q.rows * q.cols;
  MSTPLAN_CHECK(bytes.dtype == DType::int8 && bytes.rows() * bytes.cols == kernels::quantized_bytes(q),
                "dequantize: {} bytes of {}, expected {}", bytes.rows() * bytes.cols, to_string(bytes.dtype),
                kernels::quantized_bytes(q));
  check_rows(out, q.rows, "dequantize", "out");
  MSTPLAN_CHECK(out.cols == q.cols, "dequantize: out has {} columns, expected {}", out.cols, q.cols);
  const auto* b = static_cast<const std::uint8_t*>(bytes.data);
  for (i64 r = 0; r < q.rows; ++r) {
    for (i64 c = 0; c < q.cols; ++c) {
      const i64 e = r * q.cols + c;
      float w = 0.0f;
      if (q.format == QuantFormat::int8_rows) {
        w = static_cast<float>(static_cast<std::int8_t>(b[e])) * read_f32(b + n + 4 * r) / 127.0f;
      } else {
        const int code = e % 2 == 0 ? b[e / 2] >> 4 : b[e / 2] & 0xF;
        w = kernels::quant_code(q.format, code) * block_absmax(q, b, e / kernels::kQuantBlock);
      }
      store(out, r, c, w);
    }
  }
}

void scale(const View& x, float s, const View& out) {
  check_same_shape(x, out, "scale", "x", "out");
  for (i64 r = 0; r < x.rows(); ++r) {
    for (i64 c = 0; c < x.cols; ++c) store(out, r, c, s * load(x, r, c));
  }
}

void copy(const View& src, const View& dst) {
  check_same_shape(src, dst, "copy", "src", "dst");
  for (i64 r = 0; r < src.rows(); ++r) {
    for (i64 c = 0; c < src.cols; ++c) store(dst, r, c, load(src, r, c));
  }
}

void zero(const View& x) {
  for (i64 r = 0; r < x.rows(); ++r) {
    for (i64 c = 0; c < x.cols; ++c) store(x, r, c, 0.0f);
  }
}

// ---- Embedding ------------------------------------------------------------------------------
// The scale is rounded to the activation's storage dtype first (Gemma multiplies by a
// bf16 tensor holding sqrt(d)): to out's dtype in the forward, to dout's in the backward.

void embedding_forward(const View& tokens, const View& table, float scale, const View& out) {
  check_rows(out, tokens.rows(), "embedding_forward", "out");
  check_cols(out, table.cols, "embedding_forward", "out");
  const float s = round_to(out.dtype, scale);
  for (i64 r = 0; r < tokens.rows(); ++r) {
    const i64 t = load_index(tokens, r);
    MSTPLAN_CHECK(t >= 0 && t < table.rows(), "embedding_forward: token {} of row {} outside the table of {}", t, r,
                  table.rows());
    for (i64 c = 0; c < table.cols; ++c) store(out, r, c, load(table, t, c) * s);
  }
}

void embedding_backward(const View& dout, const View& tokens, float scale, const View& dtable) {
  check_rows(dout, tokens.rows(), "embedding_backward", "dout");
  check_cols(dout, dtable.cols, "embedding_backward", "dout");
  const float s = round_to(dout.dtype, scale);
  for (i64 r = 0; r < tokens.rows(); ++r) {
    const i64 t = load_index(tokens, r);
    MSTPLAN_CHECK(t >= 0 && t < dtable.rows(), "embedding_backward: token {} of row {} outside the table of {}", t,
                  r, dtable.rows());
    for (i64 c = 0; c < dtable.cols; ++c) store(dtable, t, c, load(dtable, t, c) + load(dout, r, c) * s);
  }
}

// ---- LM head loss ---------------------------------------------------------------------------

void cross_entropy_forward(const View& logits, const View& targets, float scale, float softcap, float* loss,
                           const std::optional<View>& lse, const std::optional<View>& dlogits) {
  const char* kernel = "cross_entropy_forward";
  MSTPLAN_CHECK(loss != nullptr, "{}: loss is null", kernel);
  check_rows(targets, logits.rows(), kernel, "targets");
  if (lse) {
    check_rows(*lse, logits.rows(), kernel, "lse");
    check_cols(*lse, 1, kernel, "lse");
    check_fp32(*lse, kernel, "lse");
  }
  if (dlogits) check_same_shape(logits, *dlogits, kernel, "logits", "dlogits");
  float sum = 0.0f;
  for (i64 r = 0; r < logits.rows(); ++r) {
    const float row_lse = row_logsumexp(logits, r);
    const i64 t = row_target(targets, r, logits.cols, kernel);
    if (t >= 0) sum += row_lse - load(logits, r, t);  // read before dlogits may overwrite logits
    if (lse) store(*lse, r, 0, row_lse);
    if (dlogits) write_dlogits_row(logits, r, row_lse, t, scale, softcap, *dlogits);
  }
  *loss += sum * scale;
}

void cross_entropy_backward(const View& logits, const View& lse, const View& targets, float scale, float softcap,
                            const View& dlogits) {
  const char* kernel = "cross_entropy_backward";
  check_rows(targets, logits.rows(), kernel, "targets");
  check_rows(lse, logits.rows(), kernel, "lse");
  check_cols(lse, 1, kernel, "lse");
  check_same_shape(logits, dlogits, kernel, "logits", "dlogits");
  for (i64 r = 0; r < logits.rows(); ++r) {
    write_dlogits_row(logits, r, load(lse, r, 0), row_target(targets, r, logits.cols, kernel), scale, softcap,
                      dlogits);
  }
}

// ---- Optimizers -----------------------------------------------------------------------------
// Element k of every view is its k-th element in row-major order, so state may be shaped
// differently from the gradient (a flat 1 x n buffer, say) as long as the counts agree.

void adamw(const AdamW& o, const View& g, const View& w, const View& m, const View& v,
           const std::optional<View>& master) {
  const i64 n = g.rows() * g.cols;
  MSTPLAN_CHECK(o.step >= 1, "adamw: step {} must be >= 1", o.step);
  MSTPLAN_CHECK(w.rows() * w.cols == n && m.rows() * m.cols == n && v.rows() * v.cols == n,
                "adamw: g has {} elements, w {}, m {}, v {}", n, w.rows() * w.cols, m.rows() * m.cols,
                v.rows() * v.cols);
  if (master) {
    MSTPLAN_CHECK(master->rows() * master->cols == n, "adamw: g has {} elements, master {}", n,
                  master->rows() * master->cols);
    check_fp32(*master, "adamw", "master");
  }
  const auto t = static_cast<double>(o.step);
  const auto bc1 = static_cast<float>(1.0 - std::pow(static_cast<double>(o.beta1), t));
  const auto bc2 = static_cast<float>(1.0 - std::pow(static_cast<double>(o.beta2), t));
  const View& p_view = master ? *master : w;
  for (i64 k = 0; k < n; ++k) {
    const float grad = load_flat(g, k);
    float p = load_flat(p_view, k);
    p -= o.lr * o.weight_decay * p;  // decoupled weight decay, applied first
    const float mk = o.beta1 * load_flat(m, k) + (1.0f - o.beta1) * grad;
    const float vk = o.beta2 * load_flat(v, k) + (1.0f - o.beta2) * grad * grad;
    store_flat(m, k, mk);
    store_flat(v, k, vk);
    p -= o.lr * (mk / bc1) / (std::sqrt(vk / bc2) + o.eps);
    store_flat(p_view, k, p);
    if (master) store_flat(w, k, p);
  }
}

void sgd(float lr, float weight_decay, const View& g, const View& w, const std::optional<View>& master) {
  const i64 n = g.rows() * g.cols;
  MSTPLAN_CHECK(w.rows() * w.cols == n, "sgd: g has {} elements, w {}", n, w.rows() * w.cols);
  if (master) {
    MSTPLAN_CHECK(master->rows() * master->cols == n, "sgd: g has {} elements, master {}", n,
                  master->rows() * master->cols);
    check_fp32(*master, "sgd", "master");
  }
  const View& p_view = master ? *master : w;
  for (i64 k = 0; k < n; ++k) {
    float p = load_flat(p_view, k);
    p -= lr * (load_flat(g, k) + weight_decay * p);
    store_flat(p_view, k, p);
    if (master) store_flat(w, k, p);
  }
}

}  // namespace mstplan::ref
