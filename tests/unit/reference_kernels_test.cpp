// The CPU reference kernels: hand-computed cases, finite-difference gradient checks (central
// differences of L = sum(out * R) for a fixed random R), and the kernels against each other
// (blockwise attention against the eager chain and a naive double-precision reference).
#include "kernels/reference/reference.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <numbers>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace mstplan::ref {
namespace {

using i64 = std::int64_t;

/// An fp32 rows x cols matrix that owns its storage.
struct Mat {
  i64 rows = 0, cols = 0;
  std::vector<float> v;
  Mat(i64 r, i64 c, float fill = 0.0f) : rows(r), cols(c), v(static_cast<std::size_t>(r * c), fill) {}
  View view() { return contiguous(v.data(), DType::fp32, rows, cols); }
  float& at(i64 r, i64 c) { return v[static_cast<std::size_t>(r * cols + c)]; }
  [[nodiscard]] float at(i64 r, i64 c) const { return v[static_cast<std::size_t>(r * cols + c)]; }
};

Mat random_mat(i64 rows, i64 cols, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
  Mat m(rows, cols);
  std::uniform_real_distribution<float> dist(lo, hi);
  for (float& x : m.v) x = dist(rng);
  return m;
}

/// sum(a * b) in double.
double dot(const Mat& a, const Mat& b) {
  double sum = 0.0;
  for (std::size_t i = 0; i < a.v.size(); ++i) sum += static_cast<double>(a.v[i]) * static_cast<double>(b.v[i]);
  return sum;
}

/// Central-difference gradient of loss() with respect to every element of x (restored after).
std::vector<double> numeric_grad(Mat& x, const std::function<double()>& loss, float h = 1e-2f) {
  std::vector<double> grad(x.v.size());
  for (std::size_t k = 0; k < x.v.size(); ++k) {
    const float orig = x.v[k];
    const float plus = orig + h, minus = orig - h;
    x.v[k] = plus;
    const double lp = loss();
    x.v[k] = minus;
    const double lm = loss();
    x.v[k] = orig;
    grad[k] = (lp - lm) / (static_cast<double>(plus) - static_cast<double>(minus));
  }
  return grad;
}

/// max |expected - actual| <= rtol * max |expected| (at least rtol * 1e-3).
void expect_close(const std::vector<double>& expected, const std::vector<float>& actual, double rtol,
                  const std::string& what) {
  ASSERT_EQ(expected.size(), actual.size()) << what;
  double max_ref = 0.0, max_err = 0.0;
  std::size_t worst = 0;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    max_ref = std::max(max_ref, std::abs(expected[i]));
    const double err = std::abs(expected[i] - static_cast<double>(actual[i]));
    if (err > max_err) {
      max_err = err;
      worst = i;
    }
  }
  EXPECT_LE(max_err, rtol * std::max(max_ref, 1e-3))
      << what << ": worst element " << worst << " expected " << expected[worst] << " got " << actual[worst]
      << " (max |expected| " << max_ref << ")";
}

void expect_close(const Mat& expected, const Mat& actual, double rtol, const std::string& what) {
  expect_close(std::vector<double>(expected.v.begin(), expected.v.end()), actual.v, rtol, what);
}

// ---- bf16 and views -------------------------------------------------------------------------

// to_bf16 rounds to nearest even, keeps NaN a NaN and overflows to inf; from_bf16 is exact.
TEST(RefKernelsBf16, KnownValuesRoundToNearestEven) {
  EXPECT_EQ(to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(to_bf16(-1.0f), 0xBF80);
  EXPECT_EQ(from_bf16(0x3F80), 1.0f);
  // 1/3 = 0x3EAAAAAB: low half 0xAAAB > 0x8000 rounds up to 0x3EAB = 0.333984375.
  EXPECT_EQ(to_bf16(1.0f / 3.0f), 0x3EAB);
  EXPECT_EQ(from_bf16(0x3EAB), 0.333984375f);
  // Exact ties: 0x3F808000 (1 + 2^-8) -> even 0x3F80; 0x3F818000 -> even 0x3F82.
  EXPECT_EQ(to_bf16(std::bit_cast<float>(0x3F808000u)), 0x3F80);
  EXPECT_EQ(to_bf16(std::bit_cast<float>(0x3F818000u)), 0x3F82);
  // Just above a tie rounds up: 0x3F808001 -> 0x3F81.
  EXPECT_EQ(to_bf16(std::bit_cast<float>(0x3F808001u)), 0x3F81);
  // NaN stays NaN, even one whose payload lies only in the low 16 bits (naive rounding gives inf).
  EXPECT_TRUE(std::isnan(from_bf16(to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isnan(from_bf16(to_bf16(std::bit_cast<float>(0x7F800001u)))));
  EXPECT_TRUE(std::isnan(from_bf16(to_bf16(std::bit_cast<float>(0xFF800001u)))));
  // Infinities are exact.
  EXPECT_EQ(to_bf16(std::numeric_limits<float>::infinity()), 0x7F80);
  EXPECT_EQ(to_bf16(-std::numeric_limits<float>::infinity()), 0xFF80);
  // FLT_MAX = 0x7F7FFFFF lies above the midpoint 0x7F7F8000 of bf16's max 0x7F7F and 2^128: inf.
  EXPECT_EQ(to_bf16(std::numeric_limits<float>::max()), 0x7F80);
  EXPECT_EQ(to_bf16(std::bit_cast<float>(0x7F7F7FFFu)), 0x7F7F);  // below the midpoint: bf16 max
}

// store rounds to the view's dtype and load converts back; int views load as numbers.
TEST(RefKernelsBf16, StoreAndLoadThroughViews) {
  std::vector<std::uint16_t> b(6, 0);
  const View bv = contiguous(b.data(), DType::bf16, 2, 3);
  store(bv, 1, 2, 1.0f / 3.0f);
  EXPECT_EQ(b[5], 0x3EAB);
  EXPECT_EQ(load(bv, 1, 2), 0.333984375f);
  store(bv, 0, 0, 1.0f);
  EXPECT_EQ(load(bv, 0, 0), 1.0f);

  std::vector<float> f(6, 0.0f);
  const View fv = contiguous(f.data(), DType::fp32, 2, 3);
  store(fv, 1, 0, 1.0f / 3.0f);
  EXPECT_EQ(f[3], 1.0f / 3.0f);  // fp32 keeps every bit

  std::vector<std::int32_t> i32{5, -100, 7};
  std::vector<std::int64_t> i64v{3, 12345678901LL};
  const View iv = contiguous(i32.data(), DType::int32, 3, 1);
  const View lv = contiguous(i64v.data(), DType::int64, 2, 1);
  EXPECT_EQ(load_index(iv, 1), -100);
  EXPECT_EQ(load_index(lv, 1), 12345678901LL);
  EXPECT_EQ(load(iv, 2, 0), 7.0f);
  EXPECT_EQ(load(lv, 0, 0), 3.0f);
}

// A view of 2 groups of 3 rows, 5 rows apart, from row 1 selects buffer rows 1,2,3,6,7,8; a matmul
// on it equals the matmul on the gathered rows, leaves the other rows alone, and accumulate adds.
TEST(RefKernelsView, StridedChunkSelectsTheRightRows) {
  std::mt19937 rng(1);
  const i64 in = 4, out = 3;
  Mat xbuf = random_mat(10, in, rng), w = random_mat(out, in, rng), bias = random_mat(1, out, rng);
  Mat ybuf(10, out, 42.0f);  // sentinel outside the chunk
  View x = xbuf.view();
  x.seqs = 2;
  x.positions = 3;
  x.seq_stride = 5;
  x.first = 1;
  View y = ybuf.view();
  y.seqs = 2;
  y.positions = 3;
  y.seq_stride = 5;
  y.first = 1;
  const std::vector<i64> expected_rows{1, 2, 3, 6, 7, 8};
  ASSERT_EQ(x.rows(), 6);
  for (i64 r = 0; r < 6; ++r) {
    EXPECT_EQ(x.buffer_row(r), expected_rows[static_cast<std::size_t>(r)]);
    EXPECT_EQ(x.position(r), 1 + r % 3);  // positions 1,2,3 in each sequence
  }

  Mat gathered(6, in);
  for (i64 r = 0; r < 6; ++r) {
    for (i64 c = 0; c < in; ++c) gathered.at(r, c) = xbuf.at(expected_rows[static_cast<std::size_t>(r)], c);
  }
  Mat ref(6, out);
  matmul_xwt(gathered.view(), w.view(), bias.view(), ref.view(), false);
  matmul_xwt(x, w.view(), bias.view(), y, false);
  for (i64 r = 0; r < 10; ++r) {
    const auto it = std::find(expected_rows.begin(), expected_rows.end(), r);
    for (i64 c = 0; c < out; ++c) {
      if (it == expected_rows.end()) {
        EXPECT_EQ(ybuf.at(r, c), 42.0f) << "row " << r << " is outside the chunk";
      } else {
        EXPECT_EQ(ybuf.at(r, c), ref.at(it - expected_rows.begin(), c)) << "row " << r;
      }
    }
  }
  matmul_xwt(x, w.view(), bias.view(), y, true);  // y = y + (x w^T + b) = 2 (x w^T + b)
  for (i64 r = 0; r < 6; ++r) {
    for (i64 c = 0; c < out; ++c) {
      EXPECT_FLOAT_EQ(ybuf.at(expected_rows[static_cast<std::size_t>(r)], c), 2.0f * ref.at(r, c));
    }
  }
}

// ---- GEMMs ----------------------------------------------------------------------------------

// The four GEMMs on a 2x3 case small enough to compute by hand.
TEST(RefKernelsMatmul, HandComputedSmallCase) {
  Mat x(2, 3), w(2, 3), b(1, 2), y(2, 2);
  x.v = {1, 2, 3, 4, 5, 6};
  w.v = {1, 0, -1, 2, 1, 0};
  b.v = {0.5f, -1};
  // y = x w^T + b: row0 = [1-3, 2+2] + b = [-1.5, 3]; row1 = [4-6, 8+5] + b = [-1.5, 12].
  matmul_xwt(x.view(), w.view(), b.view(), y.view(), false);
  EXPECT_EQ(y.v, (std::vector<float>{-1.5f, 3, -1.5f, 12}));
  // Without bias, accumulating onto y: [-1.5-2, 3+4, -1.5-2, 12+13] = [-3.5, 7, -3.5, 25].
  matmul_xwt(x.view(), w.view(), std::nullopt, y.view(), true);
  EXPECT_EQ(y.v, (std::vector<float>{-3.5f, 7, -3.5f, 25}));

  Mat dy(2, 2), dx(2, 3), dw(2, 3), db(1, 2);
  dy.v = {1, 2, 3, -1};
  // dx = dy w: row0 = 1*[1,0,-1] + 2*[2,1,0] = [5,2,-1]; row1 = 3*[1,0,-1] - [2,1,0] = [1,-1,-3].
  matmul_xw(dy.view(), w.view(), dx.view(), false);
  EXPECT_EQ(dx.v, (std::vector<float>{5, 2, -1, 1, -1, -3}));
  // dw = dy^T x: row0 = 1*[1,2,3] + 3*[4,5,6] = [13,17,21]; row1 = 2*[1,2,3] - [4,5,6] = [-2,-1,0].
  matmul_dw(dy.view(), x.view(), dw.view(), false);
  EXPECT_EQ(dw.v, (std::vector<float>{13, 17, 21, -2, -1, 0}));
  matmul_dw(dy.view(), x.view(), dw.view(), true);  // accumulate doubles it
  EXPECT_EQ(dw.v, (std::vector<float>{26, 34, 42, -4, -2, 0}));
  // db = column sums of dy = [1+3, 2-1] = [4, 1]; accumulating onto [1, 1] gives [5, 2].
  bias_grad(dy.view(), db.view(), false);
  EXPECT_EQ(db.v, (std::vector<float>{4, 1}));
  db.v = {1, 1};
  bias_grad(dy.view(), db.view(), true);
  EXPECT_EQ(db.v, (std::vector<float>{5, 2}));
}

// matmul_xw, matmul_dw and bias_grad are the gradients of matmul_xwt (finite differences, 7x13 -> 5).
TEST(RefKernelsMatmul, GradientsMatchFiniteDifferences) {
  std::mt19937 rng(2);
  Mat x = random_mat(7, 13, rng), w = random_mat(5, 13, rng), b = random_mat(1, 5, rng), r = random_mat(7, 5, rng);
  Mat y(7, 5);
  const auto loss = [&] {
    matmul_xwt(x.view(), w.view(), b.view(), y.view(), false);
    return dot(y, r);
  };
  Mat dx(7, 13), dw(5, 13), db(1, 5);
  matmul_xw(r.view(), w.view(), dx.view(), false);
  matmul_dw(r.view(), x.view(), dw.view(), false);
  bias_grad(r.view(), db.view(), false);
  expect_close(numeric_grad(x, loss), dx.v, 1e-4, "dx");
  expect_close(numeric_grad(w, loss), dw.v, 1e-4, "dw");
  expect_close(numeric_grad(b, loss), db.v, 1e-4, "db");
}

// ---- RMSNorm --------------------------------------------------------------------------------

// x = [3, 4]: mean(x^2) = 12.5, rstd = 1/sqrt(12.5 + eps); y = x * rstd * (w + offset).
TEST(RefKernelsRmsNorm, ForwardHandComputedAndApplyAgrees) {
  Mat x(1, 2), w(1, 2), y(1, 2), rstd(1, 1), y2(1, 2);
  x.v = {3, 4};
  w.v = {2, -1};
  const float eps = 1e-6f;
  const float rs = 1.0f / std::sqrt(12.5f + eps);  // 0.28284...
  rmsnorm_forward(x.view(), w.view(), eps, 0.0f, y.view(), rstd.view());
  EXPECT_FLOAT_EQ(rstd.v[0], rs);
  EXPECT_FLOAT_EQ(y.v[0], 3 * rs * 2);   // 1.697
  EXPECT_FLOAT_EQ(y.v[1], 4 * rs * -1);  // -1.131
  // Gemma's offset 1: weights act as [3, 0].
  rmsnorm_forward(x.view(), w.view(), eps, 1.0f, y.view(), rstd.view());
  EXPECT_FLOAT_EQ(y.v[0], 3 * rs * 3);
  EXPECT_FLOAT_EQ(y.v[1], 0.0f);
  rmsnorm_apply(x.view(), rstd.view(), w.view(), 1.0f, y2.view());
  EXPECT_EQ(y.v, y2.v);
}

// dx (plus the residual) and dw (overwritten and accumulated) match finite differences, offsets 0 and 1.
TEST(RefKernelsRmsNorm, BackwardMatchesFiniteDifferences) {
  for (const float offset : {0.0f, 1.0f}) {
    std::mt19937 rng(3);
    Mat x = random_mat(7, 13, rng), r = random_mat(7, 13, rng), residual = random_mat(7, 13, rng);
    Mat w = random_mat(1, 13, rng, offset == 0.0f ? 0.5f : -0.5f, offset == 0.0f ? 1.5f : 0.5f);
    Mat y(7, 13), rstd(7, 1);
    const float eps = 1e-5f;
    const auto loss = [&] {
      rmsnorm_forward(x.view(), w.view(), eps, offset, y.view(), rstd.view());
      return dot(y, r);
    };
    loss();  // rstd of the unperturbed x
    Mat dx(7, 13), dw(1, 13, 0.5f), dw_plain(1, 13, 7.0f);
    rmsnorm_backward(r.view(), x.view(), rstd.view(), w.view(), offset, residual.view(), dx.view(), dw.view(), true);
    rmsnorm_backward(r.view(), x.view(), rstd.view(), w.view(), offset, std::nullopt, y.view(), dw_plain.view(),
                     false);
    std::vector<double> dx_expected = numeric_grad(x, loss);
    for (std::size_t i = 0; i < dx_expected.size(); ++i) dx_expected[i] += residual.v[i];
    const std::string tag = "offset " + std::to_string(offset);
    expect_close(dx_expected, dx.v, 1e-3, "dx + residual, " + tag);
    const std::vector<double> dw_expected = numeric_grad(w, loss);
    expect_close(dw_expected, dw_plain.v, 1e-3, "dw, " + tag);
    std::vector<double> dw_acc_expected = dw_expected;
    for (double& d : dw_acc_expected) d += 0.5;
    expect_close(dw_acc_expected, dw.v, 1e-3, "dw accumulated onto 0.5, " + tag);
  }
}

// ---- RoPE -----------------------------------------------------------------------------------

// Rotation angle of frequency i at position 1, read back from a row whose first halves are 1, second 0:
// rope gives (cos f, sin f), so atan2 recovers f = inv_freq[i].
std::vector<double> measured_inv_freq(const Rope& rp, i64 head_dim, i64 seq_len) {
  Mat buf(2, head_dim);
  for (i64 i = 0; i < head_dim / 2; ++i) buf.at(1, i) = 1.0f;
  View row = buf.view();
  row.positions = 1;
  row.seq_stride = 2;
  row.first = 1;  // one row at position 1
  rope(row, head_dim, rp, seq_len, false);
  std::vector<double> f;
  for (i64 i = 0; i < head_dim / 2; ++i) f.push_back(std::atan2(buf.at(1, i + head_dim / 2), buf.at(1, i)));
  return f;
}

// Position 0 is the identity, and rope then inverse rope restores x (3 heads of 6, positions 1..3 of a chunk).
TEST(RefKernelsRope, PositionZeroIsIdentityAndInverseRestores) {
  std::mt19937 rng(4);
  const Rope rp{};
  Mat x = random_mat(10, 18, rng);
  const Mat original = x;
  View first_row = x.view();
  first_row.positions = 1;  // buffer row 0, position 0
  rope(first_row, 6, rp, 10, false);
  EXPECT_EQ(x.v, original.v);

  View chunk = x.view();
  chunk.seqs = 2;
  chunk.positions = 3;
  chunk.seq_stride = 5;
  chunk.first = 1;
  rope(chunk, 6, rp, 10, false);
  EXPECT_NE(x.at(1, 0), original.at(1, 0));  // row 1 moved (position 1)
  EXPECT_EQ(x.at(5, 0), original.at(5, 0));  // row 5 is not in the chunk
  rope(chunk, 6, rp, 10, true);
  for (std::size_t i = 0; i < x.v.size(); ++i) EXPECT_NEAR(x.v[i], original.v[i], 1e-6f) << i;
}

// A Ulysses rank holds positions [first_position, ...) of each sequence at rows 0, 1, ... of
// its buffer: rotating its 4 rows with first_position 5 gives exactly what rotating rows 5..8 of
// the whole sequence gives (3 heads of 6, two sequences of 9 positions).
TEST(RefKernelsRope, FirstPositionShiftsTheAngles) {
  std::mt19937 rng(11);
  Rope rp{};
  rp.theta = 500.0;
  Mat whole = random_mat(18, 18, rng);
  Mat share(8, 18);
  for (i64 b = 0; b < 2; ++b) {
    for (i64 s = 0; s < 4; ++s) {
      for (i64 c = 0; c < 18; ++c) share.at(b * 4 + s, c) = whole.at(b * 9 + 5 + s, c);
    }
  }
  Mat at_zero = share;  // the same rows rotated as if they were positions 0..3
  View zero = at_zero.view();
  zero.seqs = 2;
  zero.positions = 4;
  zero.seq_stride = 4;
  rope(zero, 6, rp, 36, false);
  View all = whole.view();
  all.seqs = 2;
  all.positions = 9;
  all.seq_stride = 9;
  rope(all, 6, rp, 36, false);
  View mine = share.view();
  mine.seqs = 2;
  mine.positions = 4;
  mine.seq_stride = 4;
  rp.first_position = 5;
  rope(mine, 6, rp, 36, false);
  for (i64 b = 0; b < 2; ++b) {
    for (i64 s = 0; s < 4; ++s) {
      for (i64 c = 0; c < 18; ++c) EXPECT_EQ(share.at(b * 4 + s, c), whole.at(b * 9 + 5 + s, c)) << b << " " << s << " " << c;
    }
  }
  EXPECT_NE(share.at(1, 0), at_zero.at(1, 0));  // first_position moved the angles
}

// The backward (inverse rotation of dy) matches finite differences of sum(rope(x) * R).
TEST(RefKernelsRope, InverseIsTheGradient) {
  std::mt19937 rng(5);
  const Rope rp{.theta = 100.0};
  Mat x = random_mat(11, 18, rng), r = random_mat(11, 18, rng), y(11, 18);
  const auto positions = [](View v) {
    v.seqs = 1;
    v.positions = 11;
    v.first = 0;
    return v;
  };
  const auto loss = [&] {
    y.v = x.v;
    rope(positions(y.view()), 6, rp, 11, false);
    return dot(y, r);
  };
  Mat dx = r;
  rope(positions(dx.view()), 6, rp, 11, true);
  expect_close(numeric_grad(x, loss), dx.v, 1e-3, "dx");
}

// Llama 3 scaling (theta 5e5, factor 8, low 1, high 4, original 8192) against transformers' formula.
TEST(RefKernelsRope, Llama3ScalingMatchesFormula) {
  const Rope rp{.theta = 500000.0, .scaling = RopeScaling::llama3, .factor = 8.0, .low_freq_factor = 1.0, .high_freq_factor = 4.0,
                .original_max_position_embeddings = 8192, .max_position_embeddings = 131072};
  const i64 hd = 128;
  const std::vector<double> f = measured_inv_freq(rp, hd, 4096);
  // Hand values: i = 0: 1 (wavelength 2 pi < 8192/4 = 2048, unchanged).
  EXPECT_NEAR(f[0], 1.0, 1e-6);
  // i = 31: 5e5^(-62/128) = 1.73605e-3, wavelength 3619.2 in [2048, 8192]: smooth = (8192/3619.2 - 1)/3
  // = 0.42115, inv = (1 - 0.42115) * 1.73605e-3 / 8 + 0.42115 * 1.73605e-3 = 8.5675e-4.
  EXPECT_NEAR(f[31] / 8.567514129196321e-4, 1.0, 1e-5);
  // i = 63: 5e5^(-126/128) = 2.45514e-6, wavelength 2.56e6 > 8192: divided by 8 = 3.06893e-7.
  EXPECT_NEAR(f[63] / 3.068925988914511e-7, 1.0, 1e-5);
  // Every frequency against the formula, recomputed here.
  for (i64 i = 0; i < hd / 2; ++i) {
    const double inv = std::pow(500000.0, -2.0 * static_cast<double>(i) / 128.0);
    const double wavelen = 2.0 * std::numbers::pi / inv;
    double expected = inv;
    if (wavelen > 8192.0) {
      expected = inv / 8.0;
    } else if (wavelen >= 2048.0) {
      const double smooth = (8192.0 / wavelen - 1.0) / (4.0 - 1.0);
      expected = (1.0 - smooth) * inv / 8.0 + smooth * inv;
    }
    EXPECT_NEAR(f[static_cast<std::size_t>(i)] / expected, 1.0, 1e-5) << "frequency " << i;
  }
}

// Linear divides every frequency by the factor; dynamic is none up to max_position_embeddings and then
// raises the base to theta * (factor * len / max - (factor - 1))^(hd / (hd - 2)).
TEST(RefKernelsRope, LinearAndDynamicScaling) {
  const i64 hd = 10;
  const std::vector<double> plain = measured_inv_freq(Rope{.theta = 10000.0}, hd, 64);
  const std::vector<double> linear = measured_inv_freq(Rope{.theta = 10000.0, .scaling = RopeScaling::linear, .factor = 4.0}, hd, 64);
  const Rope dyn{.theta = 10000.0, .scaling = RopeScaling::dynamic, .factor = 2.0, .max_position_embeddings = 64};
  const std::vector<double> dyn_short = measured_inv_freq(dyn, hd, 64);
  const std::vector<double> dyn_long = measured_inv_freq(dyn, hd, 128);
  // Long: base = 1e4 * (2 * 128/64 - 1)^(10/8) = 1e4 * 3^1.25 = 39482.2.
  const double base = 10000.0 * std::pow(3.0, 1.25);
  for (std::size_t i = 0; i < plain.size(); ++i) {
    const double inv = std::pow(10000.0, -2.0 * static_cast<double>(i) / 10.0);
    EXPECT_NEAR(plain[i] / inv, 1.0, 1e-5) << i;
    EXPECT_NEAR(linear[i] / (inv / 4.0), 1.0, 1e-5) << i;
    EXPECT_NEAR(dyn_short[i] / inv, 1.0, 1e-5) << i;
    EXPECT_NEAR(dyn_long[i] / std::pow(base, -2.0 * static_cast<double>(i) / 10.0), 1.0, 1e-5) << i;
  }
}

// ---- Attention ------------------------------------------------------------------------------

struct AttnInputs {
  Mat q, k, v;
  AttnInputs(const AttentionShape& s, std::mt19937& rng, float range)
      : q(random_mat(s.batch * s.seq, s.heads * s.head_dim, rng, -range, range)),
        k(random_mat(s.batch * s.seq, s.kv_heads * s.head_dim, rng, -range, range)),
        v(random_mat(s.batch * s.seq, s.kv_heads * s.head_dim, rng, -1.0f, 1.0f)) {}
};

i64 q_rows(const AttentionShape& s) { return s.batch * s.seq; }
i64 stat_rows(const AttentionShape& s) { return s.batch * s.heads * s.seq; }

bool sees(const AttentionShape& s, i64 i, i64 j) { return j <= i && (s.window == 0 || j > i - s.window); }

/// Naive attention in double: o and lse.
void naive_attention(const AttentionShape& s, const AttnInputs& in, std::vector<double>& o, std::vector<double>& lse) {
  o.assign(static_cast<std::size_t>(q_rows(s) * s.heads * s.head_dim), 0.0);
  lse.assign(static_cast<std::size_t>(stat_rows(s)), 0.0);
  const i64 group = s.heads / s.kv_heads;
  for (i64 b = 0; b < s.batch; ++b) {
    for (i64 h = 0; h < s.heads; ++h) {
      const i64 kvh = h / group;
      for (i64 i = 0; i < s.seq; ++i) {
        std::vector<double> score(static_cast<std::size_t>(s.seq), -std::numeric_limits<double>::infinity());
        double mx = -std::numeric_limits<double>::infinity();
        for (i64 j = 0; j < s.seq; ++j) {
          if (!sees(s, i, j)) continue;
          double d = 0.0;
          for (i64 e = 0; e < s.head_dim; ++e) {
            d += static_cast<double>(in.q.at(b * s.seq + i, h * s.head_dim + e)) *
                 static_cast<double>(in.k.at(b * s.seq + j, kvh * s.head_dim + e));
          }
          d *= static_cast<double>(s.scale);
          if (s.softcap > 0.0f) d = s.softcap * std::tanh(d / s.softcap);
          score[static_cast<std::size_t>(j)] = d;
          mx = std::max(mx, d);
        }
        double sum = 0.0;
        for (double sc : score) sum += std::exp(sc - mx);
        lse[static_cast<std::size_t>((b * s.heads + h) * s.seq + i)] = mx + std::log(sum);
        for (i64 j = 0; j < s.seq; ++j) {
          const double p = std::exp(score[static_cast<std::size_t>(j)] - mx) / sum;
          for (i64 e = 0; e < s.head_dim; ++e) {
            o[static_cast<std::size_t>((b * s.seq + i) * s.heads * s.head_dim + h * s.head_dim + e)] +=
                p * static_cast<double>(in.v.at(b * s.seq + j, kvh * s.head_dim + e));
          }
        }
      }
    }
  }
}

/// The eager chain's forward: scores, probs, o.
struct Eager {
  Mat scores, probs, o;
  explicit Eager(const AttentionShape& s)
      : scores(stat_rows(s), s.seq), probs(stat_rows(s), s.seq), o(q_rows(s), s.heads * s.head_dim) {}
  void forward(const AttentionShape& s, AttnInputs& in) {
    eager_scores(s, in.q.view(), in.k.view(), scores.view());
    eager_softmax(scores.view(), probs.view());
    eager_pv(s, probs.view(), in.v.view(), o.view());
  }
};

/// The eager chain's backward from dout: dq, dk, dv.
void eager_backward(const AttentionShape& s, AttnInputs& in, Eager& fwd, Mat& dout, Mat& dq, Mat& dk, Mat& dv) {
  Mat dprobs(stat_rows(s), s.seq), dscores(stat_rows(s), s.seq);
  eager_dprobs(s, dout.view(), in.v.view(), dprobs.view());
  eager_dv(s, fwd.probs.view(), dout.view(), dv.view());
  eager_softmax_backward(fwd.probs.view(), dprobs.view(), dscores.view());
  eager_dq(s, dscores.view(), in.k.view(), dq.view());
  eager_dk(s, dscores.view(), in.q.view(), dk.view());
}

// Blockwise attention equals the eager chain (o) and lse is the log-sum-exp of the masked scores
// (batch 2, GQA 4/2 and 3/1, with and without a window).
TEST(RefKernelsAttention, ForwardMatchesEagerChain) {
  const std::vector<AttentionShape> shapes{
      {.batch = 2, .seq = 11, .heads = 4, .kv_heads = 2, .head_dim = 6, .scale = 0.4f},
      {.batch = 2, .seq = 11, .heads = 3, .kv_heads = 1, .head_dim = 10, .scale = 0.3f, .window = 4},
  };
  for (const AttentionShape& s : shapes) {
    std::mt19937 rng(6);
    AttnInputs in(s, rng, 1.5f);
    Mat o(q_rows(s), s.heads * s.head_dim), lse(stat_rows(s), 1);
    attention_forward(s, in.q.view(), in.k.view(), in.v.view(), o.view(), lse.view());
    Eager eager(s);
    eager.forward(s, in);
    expect_close(eager.o, o, 1e-5, "o vs eager, window " + std::to_string(s.window));
    std::vector<double> expected_lse;
    for (i64 r = 0; r < stat_rows(s); ++r) {
      double mx = -std::numeric_limits<double>::infinity(), sum = 0.0;
      for (i64 j = 0; j < s.seq; ++j) mx = std::max(mx, static_cast<double>(eager.scores.at(r, j)));
      for (i64 j = 0; j < s.seq; ++j) sum += std::exp(static_cast<double>(eager.scores.at(r, j)) - mx);
      expected_lse.push_back(mx + std::log(sum));
    }
    expect_close(expected_lse, lse.v, 1e-5, "lse vs log-sum-exp of the scores");
  }
}

// With soft-capping, windows and seq 131 (blocks of 64 keys: 64 + 64 + 3) attention equals a naive
// double-precision reference.
TEST(RefKernelsAttention, ForwardMatchesNaiveDoubleAcrossBlocks) {
  const std::vector<AttentionShape> shapes{
      {.batch = 1, .seq = 131, .heads = 3, .kv_heads = 1, .head_dim = 10, .scale = 0.5f, .softcap = 2.0f},
      {.batch = 1, .seq = 131, .heads = 3, .kv_heads = 1, .head_dim = 10, .scale = 0.5f, .softcap = 2.0f,
       .window = 70},
      {.batch = 2, .seq = 67, .heads = 4, .kv_heads = 2, .head_dim = 6, .scale = 0.7f, .window = 66},
  };
  for (const AttentionShape& s : shapes) {
    std::mt19937 rng(7);
    AttnInputs in(s, rng, 1.5f);
    Mat o(q_rows(s), s.heads * s.head_dim), lse(stat_rows(s), 1);
    attention_forward(s, in.q.view(), in.k.view(), in.v.view(), o.view(), lse.view());
    std::vector<double> o_ref, lse_ref;
    naive_attention(s, in, o_ref, lse_ref);
    const std::string tag = "seq " + std::to_string(s.seq) + " window " + std::to_string(s.window);
    expect_close(o_ref, o.v, 2e-5, "o, " + tag);
    expect_close(lse_ref, lse.v, 2e-5, "lse, " + tag);
  }
}

// dq, dk, dv match finite differences of sum(o * R): causal GQA with batch 2, and window + softcap;
// delta is rowsum(dout * o).
TEST(RefKernelsAttention, BackwardMatchesFiniteDifferences) {
  const std::vector<AttentionShape> shapes{
      {.batch = 2, .seq = 11, .heads = 4, .kv_heads = 2, .head_dim = 6, .scale = 0.4f},
      {.batch = 1, .seq = 11, .heads = 3, .kv_heads = 1, .head_dim = 10, .scale = 0.3f, .softcap = 1.5f,
       .window = 4},
      {.batch = 2, .seq = 9, .heads = 4, .kv_heads = 2, .head_dim = 6, .scale = 0.5f, .softcap = 2.0f,
       .window = 3},
  };
  for (const AttentionShape& s : shapes) {
    std::mt19937 rng(8);
    AttnInputs in(s, rng, 1.5f);
    Mat r = random_mat(q_rows(s), s.heads * s.head_dim, rng);
    Mat o(q_rows(s), s.heads * s.head_dim), lse(stat_rows(s), 1);
    const auto loss = [&] {
      attention_forward(s, in.q.view(), in.k.view(), in.v.view(), o.view(), lse.view());
      return dot(o, r);
    };
    loss();
    Mat dq(q_rows(s), s.heads * s.head_dim), dk(q_rows(s), s.kv_heads * s.head_dim);
    Mat dv(q_rows(s), s.kv_heads * s.head_dim), dq_accum(q_rows(s), s.heads * s.head_dim, 99.0f);
    Mat delta(stat_rows(s), 1, 99.0f);
    attention_backward(s, in.q.view(), in.k.view(), in.v.view(), o.view(), lse.view(), r.view(), dq.view(),
                       dk.view(), dv.view(), dq_accum.view(), delta.view());
    const std::string tag = "heads " + std::to_string(s.heads) + "/" + std::to_string(s.kv_heads) + " window " +
                            std::to_string(s.window) + " softcap " + std::to_string(s.softcap);
    std::vector<double> expected_delta;
    for (i64 b = 0; b < s.batch; ++b) {
      for (i64 h = 0; h < s.heads; ++h) {
        for (i64 i = 0; i < s.seq; ++i) {
          double sum = 0.0;
          for (i64 e = 0; e < s.head_dim; ++e) {
            sum += static_cast<double>(r.at(b * s.seq + i, h * s.head_dim + e)) *
                   static_cast<double>(o.at(b * s.seq + i, h * s.head_dim + e));
          }
          expected_delta.push_back(sum);
        }
      }
    }
    expect_close(expected_delta, delta.v, 1e-5, "delta, " + tag);
    EXPECT_EQ(dq_accum.v, dq.v) << "dq is the fp32 accumulator, " << tag;
    expect_close(numeric_grad(in.q, loss), dq.v, 1e-3, "dq, " + tag);
    expect_close(numeric_grad(in.k, loss), dk.v, 1e-3, "dk, " + tag);
    expect_close(numeric_grad(in.v, loss), dv.v, 1e-3, "dv, " + tag);
  }
}

// At seq 131 (three key blocks) the blockwise backward equals the eager chain's backward.
TEST(RefKernelsAttention, BackwardMatchesEagerAcrossBlocks) {
  for (const i64 window : {i64{0}, i64{70}}) {
    const AttentionShape s{.batch = 1, .seq = 131, .heads = 3, .kv_heads = 1, .head_dim = 10, .scale = 0.5f,
                           .window = window};
    std::mt19937 rng(9);
    AttnInputs in(s, rng, 1.5f);
    Mat dout = random_mat(q_rows(s), s.heads * s.head_dim, rng);
    Mat o(q_rows(s), s.heads * s.head_dim), lse(stat_rows(s), 1);
    attention_forward(s, in.q.view(), in.k.view(), in.v.view(), o.view(), lse.view());
    Mat dq(q_rows(s), s.heads * s.head_dim), dk(q_rows(s), s.head_dim), dv(q_rows(s), s.head_dim);
    Mat dq_accum(q_rows(s), s.heads * s.head_dim), delta(stat_rows(s), 1);
    attention_backward(s, in.q.view(), in.k.view(), in.v.view(), o.view(), lse.view(), dout.view(), dq.view(),
                       dk.view(), dv.view(), dq_accum.view(), delta.view());
    Eager eager(s);
    eager.forward(s, in);
    Mat edq(q_rows(s), s.heads * s.head_dim), edk(q_rows(s), s.head_dim), edv(q_rows(s), s.head_dim);
    eager_backward(s, in, eager, dout, edq, edk, edv);
    const std::string tag = "window " + std::to_string(window);
    expect_close(edq, dq, 1e-5, "dq, " + tag);
    expect_close(edk, dk, 1e-5, "dk, " + tag);
    expect_close(edv, dv, 1e-5, "dv, " + tag);
  }
}

// Context parallelism: a rank holds queries [first, first + n) of each sequence and every key.
// Three ranks of 8, 7 and 8 positions of 23 (batch 2, GQA 4/2, soft-capped; without and with a
// window of 9): each rank's o, lse and dq are the whole sequence's rows, and the ranks' dk, dv
// add up to the whole sequence's (each holds its queries' share).
TEST(RefKernelsAttention, QueriesAtAShareOfThePositionsAreThoseRowsOfTheWhole) {
  for (const i64 window : {i64{0}, i64{9}}) {
    const AttentionShape s{.batch = 2, .seq = 23, .heads = 4, .kv_heads = 2, .head_dim = 6, .scale = 0.5f,
                           .softcap = 1.5f, .window = window};
    std::mt19937 rng(12);
    AttnInputs in(s, rng, 1.5f);
    const i64 qc = s.heads * s.head_dim, kvc = s.kv_heads * s.head_dim;
    Mat dout = random_mat(q_rows(s), qc, rng);
    Mat o(q_rows(s), qc), lse(stat_rows(s), 1), dq(q_rows(s), qc), dk(q_rows(s), kvc), dv(q_rows(s), kvc);
    Mat dq_accum(q_rows(s), qc), delta(stat_rows(s), 1);
    attention_forward(s, in.q.view(), in.k.view(), in.v.view(), o.view(), lse.view());
    attention_backward(s, in.q.view(), in.k.view(), in.v.view(), o.view(), lse.view(), dout.view(), dq.view(),
                       dk.view(), dv.view(), dq_accum.view(), delta.view());
    // Rows [first, first + n) of each sequence of x (per batch: x's rows are sequences of `seq`,
    // or of (batch, head) for the statistics).
    auto share = [](const Mat& x, i64 groups, i64 seq, i64 first, i64 n) {
      Mat out(groups * n, x.cols);
      for (i64 g = 0; g < groups; ++g) {
        for (i64 i = 0; i < n; ++i) {
          for (i64 c = 0; c < x.cols; ++c) out.at(g * n + i, c) = x.at(g * seq + first + i, c);
        }
      }
      return out;
    };
    Mat dk_sum(q_rows(s), kvc), dv_sum(q_rows(s), kvc);
    for (const auto& [first, n] : std::vector<std::pair<i64, i64>>{{0, 8}, {8, 7}, {15, 8}}) {
      AttentionShape r = s;
      r.queries = n;
      r.query_first = first;
      Mat q = share(in.q, s.batch, s.seq, first, n), d = share(dout, s.batch, s.seq, first, n);
      Mat ro(s.batch * n, qc), rlse(s.batch * s.heads * n, 1), rdq(s.batch * n, qc), rdk(q_rows(s), kvc),
          rdv(q_rows(s), kvc), racc(s.batch * n, qc), rdelta(s.batch * s.heads * n, 1);
      attention_forward(r, q.view(), in.k.view(), in.v.view(), ro.view(), rlse.view());
      attention_backward(r, q.view(), in.k.view(), in.v.view(), ro.view(), rlse.view(), d.view(), rdq.view(),
                         rdk.view(), rdv.view(), racc.view(), rdelta.view());
      const std::string tag = fmt::format("window {} queries {} from {}", window, n, first);
      expect_close(share(o, s.batch, s.seq, first, n), ro, 1e-6, "o, " + tag);
      expect_close(share(lse, s.batch * s.heads, s.seq, first, n), rlse, 1e-6, "lse, " + tag);
      expect_close(share(dq, s.batch, s.seq, first, n), rdq, 1e-5, "dq, " + tag);
      for (std::size_t e = 0; e < dk_sum.v.size(); ++e) {
        dk_sum.v[e] += rdk.v[e];
        dv_sum.v[e] += rdv.v[e];
      }
    }
    expect_close(dk, dk_sum, 1e-5, fmt::format("dk summed over the shares, window {}", window));
    expect_close(dv, dv_sum, 1e-5, fmt::format("dv summed over the shares, window {}", window));
  }
}

// The eager chain's backward (dprobs, dv, softmax_backward, dq, dk) matches finite differences of sum(o * R).
TEST(RefKernelsEager, ChainBackwardMatchesFiniteDifferences) {
  const std::vector<AttentionShape> shapes{
      {.batch = 2, .seq = 11, .heads = 4, .kv_heads = 2, .head_dim = 6, .scale = 0.4f},
      {.batch = 1, .seq = 11, .heads = 3, .kv_heads = 1, .head_dim = 10, .scale = 0.3f, .window = 4},
  };
  for (const AttentionShape& s : shapes) {
    std::mt19937 rng(10);
    AttnInputs in(s, rng, 1.5f);
    Mat r = random_mat(q_rows(s), s.heads * s.head_dim, rng);
    Eager eager(s);
    const auto loss = [&] {
      eager.forward(s, in);
      return dot(eager.o, r);
    };
    loss();
    Mat dq(q_rows(s), s.heads * s.head_dim), dk(q_rows(s), s.kv_heads * s.head_dim);
    Mat dv(q_rows(s), s.kv_heads * s.head_dim);
    eager_backward(s, in, eager, r, dq, dk, dv);
    const std::string tag = "window " + std::to_string(s.window);
    expect_close(numeric_grad(in.q, loss), dq.v, 1e-3, "dq, " + tag);
    expect_close(numeric_grad(in.k, loss), dk.v, 1e-3, "dk, " + tag);
    expect_close(numeric_grad(in.v, loss), dv.v, 1e-3, "dv, " + tag);
  }
}

// eager_softmax gives 0 where masked and rows that sum to 1; scores hold -inf where masked.
TEST(RefKernelsEager, MaskedEntriesAreMinusInfinityAndZero) {
  const AttentionShape s{.batch = 1, .seq = 5, .heads = 1, .kv_heads = 1, .head_dim = 2, .scale = 1.0f, .window = 2};
  std::mt19937 rng(11);
  AttnInputs in(s, rng, 1.0f);
  Eager eager(s);
  eager.forward(s, in);
  for (i64 i = 0; i < 5; ++i) {
    double sum = 0.0;
    for (i64 j = 0; j < 5; ++j) {
      const bool visible = j <= i && j > i - 2;  // window 2: keys i-1 and i
      EXPECT_EQ(std::isinf(eager.scores.at(i, j)), !visible) << i << "," << j;
      if (!visible) {
        EXPECT_EQ(eager.probs.at(i, j), 0.0f);
      }
      sum += eager.probs.at(i, j);
    }
    EXPECT_NEAR(sum, 1.0, 1e-6);
  }
}

// ---- MLP activation -------------------------------------------------------------------------

// silu(1) = 1/(1 + e^-1) = 0.7310586; gelu_tanh(1) = 0.5 (1 + tanh(sqrt(2/pi) (1 + 0.044715))) = 0.8411920.
TEST(RefKernelsGated, ForwardHandValues) {
  Mat g(1, 2), u(1, 2), out(1, 2);
  g.v = {1.0f, 0.0f};
  u.v = {2.0f, 5.0f};
  gated_forward(GatedActivation::swiglu, g.view(), u.view(), out.view());
  EXPECT_NEAR(out.v[0], 2 * 0.7310585786, 1e-6);
  EXPECT_EQ(out.v[1], 0.0f);
  gated_forward(GatedActivation::geglu, g.view(), u.view(), out.view());
  EXPECT_NEAR(out.v[0], 2 * 0.8411919906, 1e-6);
  EXPECT_EQ(out.v[1], 0.0f);
}

// dg and du of both activations match finite differences of sum(act(g) * u * R).
TEST(RefKernelsGated, BackwardMatchesFiniteDifferences) {
  for (const GatedActivation a : {GatedActivation::swiglu, GatedActivation::geglu}) {
    std::mt19937 rng(12);
    Mat g = random_mat(7, 13, rng, -3.0f, 3.0f), u = random_mat(7, 13, rng), r = random_mat(7, 13, rng);
    Mat out(7, 13), dg(7, 13), du(7, 13);
    const auto loss = [&] {
      gated_forward(a, g.view(), u.view(), out.view());
      return dot(out, r);
    };
    gated_backward(a, r.view(), g.view(), u.view(), dg.view(), du.view());
    const std::string tag = a == GatedActivation::swiglu ? "swiglu" : "geglu";
    expect_close(numeric_grad(g, loss, 1e-3f), dg.v, 1e-3, "dg, " + tag);
    expect_close(numeric_grad(u, loss), du.v, 1e-3, "du, " + tag);
  }
}

// ---- Quantized weights ----------------------------------------------------------------------

// One block of 64 by hand, nf4 without double quantization: absmax 0.02; 0.02 and -0.02 are the
// code's ends (15 and 0), 0.01 is nearest 0.4407 (code 12: |0.5 - 0.4407| < |0.5 - 0.5626|), 0 is
// code 7. The bytes: 32 packed, then the fp32 absmax.
TEST(RefKernelsQuantized, Nf4BlockByHand) {
  std::vector<float> w(64, 0.0f);
  w[0] = 0.02f;
  w[1] = -0.02f;
  w[2] = 0.01f;
  const Quantized q{QuantFormat::nf4, false, 1, 64};
  ASSERT_EQ(kernels::quantized_bytes(q), 32 + 4);
  std::vector<std::uint8_t> bytes(36);
  quantize(q, w.data(), bytes.data());
  EXPECT_EQ(bytes[0], (15 << 4) | 0);
  EXPECT_EQ(bytes[1], (12 << 4) | 7);
  EXPECT_EQ(bytes[2], (7 << 4) | 7);
  Mat out(1, 64);
  dequantize(q, contiguous(bytes.data(), DType::int8, 36, 1), out.view());
  EXPECT_EQ(out.v[0], 0.02f);
  EXPECT_EQ(out.v[1], -0.02f);
  EXPECT_EQ(out.v[2], kernels::quant_code(QuantFormat::nf4, 12) * 0.02f);
  EXPECT_EQ(out.v[3], 0.0f);
}

// Random N(0, 0.02) weights at sizes with a partial last block and a partial last group of
// block scales: each format's error is what its code allows (int8: half a step of the row's
// absmax / 127; 4-bit: the root-mean-square error a 16-value code leaves, under 12% of the
// weights' RMS), double quantization costs little, and the bytes are the planner's count.
TEST(RefKernelsQuantized, RoundTripErrorsAreTheCodes) {
  for (const auto& [rows, cols] : {std::pair<i64, i64>{37, 53}, std::pair<i64, i64>{129, 131}}) {
    const i64 n = rows * cols;
    std::vector<float> w(static_cast<std::size_t>(n));
    fill_normal(contiguous(w.data(), DType::fp32, n, 1), 77, 0.0, 0.02);
    double power = 0;
    for (float x : w) power += static_cast<double>(x) * x;
    for (const QuantFormat format : {QuantFormat::nf4, QuantFormat::fp4, QuantFormat::int8_rows}) {
      for (const bool dq : {false, true}) {
        const Quantized q{format, dq, rows, cols};
        std::vector<std::uint8_t> bytes(static_cast<std::size_t>(kernels::quantized_bytes(q)));
        quantize(q, w.data(), bytes.data());
        Mat out(rows, cols);
        dequantize(q, contiguous(bytes.data(), DType::int8, static_cast<i64>(bytes.size()), 1), out.view());
        double err = 0;
        for (i64 e = 0; e < n; ++e) {
          const double d = out.v[static_cast<std::size_t>(e)] - w[static_cast<std::size_t>(e)];
          err += d * d;
          if (format == QuantFormat::int8_rows) {
            float s = 0;
            for (i64 c = 0; c < cols; ++c) s = std::max(s, std::abs(w[static_cast<std::size_t>((e / cols) * cols + c)]));
            EXPECT_LE(std::abs(d), s / 254.0 * 1.0001) << e;
          }
        }
        const double relative = std::sqrt(err / power);
        EXPECT_LT(relative, format == QuantFormat::int8_rows ? 0.01 : 0.12)
            << static_cast<int>(format) << " dq " << dq << " " << rows << "x" << cols;
        EXPECT_GT(relative, 0.0);
      }
    }
  }
  // The layouts' sizes against the planner's Note [Quantized base weights] (static_memory_test
  // and lora_test hold the planner's side): 4096 x 4096 in nf4 with double quantization.
  EXPECT_EQ(kernels::quantized_bytes({QuantFormat::nf4, true, 4096, 4096}), 8'654'852);
  EXPECT_EQ(kernels::quantized_bytes({QuantFormat::int8_rows, true, 4096, 4096}), 16'793'600);
}

// ---- Elementwise ----------------------------------------------------------------------------

// add, softcap (cap tanh(x / cap)), copy (rounding to bf16) and zero.
TEST(RefKernelsElementwise, AddSoftcapCopyZero) {
  Mat a(1, 3), b(1, 3), out(1, 3);
  a.v = {1, 2, 3};
  b.v = {0.5f, -2, 10};
  add(a.view(), b.view(), out.view());
  EXPECT_EQ(out.v, (std::vector<float>{1.5f, 0, 13}));
  Mat scaled(1, 3);
  scale(out.view(), 0.25f, scaled.view());  // a LoRA branch's alpha / r
  EXPECT_EQ(scaled.v, (std::vector<float>{0.375f, 0, 3.25f}));
  scale(scaled.view(), 4.0f, scaled.view());  // in place
  EXPECT_EQ(scaled.v, out.v);
  softcap(out.view(), 2.0f);  // 2 tanh(0.75) = 1.2703, 0, 2 tanh(6.5) = 1.99999
  EXPECT_NEAR(out.v[0], 2.0 * std::tanh(0.75), 1e-6);
  EXPECT_EQ(out.v[1], 0.0f);
  EXPECT_NEAR(out.v[2], 2.0 * std::tanh(6.5), 1e-6);
  std::vector<std::uint16_t> bf(3);
  Mat third(1, 3, 1.0f / 3.0f);
  copy(third.view(), contiguous(bf.data(), DType::bf16, 1, 3));
  EXPECT_EQ(bf, (std::vector<std::uint16_t>{0x3EAB, 0x3EAB, 0x3EAB}));
  zero(out.view());
  EXPECT_EQ(out.v, (std::vector<float>{0, 0, 0}));
}

// ---- Embedding ------------------------------------------------------------------------------

// Forward gathers scaled rows; backward scatters dout * scale with accumulation (repeated tokens add up),
// matching finite differences.
TEST(RefKernelsEmbedding, ForwardAndBackward) {
  std::mt19937 rng(13);
  Mat table = random_mat(37, 6, rng), r = random_mat(7, 6, rng), out(7, 6);
  std::vector<std::int64_t> tokens{3, 0, 36, 3, 5, 3, 0};
  const View tok = contiguous(tokens.data(), DType::int64, 7, 1);
  const float scale = 2.5f;
  embedding_forward(tok, table.view(), scale, out.view());
  EXPECT_EQ(out.at(2, 4), table.at(36, 4) * scale);
  EXPECT_EQ(out.at(3, 1), table.at(3, 1) * scale);
  const auto loss = [&] {
    embedding_forward(tok, table.view(), scale, out.view());
    return dot(out, r);
  };
  Mat dtable(37, 6, 1.0f);  // accumulates onto 1
  embedding_backward(r.view(), tok, scale, dtable.view());
  std::vector<double> expected = numeric_grad(table, loss);
  for (double& d : expected) d += 1.0;
  expect_close(expected, dtable.v, 1e-4, "dtable");
  // Token 3 appears at rows 0, 3, 5: 1 + 2.5 (R0 + R3 + R5).
  EXPECT_NEAR(dtable.at(3, 2), 1.0 + 2.5 * (r.at(0, 2) + r.at(3, 2) + r.at(5, 2)), 1e-5);
  EXPECT_EQ(dtable.at(1, 0), 1.0f);  // token 1 never appears

  // With bf16 storage the scale is rounded to bf16 first: sqrt(6) = 2.449490 -> 2.453125.
  std::vector<std::uint16_t> tb(37 * 6, to_bf16(1.0f)), ob(7 * 6);
  embedding_forward(tok, contiguous(tb.data(), DType::bf16, 37, 6), std::sqrt(6.0f),
                    contiguous(ob.data(), DType::bf16, 7, 6));
  EXPECT_EQ(from_bf16(ob[0]), 2.453125f);
}

// ---- Cross-entropy --------------------------------------------------------------------------

// By hand: row0 [1,2,3] target 2: lse = log(e + e^2 + e^3) = 3.4076060, loss 0.4076060; row1 ignored
// (-100); row2 [0,0,0] target 0: lse = log 3 = 1.0986123 = loss. scale 1/2: adds 0.7531091 to 1.
TEST(RefKernelsCrossEntropy, HandComputedLossAndIgnoredRow) {
  Mat logits(3, 3), lse(3, 1), dl(3, 3, 9.0f);
  logits.v = {1, 2, 3, 5, 6, 7, 0, 0, 0};
  std::vector<std::int32_t> targets{2, -100, 0};
  float loss = 1.0f;
  cross_entropy_forward(logits.view(), contiguous(targets.data(), DType::int32, 3, 1), 0.5f, 0.0f, &loss, lse.view(),
                        dl.view());
  EXPECT_NEAR(loss, 1.0 + (0.40760596444438 + 1.0986122886681098) / 2, 1e-6);
  EXPECT_NEAR(lse.v[0], 3.40760596444438, 1e-6);
  EXPECT_NEAR(lse.v[1], 7.40760596444438, 1e-6);  // written for the ignored row too
  EXPECT_NEAR(lse.v[2], 1.0986122886681098, 1e-6);
  for (i64 c = 0; c < 3; ++c) EXPECT_EQ(dl.at(1, c), 0.0f);  // ignored row
  // Row 2: (softmax - onehot) * 0.5 = ([1/3, 1/3, 1/3] - [1, 0, 0]) / 2 = [-1/3, 1/6, 1/6].
  EXPECT_NEAR(dl.at(2, 0), -1.0 / 3.0, 1e-6);
  EXPECT_NEAR(dl.at(2, 1), 1.0 / 6.0, 1e-6);
  // Without lse and dlogits the loss is the same.
  float loss2 = 0.0f;
  cross_entropy_forward(logits.view(), contiguous(targets.data(), DType::int32, 3, 1), 0.5f, 0.0f, &loss2,
                        std::nullopt, std::nullopt);
  EXPECT_NEAR(loss2, loss - 1.0f, 1e-6);
}

// Loss is the mean of -log softmax[target] over non-ignored rows (vocab 37, 7 rows, one ignored), dlogits
// matches finite differences, and cross_entropy_backward from the kept lse gives the same dlogits.
TEST(RefKernelsCrossEntropy, LossAndGradientMatchReference) {
  std::mt19937 rng(14);
  const i64 rows = 7, vocab = 37;
  Mat logits = random_mat(rows, vocab, rng, -3.0f, 3.0f), lse(rows, 1), dl(rows, vocab), dl2(rows, vocab);
  std::vector<std::int64_t> targets{4, 36, -100, 0, 17, 4, 9};
  const View tv = contiguous(targets.data(), DType::int64, rows, 1);
  const float scale = 1.0f / 6.0f;
  float loss = 0.0f;
  cross_entropy_forward(logits.view(), tv, scale, 0.0f, &loss, lse.view(), dl.view());
  double expected = 0.0;
  for (i64 r = 0; r < rows; ++r) {
    if (targets[static_cast<std::size_t>(r)] < 0) continue;
    double sum = 0.0;
    for (i64 c = 0; c < vocab; ++c) sum += std::exp(static_cast<double>(logits.at(r, c)));
    expected -= std::log(std::exp(static_cast<double>(logits.at(r, targets[static_cast<std::size_t>(r)]))) / sum);
  }
  EXPECT_NEAR(loss, expected / 6.0, 1e-5);
  const auto loss_fn = [&] {
    float l = 0.0f;
    cross_entropy_forward(logits.view(), tv, scale, 0.0f, &l, std::nullopt, std::nullopt);
    return static_cast<double>(l);
  };
  expect_close(numeric_grad(logits, loss_fn, 2e-2f), dl.v, 2e-3, "dlogits");
  for (i64 c = 0; c < vocab; ++c) EXPECT_EQ(dl.at(2, c), 0.0f);  // ignored row
  cross_entropy_backward(logits.view(), lse.view(), tv, scale, 0.0f, dl2.view());
  EXPECT_EQ(dl.v, dl2.v);
}

// With soft-capping applied to raw logits first, dlogits (times d cap/dx = 1 - (y/cap)^2) is the
// gradient of the loss with respect to the raw logits.
TEST(RefKernelsCrossEntropy, SoftcapChainRule) {
  std::mt19937 rng(15);
  const i64 rows = 5, vocab = 37;
  const float cap = 4.0f, scale = 0.25f;
  Mat raw = random_mat(rows, vocab, rng, -6.0f, 6.0f), capped(rows, vocab), lse(rows, 1), dl(rows, vocab),
      dl2(rows, vocab);
  std::vector<std::int32_t> targets{1, 30, 2, -100, 36};
  const View tv = contiguous(targets.data(), DType::int32, rows, 1);
  const auto loss_fn = [&] {
    capped.v = raw.v;
    softcap(capped.view(), cap);
    float l = 0.0f;
    cross_entropy_forward(capped.view(), tv, scale, cap, &l, lse.view(), dl.view());
    return static_cast<double>(l);
  };
  loss_fn();
  const std::vector<float> analytic = dl.v;
  cross_entropy_backward(capped.view(), lse.view(), tv, scale, cap, dl2.view());
  EXPECT_EQ(analytic, dl2.v);
  expect_close(numeric_grad(raw, loss_fn, 2e-2f), analytic, 2e-3, "dlogits w.r.t. raw logits");
}

// ---- Optimizers -----------------------------------------------------------------------------

// One AdamW step, lr 0.1, g = [0.5, -2, 0], m = v = 0: m = 0.1 g = [0.05, -0.2, 0], v = 0.001 g^2 =
// [2.5e-4, 4e-3, 0]; bias-corrected m/0.1 = g, v/0.001 = g^2, so the step is lr * g/|g| = [0.1, -0.1, 0]
// and w = [1, 1, 1] becomes [0.9, 1.1, 1]. A second step with g = [0.5, 1, 0]: m = [0.095, -0.08, 0],
// v = [4.9975e-4, 4.996e-3, 0], bc1 = 0.19, bc2 = 0.001999: m^ = [0.5, -0.4210526], sqrt(v^) = [0.5,
// 1.5809015]; steps [0.1, -0.0266337]: w = [0.8, 1.1266337, 1].
TEST(RefKernelsOptimizer, AdamWOneAndTwoStepsByHand) {
  Mat g(1, 3), w(1, 3, 1.0f), m(1, 3), v(3, 1);  // v shaped 3 x 1: only the element count must agree
  g.v = {0.5f, -2.0f, 0.0f};
  AdamW o{.lr = 0.1f};
  adamw(o, g.view(), w.view(), m.view(), v.view(), std::nullopt);
  EXPECT_NEAR(m.v[0], 0.05, 1e-7);
  EXPECT_NEAR(m.v[1], -0.2, 1e-7);
  // v is within fp32's rounding of 1 - 0.999f = 0.00099998713 (relative 1.3e-5).
  EXPECT_NEAR(v.v[0], 2.5e-4, 2.5e-8);
  EXPECT_NEAR(v.v[1], 4e-3, 4e-7);
  EXPECT_NEAR(w.v[0], 0.9, 1e-6);
  EXPECT_NEAR(w.v[1], 1.1, 1e-6);
  EXPECT_EQ(w.v[2], 1.0f);
  g.v = {0.5f, 1.0f, 0.0f};
  o.step = 2;
  adamw(o, g.view(), w.view(), m.view(), v.view(), std::nullopt);
  EXPECT_NEAR(m.v[0], 0.095, 1e-7);
  EXPECT_NEAR(m.v[1], -0.08, 1e-7);
  EXPECT_NEAR(v.v[0], 4.9975e-4, 5e-8);
  EXPECT_NEAR(v.v[1], 4.996e-3, 5e-7);
  EXPECT_NEAR(w.v[0], 0.8, 1e-5);
  EXPECT_NEAR(w.v[1], 1.1 + 0.026633703797568475, 1e-5);
  EXPECT_EQ(w.v[2], 1.0f);
}

// Decoupled weight decay first: w = 2, lr 0.1, wd 0.1: 2 (1 - 0.01) = 1.98, then the step of 0.1: 1.88.
TEST(RefKernelsOptimizer, AdamWWeightDecay) {
  Mat g(1, 1, 0.5f), w(1, 1, 2.0f), m(1, 1), v(1, 1);
  adamw(AdamW{.lr = 0.1f, .weight_decay = 0.1f}, g.view(), w.view(), m.view(), v.view(), std::nullopt);
  EXPECT_NEAR(w.v[0], 1.88, 1e-6);
}

// With an fp32 master, the update lands on the master (1 - 0.001 = 0.999) and bf16 w receives it rounded
// (0.999 -> 1.0, bf16's neighbours of 1 being 0.99609375 and 1.0078125); after 3 steps 0.997 -> 0.99609375.
TEST(RefKernelsOptimizer, AdamWMasterCopy) {
  Mat g(1, 2, 0.5f), master(1, 2, 1.0f), m(1, 2), v(1, 2);
  std::vector<std::uint16_t> w(2, to_bf16(1.0f)), mb(2, 0), vb(2, 0);
  const View wv = contiguous(w.data(), DType::bf16, 1, 2);
  AdamW o{.lr = 1e-3f};
  adamw(o, g.view(), wv, m.view(), v.view(), master.view());
  EXPECT_NEAR(master.v[0], 0.999, 1e-6);
  EXPECT_EQ(w[0], to_bf16(master.v[0]));
  EXPECT_EQ(from_bf16(w[0]), 1.0f);
  for (o.step = 2; o.step <= 3; ++o.step) adamw(o, g.view(), wv, m.view(), v.view(), master.view());
  EXPECT_NEAR(master.v[1], 0.997, 1e-5);  // a constant gradient moves lr per step
  EXPECT_EQ(from_bf16(w[1]), 0.99609375f);
  // bf16 state views work too (stored rounded).
  std::vector<std::uint16_t> w2(2, to_bf16(1.0f));
  adamw(AdamW{.lr = 1e-3f}, g.view(), contiguous(w2.data(), DType::bf16, 1, 2),
        contiguous(mb.data(), DType::bf16, 1, 2), contiguous(vb.data(), DType::bf16, 1, 2), std::nullopt);
  EXPECT_EQ(from_bf16(mb[0]), from_bf16(to_bf16(0.05f)));
  EXPECT_EQ(from_bf16(w2[0]), 1.0f);  // without a master, 0.999 rounds back to 1: the update is lost
}

// SGD: w = 1, g = 0.5, lr 0.1, wd 0.01: 1 - 0.1 (0.5 + 0.01) = 0.949; on the master when given.
TEST(RefKernelsOptimizer, Sgd) {
  Mat g(1, 1, 0.5f), w(1, 1, 1.0f), master(1, 1, 1.0f);
  sgd(0.1f, 0.01f, g.view(), w.view(), std::nullopt);
  EXPECT_NEAR(w.v[0], 0.949, 1e-6);
  std::vector<std::uint16_t> wb(1, to_bf16(1.0f));
  sgd(0.1f, 0.01f, g.view(), contiguous(wb.data(), DType::bf16, 1, 1), master.view());
  EXPECT_NEAR(master.v[0], 0.949, 1e-6);
  EXPECT_EQ(wb[0], to_bf16(master.v[0]));
}

// ---- Invariants -----------------------------------------------------------------------------

// Shape mismatches, soft-capping in eager scores and unsupported dtypes abort with the kernel's name.
TEST(RefKernelsDeathTest, InvariantsAbort) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  Mat x(2, 3), w(2, 4), y(2, 2);
  EXPECT_DEATH(matmul_xwt(x.view(), w.view(), std::nullopt, y.view(), false), "matmul_xwt: w has 4 cols");
  const AttentionShape s{.batch = 1, .seq = 2, .heads = 1, .kv_heads = 1, .head_dim = 3, .softcap = 5.0f};
  Mat scores(2, 2);
  EXPECT_DEATH(eager_scores(s, x.view(), x.view(), scores.view()), "eager_scores: soft-capping");
  std::vector<std::uint16_t> half(6);
  EXPECT_DEATH((void)load(contiguous(half.data(), DType::fp16, 2, 3), 0, 0), "unsupported dtype fp16");
}

}  // namespace
}  // namespace mstplan::ref
