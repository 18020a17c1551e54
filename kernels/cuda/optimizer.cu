// AdamW and SGD, one parameter tensor per call (reference.h's contracts, reference.cpp's
// arithmetic). Element k of every view is its k-th element in row-major order (state may be
// shaped differently from the gradient); a grid-stride loop over k, flat views addressed without
// division. The bias corrections are computed on the host as the reference computes them, and
// every product, sum, quotient and square root is an IEEE-rounded _rn intrinsic (no FMA
// contraction), so each element follows the reference's fp32 operations one for one.
#include <cmath>
#include <stdexcept>
#include <string>

#include "kernels/cuda/device.cuh"
#include "kernels/cuda/optimizer.cuh"

namespace mstplan::cuda {
namespace {

using i64 = std::int64_t;

constexpr int kThreads = 256;

/// Buffer offset of the k-th element (row-major over the view's rows and cols).
__device__ __forceinline__ i64 flat_offset(const View& v, i64 k) {
  if (v.seqs == 1 || v.seq_stride == v.positions) return v.first * v.cols + k;
  const i64 r = k / v.cols;
  return v.buffer_row(r) * v.cols + (k - r * v.cols);
}

struct AdamWConstants {
  float lr, beta1, beta2, eps, weight_decay;
  float one_minus_beta1, one_minus_beta2;  // 1 - beta, as the reference's fp32 expression
  float lr_wd;                             // lr * weight_decay
  float bc1, bc2;                          // bias corrections
};

__global__ void __launch_bounds__(kThreads)
    adamw_kernel(AdamWConstants o, View g, View w, View m, View v, View master, bool has_master, i64 n) {
  const View pv = has_master ? master : w;
  const i64 stride = static_cast<i64>(gridDim.x) * blockDim.x;
  for (i64 k = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; k < n; k += stride) {
    const float grad = load_at(g, flat_offset(g, k));
    const i64 po = flat_offset(pv, k), mo = flat_offset(m, k), vo = flat_offset(v, k);
    float p = load_at(pv, po);
    p = __fsub_rn(p, __fmul_rn(o.lr_wd, p));  // decoupled weight decay, applied first
    const float mk = __fadd_rn(__fmul_rn(o.beta1, load_at(m, mo)), __fmul_rn(o.one_minus_beta1, grad));
    const float vk = __fadd_rn(__fmul_rn(o.beta2, load_at(v, vo)), __fmul_rn(__fmul_rn(o.one_minus_beta2, grad), grad));
    store_at(m, mo, mk);
    store_at(v, vo, vk);
    const float step = __fdiv_rn(__fmul_rn(o.lr, __fdiv_rn(mk, o.bc1)), __fadd_rn(__fsqrt_rn(__fdiv_rn(vk, o.bc2)), o.eps));
    p = __fsub_rn(p, step);
    store_at(pv, po, p);
    if (has_master) store_at(w, flat_offset(w, k), p);
  }
}

__global__ void __launch_bounds__(kThreads)
    sgd_kernel(float lr, float weight_decay, View g, View w, View master, bool has_master, i64 n) {
  const View pv = has_master ? master : w;
  const i64 stride = static_cast<i64>(gridDim.x) * blockDim.x;
  for (i64 k = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; k < n; k += stride) {
    const i64 po = flat_offset(pv, k);
    float p = load_at(pv, po);
    p = __fsub_rn(p, __fmul_rn(lr, __fadd_rn(load_at(g, flat_offset(g, k)), __fmul_rn(weight_decay, p))));
    store_at(pv, po, p);
    if (has_master) store_at(w, flat_offset(w, k), p);
  }
}

void require(bool ok, const char* kernel, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string(kernel) + ": " + what);
}

i64 elements(const View& v) { return v.seqs * v.positions * v.cols; }

bool floating(const View& v) { return v.dtype == DType::bf16 || v.dtype == DType::fp32; }

}  // namespace

Status adamw(const AdamW& o, const View& g, const View& w, const View& m, const View& v, const View* master,
             cudaStream_t stream) {
  return launch_status("adamw", [&] {
    const char* kernel = "adamw";
    const i64 n = elements(g);
    require(o.step >= 1, kernel, "step must be >= 1");
    require(elements(w) == n && elements(m) == n && elements(v) == n, kernel, "g, w, m and v differ in size");
    require(floating(g) && floating(w) && floating(m) && floating(v), kernel, "operands must be bf16 or fp32");
    if (master != nullptr) {
      require(elements(*master) == n, kernel, "master differs in size from g");
      require(master->dtype == DType::fp32, kernel, "master must be fp32");
    }
    if (n == 0) return;
    const auto t = static_cast<double>(o.step);
    AdamWConstants c{};
    c.lr = o.lr;
    c.beta1 = o.beta1;
    c.beta2 = o.beta2;
    c.eps = o.eps;
    c.weight_decay = o.weight_decay;
    c.one_minus_beta1 = 1.0f - o.beta1;
    c.one_minus_beta2 = 1.0f - o.beta2;
    c.lr_wd = o.lr * o.weight_decay;
    c.bc1 = static_cast<float>(1.0 - std::pow(static_cast<double>(o.beta1), t));
    c.bc2 = static_cast<float>(1.0 - std::pow(static_cast<double>(o.beta2), t));
    const View mv = master != nullptr ? *master : View{};
    MSTPLAN_LAUNCH(blocks_for(n, kThreads), kThreads, 0, stream, adamw_kernel)(c, g, w, m, v, mv, master != nullptr, n);
  });
}

Status sgd(float lr, float weight_decay, const View& g, const View& w, const View* master, cudaStream_t stream) {
  return launch_status("sgd", [&] {
    const char* kernel = "sgd";
    const i64 n = elements(g);
    require(elements(w) == n, kernel, "g and w differ in size");
    require(floating(g) && floating(w), kernel, "operands must be bf16 or fp32");
    if (master != nullptr) {
      require(elements(*master) == n, kernel, "master differs in size from g");
      require(master->dtype == DType::fp32, kernel, "master must be fp32");
    }
    if (n == 0) return;
    const View mv = master != nullptr ? *master : View{};
    MSTPLAN_LAUNCH(blocks_for(n, kThreads), kThreads, 0, stream, sgd_kernel)(lr, weight_decay, g, w, mv, master != nullptr, n);
  });
}

}  // namespace mstplan::cuda
