// cuda::cross_entropy_forward / cross_entropy_backward against their reference twins: vocabularies
// 16, 515, 4099 and 256000, rows 1, 37, 129 and a chunk view (2 groups of 37 rows, 50 apart, from
// row 5; the targets one row further on, as the executor shifts them), int32 and int64 targets
// with every fifth row ignored (-100), soft-capping off and on (logits already capped), lse and
// dlogits each present or not, dlogits fp32, bf16, or written over the logits themselves. The
// outputs are pre-filled with random values and compared whole: rows outside the views must be
// left as they were.
//
// Tolerances:
//  - lse: the sum of exp(x - max) runs in another order (per-thread strided partial sums merged
//    in a tree, an online max) than the reference's loop, and expf / logf differ from std::exp /
//    std::log by an ulp or two. The relative error of such a sum of V positive terms is in
//    practice about sqrt(V) * 2^-24 (3e-5 at V = 256000), an absolute error of log(sum); checked
//    at 2e-5 + 2e-5 |lse| (lse >= log V here: 2.7 at V = 16, 12.4 at V = 256000) against the
//    exact (double) log-sum-exp of the row, not the reference's: the reference's one running
//    fp32 sum drops the part of each term below half an ulp of the sum, a bias that reaches
//    -4e-4 of lse at V = 256000 (N(0, 3) logits), above that tolerance.
//  - loss: scale times a sum of (lse - x_t) over the rows, each off by the lse error above (the
//    reference's bias included), summed in another order (one atomicAdd per row): 5e-5 of
//    max(1, |loss|).
//  - dlogits: (exp(x - lse) - onehot) * scale * dcap with the same IEEE operations; exp's ulps and
//    the lse error give a relative error of p = exp(x - lse) of a few 1e-6, so an absolute one
//    below 2e-5 * scale * p (p <= 1), plus 1e-4 of |value|; bf16 dlogits one bf16 ulp (2^-7 of
//    max(|got|, |want|)) more. In the backward lse is the reference's own, so only exp differs.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/cuda/cross_entropy.cuh"
#include "tests/cuda/cuda_test_util.h"

namespace mstplan {
namespace {

using i64 = std::int64_t;
using test::DeviceTensor;
using test::HostTensor;

constexpr double kLse = 2e-5;
constexpr double kLoss = 5e-5;
constexpr double kProb = 2e-5;
constexpr double kRel = 1e-4;
constexpr double kBf16Ulp = 1.0 / 128;
constexpr float kIgnore = -100.0f;

using test::buffer_rows;
using test::Layout;
using test::shaped;
Layout plain(i64 rows) { return test::contiguous_layout(rows); }

std::string describe(const Layout& l) {
  return "(seqs " + std::to_string(l.seqs) + " positions " + std::to_string(l.positions) + " stride " +
         std::to_string(l.seq_stride) + " first " + std::to_string(l.first) + ")";
}

/// Whole buffers: rows of `view` within abs + rel * |want| (+ one bf16 ulp for bf16), every other
/// row unchanged.
void expect_close(const HostTensor& got, const HostTensor& want, const ref::View& view, double abs, double rel,
                  const std::string& what) {
  ASSERT_EQ(got.rows, want.rows);
  ASSERT_EQ(got.cols, want.cols);
  std::vector<bool> in_view(static_cast<std::size_t>(want.rows), false);
  for (i64 r = 0; r < view.rows(); ++r) in_view[static_cast<std::size_t>(view.buffer_row(r))] = true;
  const double ulp = want.dtype == DType::bf16 ? kBf16Ulp : 0.0;
  i64 bad = 0;
  std::ostringstream first;
  for (i64 br = 0; br < want.rows; ++br) {
    const bool inside = in_view[static_cast<std::size_t>(br)];
    for (i64 c = 0; c < want.cols; ++c) {
      const double g = got.at(br, c), w = want.at(br, c);
      const double tol = abs + rel * std::fabs(w) + ulp * std::max(std::fabs(g), std::fabs(w));
      const bool ok = inside ? std::fabs(g - w) <= tol : (g == w || (std::isnan(g) && std::isnan(w)));
      if (!ok && bad++ == 0) {
        first << "buffer row " << br << " col " << c << ": got " << g << " want " << w << " tolerance " << tol
              << (inside ? "" : " (outside the view)");
      }
    }
  }
  EXPECT_EQ(bad, 0) << what << ": first mismatch at " << first.str();
}

/// Where dlogits go in a forward case.
enum class Grad { none, fp32, bf16, in_place };

struct Case {
  i64 vocab;
  Layout layout;
  float softcap;
  DType target_dtype;
  bool with_lse;
  Grad grad;
};

std::string describe(const Case& c) {
  static const char* const grads[] = {"none", "fp32", "bf16", "in place"};
  return "vocab " + std::to_string(c.vocab) + " logits " + describe(c.layout) + " softcap " +
         std::to_string(c.softcap) + (c.target_dtype == DType::int32 ? " int32" : " int64") + " targets" +
         (c.with_lse ? " lse" : "") + " dlogits " + grads[static_cast<int>(c.grad)];
}

/// log(sum(exp(x))) of buffer row r in double: the lse the kernel's is checked against.
float exact_lse(const HostTensor& logits, i64 r) {
  double top = -INFINITY;
  for (i64 c = 0; c < logits.cols; ++c) top = std::max(top, static_cast<double>(logits.at(r, c)));
  if (top == -INFINITY) return -INFINITY;
  double sum = 0.0;
  for (i64 c = 0; c < logits.cols; ++c) sum += std::exp(static_cast<double>(logits.at(r, c)) - top);
  return static_cast<float>(top + std::log(sum));
}

/// Logits (capped when softcap > 0) and targets (every fifth view row ignored) of a case; the
/// targets' view is the logits' one row further on; scale: 1 / the kept rows.
struct Inputs {
  HostTensor logits, targets;
  ref::View logits_view, targets_view;
  float scale;
};

Inputs make_inputs(const Case& c, std::uint64_t seed) {
  const i64 rows = buffer_rows(c.layout);
  Inputs in{HostTensor(DType::fp32, rows, c.vocab, seed, 3.0f),
            HostTensor(c.target_dtype, rows + 1, 1, seed + 1, 1.0f, c.vocab),
            {},
            {},
            1.0f};
  if (c.softcap > 0.0f) ref::softcap(in.logits.view(), c.softcap);
  in.logits_view = shaped(in.logits, c.layout);
  Layout shifted = c.layout;
  shifted.first += 1;
  in.targets_view = shaped(in.targets, shifted);
  i64 kept = 0;
  for (i64 r = 0; r < in.targets_view.rows(); ++r) {
    if (r % 5 == 0) {
      in.targets.set(in.targets_view.buffer_row(r), 0, kIgnore);
    } else {
      ++kept;
    }
  }
  in.scale = kept > 0 ? 1.0f / static_cast<float>(kept) : 1.0f;
  return in;
}

void check_forward(const Case& c, std::uint64_t seed) {
  const std::string what = describe(c);
  Inputs in = make_inputs(c, seed);
  const i64 rows = in.logits_view.rows();
  HostTensor lse(DType::fp32, rows, 1, seed + 2);
  const DType grad_dtype = c.grad == Grad::bf16 ? DType::bf16 : DType::fp32;
  HostTensor grad(grad_dtype, in.logits.rows, c.vocab, seed + 3);

  // The reference on copies of the host buffers (in place: on the logits copy).
  HostTensor want_logits = in.logits, want_lse = lse, want_grad = grad;
  const ref::View want_logits_v = shaped(want_logits, c.layout), want_grad_v = shaped(want_grad, c.layout);
  std::optional<ref::View> ref_lse, ref_grad;
  if (c.with_lse) ref_lse = want_lse.view();
  if (c.grad == Grad::in_place) ref_grad = want_logits_v;
  if (c.grad == Grad::fp32 || c.grad == Grad::bf16) ref_grad = want_grad_v;
  float want_loss = 0.25f;
  ref::cross_entropy_forward(want_logits_v, in.targets_view, in.scale, c.softcap, &want_loss, ref_lse, ref_grad);
  if (c.with_lse) {  // the exact lse in place of the reference's (see the header)
    for (i64 r = 0; r < rows; ++r) want_lse.set(r, 0, exact_lse(in.logits, in.logits_view.buffer_row(r)));
  }

  DeviceTensor d_logits(in.logits), d_targets(in.targets), d_lse(lse), d_grad(grad);
  void* loss_memory = nullptr;
  ASSERT_EQ(cudaMalloc(&loss_memory, sizeof(float)), cudaSuccess);
  auto* const d_loss = static_cast<float*>(loss_memory);
  const float initial = 0.25f;
  ASSERT_EQ(cudaMemcpy(d_loss, &initial, sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
  const cuda::View logits_v = d_logits.like(in.logits_view), lse_v = d_lse.view();
  const cuda::View grad_v = c.grad == Grad::in_place ? logits_v : d_grad.like(shaped(grad, c.layout));
  EXPECT_LAUNCHED(cuda::cross_entropy_forward(logits_v, d_targets.like(in.targets_view), in.scale, c.softcap, d_loss,
                              c.with_lse ? &lse_v : nullptr, c.grad != Grad::none ? &grad_v : nullptr, nullptr));
  const HostTensor got_logits = d_logits.download(), got_lse = d_lse.download(), got_grad = d_grad.download();
  float got_loss = 0.0f;
  ASSERT_EQ(cudaMemcpy(&got_loss, d_loss, sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
  cudaFree(d_loss);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess) << what;

  EXPECT_LE(std::fabs(static_cast<double>(got_loss) - want_loss),
            kLoss * std::max(1.0, std::fabs(static_cast<double>(want_loss))))
      << what << ": loss " << got_loss << " want " << want_loss;
  expect_close(got_lse, want_lse, want_lse.view(), kLse, kLse, what + " lse");
  const double grad_abs = kProb * static_cast<double>(in.scale);
  expect_close(got_logits, want_logits, want_logits_v, grad_abs, kRel, what + " logits / in-place dlogits");
  expect_close(got_grad, want_grad, want_grad_v, grad_abs, kRel, what + " dlogits");
}

TEST(CUDA_CrossEntropy, ForwardMatchesReference) {
  MSTPLAN_REQUIRE_CUDA();
  std::uint64_t seed = 1;
  bool int64_targets = false;
  const Layout chunk{2, 37, 50, 5};
  for (const i64 vocab : {i64{16}, i64{515}, i64{4099}}) {
    for (const Layout& l : {plain(1), plain(37), plain(129), chunk}) {
      for (const float softcap : {0.0f, 30.0f}) {
        int64_targets = !int64_targets;
        const DType targets = int64_targets ? DType::int64 : DType::int32;
        check_forward({vocab, l, softcap, targets, true, Grad::fp32}, seed += 10);
        check_forward({vocab, l, softcap, targets, true, Grad::none}, seed += 10);
        check_forward({vocab, l, softcap, targets, false, Grad::bf16}, seed += 10);
        check_forward({vocab, l, softcap, targets, false, Grad::in_place}, seed += 10);
      }
    }
  }
}

TEST(CUDA_CrossEntropy, LargeVocabulary) {
  MSTPLAN_REQUIRE_CUDA();
  check_forward({256000, plain(3), 30.0f, DType::int64, true, Grad::fp32}, 1000);
  check_forward({256000, {2, 2, 3, 1}, 0.0f, DType::int32, true, Grad::bf16}, 1010);
}

void check_backward(const Case& c, std::uint64_t seed) {
  const std::string what = "backward " + describe(c);
  Inputs in = make_inputs(c, seed);
  const i64 rows = in.logits_view.rows();
  // The kept lse: the reference forward's.
  HostTensor lse(DType::fp32, rows, 1, seed + 2);
  float loss = 0.0f;
  ref::cross_entropy_forward(in.logits_view, in.targets_view, in.scale, c.softcap, &loss, lse.view(), std::nullopt);

  const DType grad_dtype = c.grad == Grad::bf16 ? DType::bf16 : DType::fp32;
  HostTensor grad(grad_dtype, in.logits.rows, c.vocab, seed + 3);
  HostTensor want_logits = in.logits, want_grad = grad;
  const ref::View want_logits_v = shaped(want_logits, c.layout), want_grad_v = shaped(want_grad, c.layout);
  const ref::View ref_grad = c.grad == Grad::in_place ? want_logits_v : want_grad_v;
  ref::cross_entropy_backward(want_logits_v, lse.view(), in.targets_view, in.scale, c.softcap, ref_grad);

  DeviceTensor d_logits(in.logits), d_targets(in.targets), d_lse(lse), d_grad(grad);
  const cuda::View logits_v = d_logits.like(in.logits_view);
  const cuda::View grad_v = c.grad == Grad::in_place ? logits_v : d_grad.like(shaped(grad, c.layout));
  EXPECT_LAUNCHED(cuda::cross_entropy_backward(logits_v, d_lse.view(), d_targets.like(in.targets_view), in.scale, c.softcap, grad_v,
                               nullptr));
  const HostTensor got_logits = d_logits.download(), got_grad = d_grad.download();
  ASSERT_EQ(cudaGetLastError(), cudaSuccess) << what;
  const double grad_abs = kProb * static_cast<double>(in.scale);
  expect_close(got_logits, want_logits, want_logits_v, grad_abs, kRel, what + " logits / in-place dlogits");
  expect_close(got_grad, want_grad, want_grad_v, grad_abs, kRel, what + " dlogits");
}

TEST(CUDA_CrossEntropy, BackwardMatchesReference) {
  MSTPLAN_REQUIRE_CUDA();
  std::uint64_t seed = 2000;
  bool int64_targets = false;
  const Layout chunk{2, 37, 50, 5};
  for (const i64 vocab : {i64{16}, i64{515}, i64{4099}}) {
    for (const Layout& l : {plain(1), plain(129), chunk}) {
      for (const float softcap : {0.0f, 30.0f}) {
        int64_targets = !int64_targets;
        const DType targets = int64_targets ? DType::int64 : DType::int32;
        for (const Grad g : {Grad::fp32, Grad::bf16, Grad::in_place}) {
          check_backward({vocab, l, softcap, targets, false, g}, seed += 10);
        }
      }
    }
  }
  check_backward({256000, plain(2), 30.0f, DType::int32, false, Grad::fp32}, 3000);
}

}  // namespace
}  // namespace mstplan
