// CUDA element-wise kernels (gated activations, add, soft-capping, copy, zero) and the embedding
// against their CPU reference twins: odd sizes, contiguous views and chunk views (2 groups,
// first > 0; flat views take the kernels' grid-stride path, chunk views their warp-per-row one),
// operands of different layouts, in place, bf16 and fp32. Outputs are pre-filled with random
// values and whole buffers are compared: rows outside the views must be left as they were.
//
// Tolerances (test::max_error: |a - b| / max(1, |b|) elementwise):
//  - add, copy, zero, embedding forward, bf16 embedding backward: the same IEEE operations in the
//    same order (no FMA; the bf16 backward adds row after row as the reference does, rounding
//    after each addition): bit-exact.
//  - soft-capping: the device's tanhf is within 2 ulp where glibc's is within 1: cap * tanh differs
//    by a few 2^-24 of |b|: fp32 1e-5.
//  - gated activations: expf / tanhf as above; the GeGLU derivative's cancellations (1 + t and
//    1 - t^2 near |t| = 1) turn tanhf's 1.2e-7 absolute error into up to ~1e-6 of dact, times
//    |dout * u| up to ~15 where |dg| may stay below 1: fp32 5e-5.
//  - fp32 embedding backward: atomics add a token's rows in another order. Each order is within
//    k * 2^-24 * (largest partial sum) of the exact sum; at vocab 5 and 129 rows a token gets
//    k <= ~40 rows of N(0, 1) values (scale 1) on an N(0, 1) start, partial sums below ~16:
//    2 * 40 * 2^-24 * 16 < 1e-4 absolute (typically ~5e-6).
//  - bf16 outputs: a slightly different fp32 value may cross a rounding boundary: one bf16 ulp, at
//    most 2^-7 of max(1, |b|).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>
#include <string>
#include <vector>

#include "kernels/cuda/elementwise.cuh"
#include "tests/cuda/cuda_test_util.h"

namespace mstplan {
namespace {

using i64 = std::int64_t;
using test::DeviceTensor;
using test::HostTensor;
using test::max_error;

constexpr double kBf16Ulp = 1.0 / 128;
constexpr double kFp32Math = 1e-5;
constexpr double kFp32Activation = 5e-5;
constexpr double kFp32Atomics = 1e-4;

using test::buffer_rows;
using test::Layout;
using test::shaped;
Layout contiguous(i64 rows) { return test::contiguous_layout(rows); }

const char* name(DType d) {
  switch (d) {
    case DType::bf16: return "bf16";
    case DType::fp32: return "fp32";
    case DType::int32: return "int32";
    case DType::int64: return "int64";
    default: return "?";
  }
}

std::string describe(const Layout& l, i64 cols) {
  return "seqs " + std::to_string(l.seqs) + " positions " + std::to_string(l.positions) + " stride " +
         std::to_string(l.seq_stride) + " first " + std::to_string(l.first) + " cols " + std::to_string(cols);
}

/// Pairs of layouts with equal row counts: (inputs, outputs).
std::vector<std::pair<Layout, Layout>> layout_pairs() {
  const Layout chunk{2, 13, 40, 7};  // rows 7..19 and 47..59 of 60
  const Layout packed{2, 13, 13, 3};  // two groups back to back: flat
  return {
      {contiguous(1), contiguous(1)},   {contiguous(37), contiguous(37)}, {contiguous(129), contiguous(129)},
      {chunk, chunk},                   {chunk, contiguous(26)},          {contiguous(26), chunk},
      {packed, chunk},                  {packed, contiguous(26)},
  };
}

double tolerance(DType out, double fp32) { return out == DType::bf16 ? kBf16Ulp : fp32; }

TEST(CUDA_Elementwise, GatedForwardMatchesReference) {
  MSTPLAN_REQUIRE_CUDA();
  std::uint64_t seed = 1;
  for (const auto a : {ref::GatedActivation::swiglu, ref::GatedActivation::geglu}) {
    for (const DType dtype : {DType::bf16, DType::fp32}) {
      for (const i64 cols : {i64{1}, i64{37}, i64{129}}) {
        for (const auto& [li, lo] : layout_pairs()) {
          HostTensor g(dtype, buffer_rows(li), cols, seed++, 2.0f), u(dtype, buffer_rows(li), cols, seed++);
          HostTensor out(dtype, buffer_rows(lo), cols, seed++);
          DeviceTensor dg(g), du(u), dout(out);
          const ref::View gv = shaped(g, li), uv = shaped(u, li), ov = shaped(out, lo);
          ref::gated_forward(a, gv, uv, ov);
          EXPECT_LAUNCHED(cuda::gated_forward(static_cast<cuda::GatedActivation>(a), dg.like(gv), du.like(uv), dout.like(ov), nullptr));
          ASSERT_EQ(cudaGetLastError(), cudaSuccess);
          EXPECT_LE(max_error(dout.download(), out), tolerance(dtype, kFp32Activation))
              << (a == ref::GatedActivation::swiglu ? "swiglu " : "geglu ") << name(dtype) << " in "
              << describe(li, cols) << " out " << describe(lo, cols);
        }
      }
    }
  }
}

TEST(CUDA_Elementwise, GatedBackwardMatchesReference) {
  MSTPLAN_REQUIRE_CUDA();
  std::uint64_t seed = 1000;
  for (const auto a : {ref::GatedActivation::swiglu, ref::GatedActivation::geglu}) {
    for (const DType dtype : {DType::bf16, DType::fp32}) {
      for (const i64 cols : {i64{1}, i64{37}, i64{129}}) {
        for (const auto& [li, lo] : layout_pairs()) {
          HostTensor d(dtype, buffer_rows(li), cols, seed++), g(dtype, buffer_rows(li), cols, seed++, 2.0f);
          HostTensor u(dtype, buffer_rows(li), cols, seed++);
          HostTensor dg(dtype, buffer_rows(lo), cols, seed++), du(dtype, buffer_rows(lo), cols, seed++);
          DeviceTensor dd(d), dgin(g), du_in(u), ddg(dg), ddu(du);
          const ref::View dv = shaped(d, li), gv = shaped(g, li), uv = shaped(u, li);
          const ref::View dgv = shaped(dg, lo), duv = shaped(du, lo);
          ref::gated_backward(a, dv, gv, uv, dgv, duv);
          EXPECT_LAUNCHED(cuda::gated_backward(static_cast<cuda::GatedActivation>(a), dd.like(dv), dgin.like(gv), du_in.like(uv),
                               ddg.like(dgv), ddu.like(duv), nullptr));
          ASSERT_EQ(cudaGetLastError(), cudaSuccess);
          const std::string what = std::string(a == ref::GatedActivation::swiglu ? "swiglu " : "geglu ") +
                                   name(dtype) + " in " + describe(li, cols) + " out " + describe(lo, cols);
          EXPECT_LE(max_error(ddg.download(), dg), tolerance(dtype, kFp32Activation)) << what;
          EXPECT_LE(max_error(ddu.download(), du), tolerance(dtype, kFp32Activation)) << what;
        }
      }
    }
  }
}

// dg over g and du over u (the reference reads an element's inputs before writing it).
TEST(CUDA_Elementwise, GatedBackwardInPlace) {
  MSTPLAN_REQUIRE_CUDA();
  std::uint64_t seed = 2000;
  const Layout l{2, 13, 40, 7};
  for (const auto a : {ref::GatedActivation::swiglu, ref::GatedActivation::geglu}) {
    for (const DType dtype : {DType::bf16, DType::fp32}) {
      HostTensor d(dtype, buffer_rows(l), 129, seed++), g(dtype, buffer_rows(l), 129, seed++, 2.0f);
      HostTensor u(dtype, buffer_rows(l), 129, seed++);
      DeviceTensor dd(d), dg(g), du(u);
      const ref::View dv = shaped(d, l), gv = shaped(g, l), uv = shaped(u, l);
      ref::gated_backward(a, dv, gv, uv, gv, uv);
      EXPECT_LAUNCHED(cuda::gated_backward(static_cast<cuda::GatedActivation>(a), dd.like(dv), dg.like(gv), du.like(uv), dg.like(gv),
                           du.like(uv), nullptr));
      ASSERT_EQ(cudaGetLastError(), cudaSuccess);
      EXPECT_LE(max_error(dg.download(), g), tolerance(dtype, kFp32Activation)) << name(dtype);
      EXPECT_LE(max_error(du.download(), u), tolerance(dtype, kFp32Activation)) << name(dtype);
    }
  }
}

TEST(CUDA_Elementwise, AddMatchesReferenceExactly) {
  MSTPLAN_REQUIRE_CUDA();
  std::uint64_t seed = 3000;
  struct Types {
    DType a, b, out;
  };
  for (const Types t : {Types{DType::bf16, DType::bf16, DType::bf16}, Types{DType::fp32, DType::fp32, DType::fp32},
                        Types{DType::fp32, DType::bf16, DType::bf16}, Types{DType::bf16, DType::fp32, DType::fp32}}) {
    for (const i64 cols : {i64{1}, i64{37}, i64{129}}) {
      for (const auto& [li, lo] : layout_pairs()) {
        HostTensor a(t.a, buffer_rows(li), cols, seed++), b(t.b, buffer_rows(lo), cols, seed++);
        HostTensor out(t.out, buffer_rows(lo), cols, seed++);
        DeviceTensor da(a), db(b), dout(out);
        const ref::View av = shaped(a, li), bv = shaped(b, lo), ov = shaped(out, lo);
        ref::add(av, bv, ov);
        EXPECT_LAUNCHED(cuda::add(da.like(av), db.like(bv), dout.like(ov), nullptr));
        ASSERT_EQ(cudaGetLastError(), cudaSuccess);
        EXPECT_EQ(max_error(dout.download(), out), 0.0)
            << name(t.a) << " + " << name(t.b) << " -> " << name(t.out) << " " << describe(li, cols);
      }
    }
  }
}

// out over a (the residual stream updated in place).
TEST(CUDA_Elementwise, AddInPlace) {
  MSTPLAN_REQUIRE_CUDA();
  const Layout l{2, 13, 40, 7};
  for (const DType dtype : {DType::bf16, DType::fp32}) {
    HostTensor a(dtype, buffer_rows(l), 129, 1), b(dtype, buffer_rows(l), 129, 2);
    DeviceTensor da(a), db(b);
    const ref::View av = shaped(a, l), bv = shaped(b, l);
    ref::add(av, bv, av);
    EXPECT_LAUNCHED(cuda::add(da.like(av), db.like(bv), da.like(av), nullptr));
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    EXPECT_EQ(max_error(da.download(), a), 0.0) << name(dtype);
  }
}

// out = s x at odd widths and every layout, out of place and in place: one fp32 multiply per
// element, rounded once, as the reference does.
TEST(CUDA_Elementwise, ScaleMatchesReferenceExactly) {
  MSTPLAN_REQUIRE_CUDA();
  std::uint64_t seed = 5000;
  for (const DType dtype : {DType::bf16, DType::fp32}) {
    for (const float s : {0.5f, 2.0f, 0.3f}) {
      for (const i64 cols : {i64{1}, i64{37}, i64{129}}) {
        for (const auto& [li, lo] : layout_pairs()) {
          HostTensor x(dtype, buffer_rows(li), cols, seed++), out(dtype, buffer_rows(lo), cols, seed++);
          DeviceTensor dx(x), dout(out);
          const ref::View xv = shaped(x, li), ov = shaped(out, lo);
          ref::scale(xv, s, ov);
          EXPECT_LAUNCHED(cuda::scale(dx.like(xv), s, dout.like(ov), nullptr));
          ASSERT_EQ(cudaGetLastError(), cudaSuccess);
          EXPECT_EQ(max_error(dout.download(), out), 0.0) << name(dtype) << " " << s << " " << describe(li, cols);
        }
        const Layout l{2, 13, 40, 7};
        HostTensor y(dtype, buffer_rows(l), cols, seed++);
        DeviceTensor dy(y);
        const ref::View yv = shaped(y, l);
        ref::scale(yv, s, yv);
        EXPECT_LAUNCHED(cuda::scale(dy.like(yv), s, dy.like(yv), nullptr));
        ASSERT_EQ(cudaGetLastError(), cudaSuccess);
        EXPECT_EQ(max_error(dy.download(), y), 0.0) << "in place " << name(dtype);
      }
    }
  }
}

// A quantized base weight expanded on the device: bit-exact against the reference for every
// format, with and without double quantization, at sizes whose last block and last group of
// block scales are partial (37 x 53: 31 blocks; 129 x 131: 265 blocks, 2 groups), into bf16 and fp32.
TEST(CUDA_Dequantize, MatchesReferenceExactly) {
  MSTPLAN_REQUIRE_CUDA();
  std::uint64_t seed = 6000;
  for (const auto& [rows, cols] : {std::pair<i64, i64>{37, 53}, std::pair<i64, i64>{129, 131}, std::pair<i64, i64>{1, 1}}) {
    for (const kernels::QuantFormat format :
         {kernels::QuantFormat::nf4, kernels::QuantFormat::fp4, kernels::QuantFormat::int8_rows}) {
      for (const bool dq : {true, false}) {
        const kernels::Quantized q{format, dq, rows, cols};
        HostTensor w(DType::fp32, rows, cols, seed++, 0.02f);
        std::vector<std::uint8_t> bytes(static_cast<std::size_t>(kernels::quantized_bytes(q)));
        ref::quantize(q, reinterpret_cast<const float*>(w.bytes.data()), bytes.data());
        HostTensor packed(DType::fp32, (static_cast<i64>(bytes.size()) + 3) / 4, 1, seed++);
        std::memcpy(packed.bytes.data(), bytes.data(), bytes.size());
        const DeviceTensor dpacked(packed);
        for (const DType out_dtype : {DType::bf16, DType::fp32}) {
          HostTensor out(out_dtype, rows, cols, seed++);
          DeviceTensor dout(out);
          ref::dequantize(q, ref::contiguous(bytes.data(), DType::int8, static_cast<i64>(bytes.size()), 1), out.view());
          EXPECT_LAUNCHED(cuda::dequantize(q, dpacked.data(), dout.view(), nullptr));
          ASSERT_EQ(cudaGetLastError(), cudaSuccess);
          EXPECT_EQ(max_error(dout.download(), out), 0.0)
              << static_cast<int>(format) << " dq " << dq << " " << rows << "x" << cols << " " << name(out_dtype);
        }
      }
    }
  }
}

TEST(CUDA_Elementwise, SoftcapMatchesReference) {
  MSTPLAN_REQUIRE_CUDA();
  std::uint64_t seed = 4000;
  for (const DType dtype : {DType::bf16, DType::fp32}) {
    for (const float cap : {5.0f, 30.0f}) {
      for (const i64 cols : {i64{1}, i64{37}, i64{129}}) {
        for (const auto& pair : layout_pairs()) {
          const Layout& l = pair.second;
          HostTensor x(dtype, buffer_rows(l), cols, seed++, 20.0f);
          DeviceTensor dx(x);
          const ref::View xv = shaped(x, l);
          ref::softcap(xv, cap);
          EXPECT_LAUNCHED(cuda::softcap(dx.like(xv), cap, nullptr));
          ASSERT_EQ(cudaGetLastError(), cudaSuccess);
          EXPECT_LE(max_error(dx.download(), x), tolerance(dtype, kFp32Math))
              << name(dtype) << " cap " << cap << " " << describe(l, cols);
        }
      }
    }
  }
}

TEST(CUDA_Elementwise, CopyMatchesReferenceExactly) {
  MSTPLAN_REQUIRE_CUDA();
  std::uint64_t seed = 5000;
  for (const DType from : {DType::bf16, DType::fp32}) {
    for (const DType to : {DType::bf16, DType::fp32}) {
      for (const i64 cols : {i64{1}, i64{37}, i64{129}}) {
        for (const auto& [li, lo] : layout_pairs()) {
          HostTensor src(from, buffer_rows(li), cols, seed++), dst(to, buffer_rows(lo), cols, seed++);
          DeviceTensor dsrc(src), ddst(dst);
          const ref::View sv = shaped(src, li), dv = shaped(dst, lo);
          ref::copy(sv, dv);
          EXPECT_LAUNCHED(cuda::copy(dsrc.like(sv), ddst.like(dv), nullptr));
          ASSERT_EQ(cudaGetLastError(), cudaSuccess);
          EXPECT_EQ(max_error(ddst.download(), dst), 0.0)
              << name(from) << " -> " << name(to) << " in " << describe(li, cols) << " out " << describe(lo, cols);
        }
      }
    }
  }
}

// Integer tensors are copied bit for bit (the reference's store has no integer dtypes, so the
// expectation is built element by element).
TEST(CUDA_Elementwise, CopyIntegers) {
  MSTPLAN_REQUIRE_CUDA();
  std::uint64_t seed = 6000;
  for (const DType dtype : {DType::int32, DType::int64}) {
    for (const auto& [li, lo] : layout_pairs()) {
      HostTensor src(dtype, buffer_rows(li), 3, seed++, 1.0f, 100000), dst(dtype, buffer_rows(lo), 3, seed++, 1.0f, 7);
      DeviceTensor dsrc(src), ddst(dst);
      const ref::View sv = shaped(src, li), dv = shaped(dst, lo);
      for (i64 r = 0; r < sv.rows(); ++r) {
        for (i64 c = 0; c < 3; ++c) dst.set(dv.buffer_row(r), c, src.at(sv.buffer_row(r), c));
      }
      EXPECT_LAUNCHED(cuda::copy(dsrc.like(sv), ddst.like(dv), nullptr));
      ASSERT_EQ(cudaGetLastError(), cudaSuccess);
      EXPECT_EQ(max_error(ddst.download(), dst), 0.0) << name(dtype) << " " << describe(lo, 3);
    }
  }
}

TEST(CUDA_Elementwise, ZeroMatchesReference) {
  MSTPLAN_REQUIRE_CUDA();
  std::uint64_t seed = 7000;
  for (const DType dtype : {DType::bf16, DType::fp32, DType::int32, DType::int64}) {
    for (const i64 cols : {i64{1}, i64{37}, i64{129}}) {
      for (const auto& pair : layout_pairs()) {
        const Layout& l = pair.second;
        HostTensor x(dtype, buffer_rows(l), cols, seed++, 1.0f, dtype == DType::int32 || dtype == DType::int64 ? 9 : 0);
        DeviceTensor dx(x);
        const ref::View xv = shaped(x, l);
        for (i64 r = 0; r < xv.rows(); ++r) {
          for (i64 c = 0; c < cols; ++c) x.set(xv.buffer_row(r), c, 0.0f);
        }
        EXPECT_LAUNCHED(cuda::zero(dx.like(xv), nullptr));
        ASSERT_EQ(cudaGetLastError(), cudaSuccess);
        EXPECT_EQ(max_error(dx.download(), x), 0.0) << name(dtype) << " " << describe(l, cols);
      }
    }
  }
}

TEST(CUDA_Elementwise, EmbeddingForwardMatchesReferenceExactly) {
  MSTPLAN_REQUIRE_CUDA();
  std::uint64_t seed = 8000;
  constexpr i64 kVocab = 50;
  for (const DType index : {DType::int32, DType::int64}) {
    for (const DType dtype : {DType::bf16, DType::fp32}) {
      for (const i64 cols : {i64{1}, i64{37}, i64{129}}) {
        for (const float scale : {1.0f, std::sqrt(static_cast<float>(cols * 7))}) {  // Gemma: sqrt(d), rounded
          for (const auto& [lt, lo] : layout_pairs()) {
            HostTensor tokens(index, buffer_rows(lt), 1, seed++, 1.0f, kVocab);
            HostTensor table(dtype, kVocab, cols, seed++), out(dtype, buffer_rows(lo), cols, seed++);
            DeviceTensor dtokens(tokens), dtable(table), dout(out);
            const ref::View tv = shaped(tokens, lt), ov = shaped(out, lo);
            ref::embedding_forward(tv, table.view(), scale, ov);
            EXPECT_LAUNCHED(cuda::embedding_forward(dtokens.like(tv), dtable.view(), scale, dout.like(ov), nullptr));
            ASSERT_EQ(cudaGetLastError(), cudaSuccess);
            EXPECT_EQ(max_error(dout.download(), out), 0.0)
                << name(index) << " " << name(dtype) << " scale " << scale << " tokens " << describe(lt, 1)
                << " out " << describe(lo, cols);
          }
        }
      }
    }
  }
}

TEST(CUDA_Elementwise, EmbeddingBackwardMatchesReference) {
  MSTPLAN_REQUIRE_CUDA();
  std::uint64_t seed = 9000;
  for (const DType index : {DType::int32, DType::int64}) {
    for (const DType grad : {DType::bf16, DType::fp32}) {      // dout
      for (const DType table : {DType::bf16, DType::fp32}) {   // dtable
        for (const i64 vocab : {i64{5}, i64{1000}}) {          // many repeated tokens; mostly distinct
          for (const i64 cols : {i64{1}, i64{37}, i64{129}}) {
            for (const auto& [lt, lo] : layout_pairs()) {
              // Gemma's sqrt(d) (rounded to dout's dtype) with a bf16 table; 1 with an fp32 one,
              // which keeps its partial sums small for the tolerance below.
              const float scale = table == DType::bf16 ? std::sqrt(static_cast<float>(cols)) : 1.0f;
              HostTensor tokens(index, buffer_rows(lt), 1, seed++, 1.0f, vocab);
              HostTensor dout(grad, buffer_rows(lo), cols, seed++), dtable(table, vocab, cols, seed++);
              DeviceTensor dtokens(tokens), ddout(dout), ddtable(dtable);
              const ref::View tv = shaped(tokens, lt), ov = shaped(dout, lo);
              ref::embedding_backward(ov, tv, scale, dtable.view());
              EXPECT_LAUNCHED(cuda::embedding_backward(ddout.like(ov), dtokens.like(tv), scale, ddtable.view(), nullptr));
              ASSERT_EQ(cudaGetLastError(), cudaSuccess);
              const double err = max_error(ddtable.download(), dtable);
              const std::string what = std::string(name(index)) + " dout " + name(grad) + " dtable " + name(table) +
                                       " vocab " + std::to_string(vocab) + " tokens " + describe(lt, 1) + " dout " +
                                       describe(lo, cols);
              if (table == DType::bf16) {
                EXPECT_EQ(err, 0.0) << what;
              } else {
                EXPECT_LE(err, kFp32Atomics) << what;
              }
            }
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace mstplan
