// Eager attention, one piece at a time: reference.h's eager_* contracts.
//
// The six matrix products (scores, pv, dprobs, dv, dq, dk) are one batched tile GEMM: a block of
// 256 threads computes a 64 x 64 output tile of one (batch, head) (or (batch, kv head) for dv and
// dk, which sum over the query heads of the group), walking the reduced index in chunks of 16
// staged in shared memory (fp32); each thread accumulates a 4 x 4 micro-tile in fp32, in the
// reduced index's increasing order as the reference does. The op (a functor) says how to read the
// two operands and how to store an output element (scale, mask). softmax and its backward run a
// block per row.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/cuda/device.cuh"
#include "kernels/cuda/eager.cuh"

namespace mstplan::cuda {
namespace {

using i64 = std::int64_t;

/// Index of the first element of view row r in its buffer (View::buffer_row * cols).
__device__ __forceinline__ i64 row_start(const View& v, i64 r) {
  return ((r / v.positions) * v.seq_stride + v.first + r % v.positions) * v.cols;
}

// ---- Host-side checks ------------------------------------------------------------------------

[[noreturn]] void fail(const char* kernel, const std::string& what) {
  throw std::invalid_argument(std::string(kernel) + ": " + what);
}

void check_dtype(const View& v, const char* kernel, const char* name) {
  if (v.data == nullptr) fail(kernel, std::string(name) + " has no data");
  if (v.dtype != DType::fp32 && v.dtype != DType::bf16) fail(kernel, std::string(name) + " must be bf16 or fp32");
}

/// `v` as a Mat of `groups` groups of `group_rows` rows and `cols` columns: the rows contiguous
/// from `first`, or one view group per Mat group (positions == group_rows).
Mat as_mat(const View& v, i64 groups, i64 group_rows, i64 cols, const char* kernel, const char* name) {
  check_dtype(v, kernel, name);
  if (v.cols != cols) {
    fail(kernel, std::string(name) + " has " + std::to_string(v.cols) + " cols, expected " + std::to_string(cols));
  }
  if (v.seqs * v.positions != groups * group_rows) {
    fail(kernel, std::string(name) + " has " + std::to_string(v.seqs * v.positions) + " rows, expected " +
                     std::to_string(groups * group_rows));
  }
  Mat m{static_cast<char*>(v.data), v.dtype, v.cols, v.first, 0};
  if (v.seqs == 1 || v.seq_stride == v.positions) {
    m.gstride = group_rows;
  } else if (v.positions == group_rows) {
    m.gstride = v.seq_stride;
  } else {
    fail(kernel, std::string(name) + ": groups of " + std::to_string(v.positions) +
                     " rows, expected whole sequences of " + std::to_string(group_rows));
  }
  return m;
}

void check_shape(const AttentionShape& s, const char* kernel) {
  if (s.batch <= 0 || s.seq <= 0 || s.heads <= 0 || s.kv_heads <= 0 || s.head_dim <= 0) fail(kernel, "bad shape");
  if (s.heads % s.kv_heads != 0) fail(kernel, "heads not a multiple of kv_heads");
  if (s.window < 0) fail(kernel, "negative window");
  if (s.batch * s.heads > 65535) fail(kernel, "batch * heads beyond the grid's limits");
  if (s.seq > (i64{1} << 30)) fail(kernel, "seq too long");
}

void check_launch(const char* kernel) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw std::runtime_error(std::string(kernel) + ": " + cudaGetErrorString(e));
}

// ---- The batched tile GEMM -----------------------------------------------------------------

constexpr int kTile = 64;     ///< output tile: kTile x kTile
constexpr int kChunk = 16;    ///< reduced-index chunk staged in shared memory
constexpr int kThreads = 256;  ///< 16 x 16 threads, 4 x 4 outputs each
constexpr int kLd = kTile + 4;

/// Which (batch, head) a block computes: head is the query head, or the kv head for dv and dk.
struct Ctx {
  i64 b = 0, h = 0;
};

/// out[m][n] = store(sum over g < groups, r < R of a(g, m, r) * b(g, n, r)) for m < M, n < N.
template <class Op>
__global__ void __launch_bounds__(kThreads) eager_gemm_kernel(Op op) {
  __shared__ float4 a_f4[kChunk * kLd / 4];
  __shared__ float4 b_f4[kChunk * kLd / 4];
  float* As = reinterpret_cast<float*>(a_f4);  // As[r * kLd + m]
  float* Bs = reinterpret_cast<float*>(b_f4);  // Bs[r * kLd + n]
  const int tid = static_cast<int>(threadIdx.x), tx = tid & 15, ty = tid >> 4;
  const i64 m0 = static_cast<i64>(blockIdx.y) * kTile, n0 = static_cast<i64>(blockIdx.x) * kTile;
  const Ctx ctx = op.context(blockIdx.z);

  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
  }
  if (op.active(m0, n0)) {  // the same for the whole block
    for (i64 g = 0; g < op.groups; ++g) {
      for (i64 r0 = 0; r0 < op.R; r0 += kChunk) {
        for (int e = tid; e < kChunk * kTile; e += kThreads) {
          // Consecutive threads read consecutive elements of the operand's contiguous index.
          const int r = Op::a_r_contiguous ? e % kChunk : e / kTile;
          const int m = Op::a_r_contiguous ? e / kChunk : e % kTile;
          const i64 mm = m0 + m, rr = r0 + r;
          As[r * kLd + m] = mm < op.M && rr < op.R ? op.a(ctx, g, mm, rr) : 0.0f;
        }
        for (int e = tid; e < kChunk * kTile; e += kThreads) {
          const int r = Op::b_r_contiguous ? e % kChunk : e / kTile;
          const int n = Op::b_r_contiguous ? e / kChunk : e % kTile;
          const i64 nn = n0 + n, rr = r0 + r;
          Bs[r * kLd + n] = nn < op.N && rr < op.R ? op.b(ctx, g, nn, rr) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int r = 0; r < kChunk; ++r) {
          const float4 a = *reinterpret_cast<const float4*>(As + r * kLd + ty * 4);
          const float4 b = *reinterpret_cast<const float4*>(Bs + r * kLd + tx * 4);
          const float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
          for (int i = 0; i < 4; ++i) {
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
          }
        }
        __syncthreads();
      }
    }
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const i64 m = m0 + ty * 4 + i;
    if (m >= op.M) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const i64 n = n0 + tx * 4 + j;
      if (n < op.N) op.store(ctx, m, n, acc[i][j]);
    }
  }
}

/// What every op shares: the shape, and the sizes of its product.
struct OpBase {
  i64 heads = 0, group = 1, hd = 0, seq = 0, window = 0;
  float scale = 1.0f;
  i64 M = 0, N = 0, R = 0, groups = 1;
  i64 ctx_heads = 1;  ///< heads (per query head ops) or kv_heads (dv, dk)
  __device__ Ctx context(unsigned z) const { return Ctx{static_cast<i64>(z) / ctx_heads, static_cast<i64>(z) % ctx_heads}; }
  __device__ bool active(i64, i64) const { return true; }
};

/// scores[(b, h, i)][j] = visible(i, j) ? scale * q_i . k_j : -inf.
struct ScoresOp : OpBase {
  Mat q, k, scores;
  static constexpr bool a_r_contiguous = true, b_r_contiguous = true;
  /// Whether some (i, j) of the tile is visible (else the tile is -inf without a product).
  __device__ bool active(i64 m0, i64 n0) const {
    if (n0 > m0 + kTile - 1) return false;                              // every key after every query
    if (window > 0 && n0 + kTile - 1 <= m0 - window) return false;      // every key before every window
    return true;
  }
  __device__ float a(const Ctx& c, i64, i64 i, i64 e) const { return mat_load(q, c.b, i, c.h * hd + e); }
  __device__ float b(const Ctx& c, i64, i64 j, i64 e) const { return mat_load(k, c.b, j, c.h / group * hd + e); }
  __device__ void store(const Ctx& c, i64 i, i64 j, float acc) const {
    const bool visible = j <= i && (window <= 0 || j > i - window);
    mat_store(scores, c.b * heads + c.h, i, j, visible ? acc * scale : -INFINITY);
  }
};

/// o[(b, i)][h, e] = sum_j probs[(b, h, i)][j] v[(b, j)][kvh, e].
struct PvOp : OpBase {
  Mat probs, v, o;
  static constexpr bool a_r_contiguous = true, b_r_contiguous = false;
  __device__ float a(const Ctx& c, i64, i64 i, i64 j) const { return mat_load(probs, c.b * heads + c.h, i, j); }
  __device__ float b(const Ctx& c, i64, i64 e, i64 j) const { return mat_load(v, c.b, j, c.h / group * hd + e); }
  __device__ void store(const Ctx& c, i64 i, i64 e, float acc) const { mat_store(o, c.b, i, c.h * hd + e, acc); }
};

/// dprobs[(b, h, i)][j] = dout[(b, i)][h, :] . v[(b, j)][kvh, :].
struct DprobsOp : OpBase {
  Mat dout, v, dprobs;
  static constexpr bool a_r_contiguous = true, b_r_contiguous = true;
  __device__ float a(const Ctx& c, i64, i64 i, i64 e) const { return mat_load(dout, c.b, i, c.h * hd + e); }
  __device__ float b(const Ctx& c, i64, i64 j, i64 e) const { return mat_load(v, c.b, j, c.h / group * hd + e); }
  __device__ void store(const Ctx& c, i64 i, i64 j, float acc) const {
    mat_store(dprobs, c.b * heads + c.h, i, j, acc);
  }
};

/// dv[(b, j)][kvh, e] = sum over the group's heads h (g), queries i of probs[(b, h, i)][j] dout[(b, i)][h, e].
struct DvOp : OpBase {
  Mat probs, dout, dv;
  static constexpr bool a_r_contiguous = false, b_r_contiguous = false;
  __device__ float a(const Ctx& c, i64 g, i64 j, i64 i) const {
    return mat_load(probs, c.b * heads + c.h * group + g, i, j);
  }
  __device__ float b(const Ctx& c, i64 g, i64 e, i64 i) const {
    return mat_load(dout, c.b, i, (c.h * group + g) * hd + e);
  }
  __device__ void store(const Ctx& c, i64 j, i64 e, float acc) const { mat_store(dv, c.b, j, c.h * hd + e, acc); }
};

/// dq[(b, i)][h, e] = scale * sum_j dscores[(b, h, i)][j] k[(b, j)][kvh, e].
struct DqOp : OpBase {
  Mat dscores, k, dq;
  static constexpr bool a_r_contiguous = true, b_r_contiguous = false;
  __device__ float a(const Ctx& c, i64, i64 i, i64 j) const { return mat_load(dscores, c.b * heads + c.h, i, j); }
  __device__ float b(const Ctx& c, i64, i64 e, i64 j) const { return mat_load(k, c.b, j, c.h / group * hd + e); }
  __device__ void store(const Ctx& c, i64 i, i64 e, float acc) const {
    mat_store(dq, c.b, i, c.h * hd + e, acc * scale);
  }
};

/// dk[(b, j)][kvh, e] = scale * sum over the group's heads h (g), queries i of dscores[(b, h, i)][j] q[(b, i)][h, e].
struct DkOp : OpBase {
  Mat dscores, q, dk;
  static constexpr bool a_r_contiguous = false, b_r_contiguous = false;
  __device__ float a(const Ctx& c, i64 g, i64 j, i64 i) const {
    return mat_load(dscores, c.b * heads + c.h * group + g, i, j);
  }
  __device__ float b(const Ctx& c, i64 g, i64 e, i64 i) const {
    return mat_load(q, c.b, i, (c.h * group + g) * hd + e);
  }
  __device__ void store(const Ctx& c, i64 j, i64 e, float acc) const {
    mat_store(dk, c.b, j, c.h * hd + e, acc * scale);
  }
};

/// The shape fields of an op; per_kv_head: one block row per (batch, kv head), summing the group.
void init_op(OpBase& op, const AttentionShape& s, i64 M, i64 N, i64 R, bool per_kv_head) {
  op.heads = s.heads;
  op.group = s.heads / s.kv_heads;
  op.hd = s.head_dim;
  op.seq = s.seq;
  op.window = s.window;
  op.scale = s.scale;
  op.M = M;
  op.N = N;
  op.R = R;
  op.groups = per_kv_head ? op.group : 1;
  op.ctx_heads = per_kv_head ? s.kv_heads : s.heads;
}

template <class Op>
void launch_gemm(const Op& op, const AttentionShape& s, bool per_kv_head, cudaStream_t stream, const char* kernel) {
  const dim3 grid(static_cast<unsigned>((op.N + kTile - 1) / kTile), static_cast<unsigned>((op.M + kTile - 1) / kTile),
                  static_cast<unsigned>(s.batch * (per_kv_head ? s.kv_heads : s.heads)));
  MSTPLAN_LAUNCH(grid, kThreads, 0, stream, eager_gemm_kernel<Op>)(op);
  check_launch(kernel);
}

// ---- Row-wise softmax and its backward -------------------------------------------------------

constexpr int kRowThreads = 256;

/// The sum (or max) over the block of every thread's v; every thread gets it. `red`: 32 floats.
__device__ __forceinline__ float block_reduce(float v, bool is_max, float* red) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float o = __shfl_xor_sync(0xffffffffu, v, off);
    v = is_max ? fmaxf(v, o) : v + o;
  }
  const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float r = red[0];
  for (int w = 1; w < kRowThreads / 32; ++w) r = is_max ? fmaxf(r, red[w]) : r + red[w];
  __syncthreads();  // red is free again
  return r;
}

__global__ void __launch_bounds__(kRowThreads) softmax_kernel(View scores, View probs) {
  __shared__ float red[32];
  const i64 rows = scores.seqs * scores.positions, cols = scores.cols;
  const int tid = static_cast<int>(threadIdx.x);
  for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
    const i64 s0 = row_start(scores, r), p0 = row_start(probs, r);
    float mx = -INFINITY;
    for (i64 c = tid; c < cols; c += kRowThreads) mx = fmaxf(mx, load_at(scores, s0 + c));
    mx = block_reduce(mx, true, red);
    if (mx == -INFINITY) {  // a fully masked row
      for (i64 c = tid; c < cols; c += kRowThreads) store_at(probs, p0 + c, 0.0f);
      continue;
    }
    float sum = 0.0f;
    for (i64 c = tid; c < cols; c += kRowThreads) sum += expf(load_at(scores, s0 + c) - mx);
    sum = block_reduce(sum, false, red);
    for (i64 c = tid; c < cols; c += kRowThreads) {
      store_at(probs, p0 + c, expf(load_at(scores, s0 + c) - mx) / sum);
    }
  }
}

__global__ void __launch_bounds__(kRowThreads) softmax_backward_kernel(View probs, View dprobs, View dscores) {
  __shared__ float red[32];
  const i64 rows = probs.seqs * probs.positions, cols = probs.cols;
  const int tid = static_cast<int>(threadIdx.x);
  for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
    const i64 p0 = row_start(probs, r), d0 = row_start(dprobs, r), s0 = row_start(dscores, r);
    float dot = 0.0f;
    for (i64 c = tid; c < cols; c += kRowThreads) {
      dot += load_at(probs, p0 + c) * load_at(dprobs, d0 + c);
    }
    dot = block_reduce(dot, false, red);
    for (i64 c = tid; c < cols; c += kRowThreads) {
      const float p = load_at(probs, p0 + c);
      store_at(dscores, s0 + c, p * (load_at(dprobs, d0 + c) - dot));
    }
  }
}

void check_same_shape(const View& a, const View& b, const char* kernel, const char* a_name, const char* b_name) {
  check_dtype(a, kernel, a_name);
  check_dtype(b, kernel, b_name);
  if (a.seqs * a.positions != b.seqs * b.positions || a.cols != b.cols) {
    fail(kernel, std::string(a_name) + " and " + b_name + " differ in shape");
  }
}

unsigned row_blocks(const View& v) {
  return static_cast<unsigned>(std::clamp<i64>(v.seqs * v.positions, 1, kMaxGridStrideBlocks));
}

}  // namespace

Status eager_scores(const AttentionShape& s, const View& q, const View& k, const View& scores, cudaStream_t stream) {
  return launch_status("eager_scores", [&] {
    const char* kernel = "cuda::eager_scores";
    check_shape(s, kernel);
    if (s.softcap != 0.0f) fail(kernel, "soft-capping is not supported by eager attention");
    ScoresOp op;
    init_op(op, s, s.seq, s.seq, s.head_dim, false);
    op.q = as_mat(q, s.batch, s.seq, s.heads * s.head_dim, kernel, "q");
    op.k = as_mat(k, s.batch, s.seq, s.kv_heads * s.head_dim, kernel, "k");
    op.scores = as_mat(scores, s.batch * s.heads, s.seq, s.seq, kernel, "scores");
    launch_gemm(op, s, false, stream, kernel);
  });
}

Status eager_softmax(const View& scores, const View& probs, cudaStream_t stream) {
  return launch_status("eager_softmax", [&] {
    const char* kernel = "cuda::eager_softmax";
    check_same_shape(scores, probs, kernel, "scores", "probs");
    if (scores.seqs * scores.positions == 0) return;
    MSTPLAN_LAUNCH(row_blocks(scores), kRowThreads, 0, stream, softmax_kernel)(scores, probs);
    check_launch(kernel);
  });
}

Status eager_pv(const AttentionShape& s, const View& probs, const View& v, const View& o, cudaStream_t stream) {
  return launch_status("eager_pv", [&] {
    const char* kernel = "cuda::eager_pv";
    check_shape(s, kernel);
    PvOp op;
    init_op(op, s, s.seq, s.head_dim, s.seq, false);
    op.probs = as_mat(probs, s.batch * s.heads, s.seq, s.seq, kernel, "probs");
    op.v = as_mat(v, s.batch, s.seq, s.kv_heads * s.head_dim, kernel, "v");
    op.o = as_mat(o, s.batch, s.seq, s.heads * s.head_dim, kernel, "o");
    launch_gemm(op, s, false, stream, kernel);
  });
}

Status eager_dprobs(const AttentionShape& s, const View& dout, const View& v, const View& dprobs, cudaStream_t stream) {
  return launch_status("eager_dprobs", [&] {
    const char* kernel = "cuda::eager_dprobs";
    check_shape(s, kernel);
    DprobsOp op;
    init_op(op, s, s.seq, s.seq, s.head_dim, false);
    op.dout = as_mat(dout, s.batch, s.seq, s.heads * s.head_dim, kernel, "dout");
    op.v = as_mat(v, s.batch, s.seq, s.kv_heads * s.head_dim, kernel, "v");
    op.dprobs = as_mat(dprobs, s.batch * s.heads, s.seq, s.seq, kernel, "dprobs");
    launch_gemm(op, s, false, stream, kernel);
  });
}

Status eager_dv(const AttentionShape& s, const View& probs, const View& dout, const View& dv, cudaStream_t stream) {
  return launch_status("eager_dv", [&] {
    const char* kernel = "cuda::eager_dv";
    check_shape(s, kernel);
    DvOp op;
    init_op(op, s, s.seq, s.head_dim, s.seq, true);
    op.probs = as_mat(probs, s.batch * s.heads, s.seq, s.seq, kernel, "probs");
    op.dout = as_mat(dout, s.batch, s.seq, s.heads * s.head_dim, kernel, "dout");
    op.dv = as_mat(dv, s.batch, s.seq, s.kv_heads * s.head_dim, kernel, "dv");
    launch_gemm(op, s, true, stream, kernel);
  });
}

Status eager_softmax_backward(const View& probs, const View& dprobs, const View& dscores, cudaStream_t stream) {
  return launch_status("eager_softmax_backward", [&] {
    const char* kernel = "cuda::eager_softmax_backward";
    check_same_shape(probs, dprobs, kernel, "probs", "dprobs");
    check_same_shape(probs, dscores, kernel, "probs", "dscores");
    if (probs.seqs * probs.positions == 0) return;
    MSTPLAN_LAUNCH(row_blocks(probs), kRowThreads, 0, stream, softmax_backward_kernel)(probs, dprobs, dscores);
    check_launch(kernel);
  });
}

Status eager_dq(const AttentionShape& s, const View& dscores, const View& k, const View& dq, cudaStream_t stream) {
  return launch_status("eager_dq", [&] {
    const char* kernel = "cuda::eager_dq";
    check_shape(s, kernel);
    DqOp op;
    init_op(op, s, s.seq, s.head_dim, s.seq, false);
    op.dscores = as_mat(dscores, s.batch * s.heads, s.seq, s.seq, kernel, "dscores");
    op.k = as_mat(k, s.batch, s.seq, s.kv_heads * s.head_dim, kernel, "k");
    op.dq = as_mat(dq, s.batch, s.seq, s.heads * s.head_dim, kernel, "dq");
    launch_gemm(op, s, false, stream, kernel);
  });
}

Status eager_dk(const AttentionShape& s, const View& dscores, const View& q, const View& dk, cudaStream_t stream) {
  return launch_status("eager_dk", [&] {
    const char* kernel = "cuda::eager_dk";
    check_shape(s, kernel);
    DkOp op;
    init_op(op, s, s.seq, s.head_dim, s.seq, true);
    op.dscores = as_mat(dscores, s.batch * s.heads, s.seq, s.seq, kernel, "dscores");
    op.q = as_mat(q, s.batch, s.seq, s.heads * s.head_dim, kernel, "q");
    op.dk = as_mat(dk, s.batch, s.seq, s.kv_heads * s.head_dim, kernel, "dk");
    launch_gemm(op, s, true, stream, kernel);
  });
}

}  // namespace mstplan::cuda
