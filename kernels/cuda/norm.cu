// RMSNorm forward, apply and backward (reference.h's contracts, reference.cpp's arithmetic).
//
// One block per row (rows grid-strided over blocks): the row's sum of squares (or the backward's
// dot product) is a deterministic block reduction, then each thread writes the columns it read.
// rmsnorm_backward's dw (a sum over rows) is a separate deterministic kernel: 32 columns per
// block, 16 contiguous slices of rows summed in row order and then added slice after slice, one
// rounding on store (no atomics, whatever dw's dtype). It runs before the dx kernel so that dx may
// alias dy, x or residual.
//
// Element-wise products and sums use the _rn intrinsics so that nvcc does not contract them into
// FMAs: apply's y and the backward's dx are then the reference's operations exactly, given the
// same rstd / row dot product (whose reduction order differs from the reference's loop).
#include <stdexcept>
#include <string>

#include "kernels/cuda/device.cuh"
#include "kernels/cuda/norm.cuh"

namespace mstplan::cuda {
namespace {

using i64 = std::int64_t;

constexpr int kRowThreads = 256;
constexpr int kDwCols = 32;    // columns per dw block (one warp wide)
constexpr int kDwSlices = 16;  // row slices per dw block

// ---- element access by element offset (the row's offset computed once) ----------------------

/// Element offset of the first element of view row r.
__device__ __forceinline__ i64 row_offset(const View& v, i64 r) { return v.buffer_row(r) * v.cols; }

/// Walks the rows of a view in order without a division per row.
struct RowCursor {
  i64 off;  ///< element offset of the current row
  i64 p;    ///< its position within its group
  __device__ void init(const View& v, i64 r) {
    p = r % v.positions;
    off = row_offset(v, r);
  }
  __device__ void next(const View& v) {
    off += v.cols;
    if (++p == v.positions) {
      p = 0;
      off += (v.seq_stride - v.positions) * v.cols;
    }
  }
};

/// Sum of `v` over the block, the same value in every thread (deterministic for a fixed block
/// size). Every thread of the block must call it. Back-to-back calls need no barrier at the end:
/// the next call writes warp_sums only after this call's second barrier (warp 0 has read them
/// before it), and total only after its own first barrier (every thread has read total before).
__device__ float block_sum(float v) {
  __shared__ float warp_sums[kRowThreads / 32];
  __shared__ float total;
  for (int o = 16; o > 0; o >>= 1) v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float s = lane < kRowThreads / 32 ? warp_sums[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) s = __fadd_rn(s, __shfl_xor_sync(0xffffffffu, s, o));
    if (lane == 0) total = s;
  }
  __syncthreads();
  return total;
}

// ---- kernels ------------------------------------------------------------------------------

/// y = (x * rs) * (w + offset) for one row (the reference's rmsnorm_apply expression).
__device__ __forceinline__ void apply_row(const View& x, i64 xo, const View& w, i64 wo, float rs, float offset,
                                          const View& y, i64 yo, i64 cols) {
  for (i64 c = threadIdx.x; c < cols; c += kRowThreads) {
    store_at(y, yo + c, __fmul_rn(__fmul_rn(load_at(x, xo + c), rs), __fadd_rn(load_at(w, wo + c), offset)));
  }
}

__global__ void __launch_bounds__(kRowThreads)
    rmsnorm_forward_kernel(View x, View w, float eps, float offset, View y, View rstd) {
  const i64 rows = x.rows(), cols = x.cols;
  const i64 wo = row_offset(w, 0);
  for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
    const i64 xo = row_offset(x, r);
    float sum_sq = 0.0f;
    for (i64 c = threadIdx.x; c < cols; c += kRowThreads) {
      const float v = load_at(x, xo + c);
      sum_sq = __fadd_rn(sum_sq, __fmul_rn(v, v));
    }
    sum_sq = block_sum(sum_sq);
    const float rs = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(sum_sq, static_cast<float>(cols)), eps)));
    if (threadIdx.x == 0) store_at(rstd, row_offset(rstd, r), rs);
    apply_row(x, xo, w, wo, rs, offset, y, row_offset(y, r), cols);
  }
}

__global__ void __launch_bounds__(kRowThreads)
    rmsnorm_apply_kernel(View x, View rstd, View w, float offset, View y) {
  const i64 rows = x.rows(), cols = x.cols;
  const i64 wo = row_offset(w, 0);
  for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
    const float rs = load_at(rstd, row_offset(rstd, r));
    apply_row(x, row_offset(x, r), w, wo, rs, offset, y, row_offset(y, r), cols);
  }
}

/// dx = rs * (dxhat - xhat * mean) [+ residual], mean = sum(dxhat * xhat) / cols.
__global__ void __launch_bounds__(kRowThreads)
    rmsnorm_dx_kernel(View dy, View x, View rstd, View w, float offset, View residual, bool has_residual, View dx) {
  const i64 rows = x.rows(), cols = x.cols;
  const i64 wo = row_offset(w, 0);
  for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
    const i64 xo = row_offset(x, r), dyo = row_offset(dy, r);
    const float rs = load_at(rstd, row_offset(rstd, r));
    float dot = 0.0f;
    for (i64 c = threadIdx.x; c < cols; c += kRowThreads) {
      const float xhat = __fmul_rn(load_at(x, xo + c), rs);
      const float g = load_at(dy, dyo + c);
      dot = __fadd_rn(dot, __fmul_rn(__fmul_rn(g, __fadd_rn(load_at(w, wo + c), offset)), xhat));
    }
    dot = block_sum(dot);  // also orders every read of this row before any write of dx
    const float mean = __fdiv_rn(dot, static_cast<float>(cols));
    const i64 dxo = row_offset(dx, r);
    const i64 ro = has_residual ? row_offset(residual, r) : 0;
    for (i64 c = threadIdx.x; c < cols; c += kRowThreads) {
      const float xhat = __fmul_rn(load_at(x, xo + c), rs);
      const float dxhat = __fmul_rn(load_at(dy, dyo + c), __fadd_rn(load_at(w, wo + c), offset));
      float value = __fmul_rn(rs, __fsub_rn(dxhat, __fmul_rn(xhat, mean)));
      if (has_residual) value = __fadd_rn(value, load_at(residual, ro + c));
      store_at(dx, dxo + c, value);
    }
  }
}

/// dw[c] (+)= sum over rows of dy * (x * rs): block (kDwCols, kDwSlices); slice s sums rows
/// [s * per, (s + 1) * per) in order, then the slices are added in order; one store per column.
__global__ void __launch_bounds__(kDwCols * kDwSlices)
    rmsnorm_dw_kernel(View dy, View x, View rstd, View dw, bool accumulate) {
  __shared__ float partial[kDwSlices][kDwCols + 1];
  const i64 rows = x.rows(), cols = x.cols;
  const i64 tiles = (cols + kDwCols - 1) / kDwCols;
  const i64 per = (rows + kDwSlices - 1) / kDwSlices;
  const i64 r0 = static_cast<i64>(threadIdx.y) * per;
  const i64 r1 = r0 + per < rows ? r0 + per : rows;
  for (i64 tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const i64 c = tile * kDwCols + threadIdx.x;
    float acc = 0.0f;
    if (c < cols && r0 < r1) {
      RowCursor cdy, cx, crs;
      cdy.init(dy, r0);
      cx.init(x, r0);
      crs.init(rstd, r0);
      for (i64 r = r0; r < r1; ++r) {
        const float rs = load_at(rstd, crs.off);
        const float xhat = __fmul_rn(load_at(x, cx.off + c), rs);
        acc = __fadd_rn(acc, __fmul_rn(load_at(dy, cdy.off + c), xhat));
        cdy.next(dy);
        cx.next(x);
        crs.next(rstd);
      }
    }
    partial[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
      float value = partial[0][threadIdx.x];
      for (int s = 1; s < kDwSlices; ++s) value = __fadd_rn(value, partial[s][threadIdx.x]);
      const i64 o = row_offset(dw, 0) + c;
      if (accumulate) value = __fadd_rn(value, load_at(dw, o));
      store_at(dw, o, value);
    }
    __syncthreads();  // partial is rewritten by the next tile
  }
}

// ---- host checks ----------------------------------------------------------------------------

void require(bool ok, const char* kernel, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string(kernel) + ": " + what);
}

void check_shape(const View& a, const View& b, const char* kernel, const char* name) {
  require(a.seqs * a.positions == b.seqs * b.positions && a.cols == b.cols, kernel,
          std::string(name) + " does not have x's shape");
}

void check_vector(const View& v, std::int64_t cols, const char* kernel, const char* name) {
  require(v.seqs * v.positions == 1 && v.cols == cols, kernel, std::string(name) + " must be 1 x cols");
}

void check_rstd(const View& rstd, std::int64_t rows, const char* kernel) {
  require(rstd.seqs * rstd.positions == rows && rstd.cols == 1, kernel, "rstd must be rows x 1");
}

}  // namespace

Status rmsnorm_forward(const View& x, const View& w, float eps, float offset, const View& y, const View& rstd,
                       cudaStream_t stream) {
  return launch_status("rmsnorm_forward", [&] {
    const char* kernel = "rmsnorm_forward";
    const i64 rows = x.seqs * x.positions;
    check_vector(w, x.cols, kernel, "w");
    check_shape(y, x, kernel, "y");
    check_rstd(rstd, rows, kernel);
    require(rstd.dtype == DType::fp32, kernel, "rstd must be fp32");
    if (rows == 0 || x.cols == 0) return;
    MSTPLAN_LAUNCH(blocks_for(rows, 1), kRowThreads, 0, stream, rmsnorm_forward_kernel)(x, w, eps, offset, y, rstd);
  });
}

Status rmsnorm_apply(const View& x, const View& rstd, const View& w, float offset, const View& y, cudaStream_t stream) {
  return launch_status("rmsnorm_apply", [&] {
    const char* kernel = "rmsnorm_apply";
    const i64 rows = x.seqs * x.positions;
    check_vector(w, x.cols, kernel, "w");
    check_shape(y, x, kernel, "y");
    check_rstd(rstd, rows, kernel);
    if (rows == 0 || x.cols == 0) return;
    MSTPLAN_LAUNCH(blocks_for(rows, 1), kRowThreads, 0, stream, rmsnorm_apply_kernel)(x, rstd, w, offset, y);
  });
}

Status rmsnorm_backward(const View& dy, const View& x, const View& rstd, const View& w, float offset, const View* residual,
                        const View& dx, const View* dw, bool dw_accumulate, cudaStream_t stream) {
  return launch_status("rmsnorm_backward", [&] {
    const char* kernel = "rmsnorm_backward";
    const i64 rows = x.seqs * x.positions, cols = x.cols;
    check_shape(dy, x, kernel, "dy");
    check_shape(dx, x, kernel, "dx");
    check_rstd(rstd, rows, kernel);
    check_vector(w, cols, kernel, "w");
    if (residual != nullptr) check_shape(*residual, x, kernel, "residual");
    if (dw != nullptr) check_vector(*dw, cols, kernel, "dw");
    if (cols == 0) return;
    if (dw != nullptr) {
      // With no rows, dw is 0 (+ dw): the kernel handles rows == 0 (every slice empty).
      const dim3 block(kDwCols, kDwSlices);
      const i64 tiles = (cols + kDwCols - 1) / kDwCols;
      MSTPLAN_LAUNCH(blocks_for(tiles, 1), block, 0, stream, rmsnorm_dw_kernel)(dy, x, rstd, *dw, dw_accumulate);
    }
    if (rows == 0) return;
    const View res = residual != nullptr ? *residual : View{};
    MSTPLAN_LAUNCH(blocks_for(rows, 1), kRowThreads, 0, stream, rmsnorm_dx_kernel)(dy, x, rstd, w, offset, res, residual != nullptr,
                                                                        dx);
  });
}

}  // namespace mstplan::cuda
