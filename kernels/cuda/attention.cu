// Causal GQA attention with O(S) extra memory (FlashAttention-2's algorithm), forward and
// backward, on fp32 FMA tiles staged in shared memory: reference.h's attention_forward /
// attention_backward.
//
// Forward: one block per (query block, head, batch). The block keeps its BQ queries in shared
// memory and walks the key blocks that its queries can see (causal, and the sliding window);
// for each it computes the BQ x BK scores, updates the running max / sum of every query row
// (online softmax, as the reference does per block of keys) and adds P V into registers. It
// stores o = acc / sum and lse = max + log(sum).
//
// Backward (three kernels):
//   1. delta = rowsum(dout * o) per (batch, head, query); dq_accum = 0.
//   2. One block per (key block, kv head, batch): it keeps its BK keys and values in shared
//      memory and walks every query head of the group and every query block that sees its keys,
//      recomputing P = exp(cap(scale q.k) - lse) and dS; dK and dV accumulate in registers (the
//      block owns them: no race between the query heads of a group), dQ = dS K is added with
//      fp32 atomics into dq_accum.
//   3. dq = dq_accum (rounded to dq's dtype).
//
// Thread layout of every tile product: 16 threads across the columns (tx), NT / 16 across the
// rows (ty). A score tile (rows: queries, columns: keys) gives thread (ty, tx) rows
// ty*RQ .. ty*RQ+RQ-1 and columns tx, tx+16, ...; an output tile over head_dim gives it columns
// tx*4 + 64c .. +3. All shared tiles are row-major fp32 with rows padded by 4 floats, which makes
// the float4 reads conflict-free. head_dim is padded with zeros to 64, 128 or 256.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/device.cuh"

namespace mstplan::cuda {
namespace {

using i64 = std::int64_t;

struct Params {
  i64 batch = 0, seq = 0, heads = 0, kv_heads = 0, hd = 0, window = 0;
  float scale = 1.0f, softcap = 0.0f;
  Mat q, k, v, o, lse, dout, dq, dk, dv, dq_accum, delta;
};

// ---- Host-side checks ------------------------------------------------------------------------

[[noreturn]] void fail(const char* kernel, const std::string& what) {
  throw std::invalid_argument(std::string(kernel) + ": " + what);
}

/// `v` as a Mat of `groups` groups of `group_rows` rows and `cols` columns. Accepted layouts: the
/// rows contiguous from `first` (one group, or groups back to back), or one view group per
/// Mat group (positions == group_rows, groups seq_stride rows apart).
Mat as_mat(const View& v, i64 groups, i64 group_rows, i64 cols, bool fp32_only, const char* kernel,
           const char* name) {
  if (v.data == nullptr) fail(kernel, std::string(name) + " has no data");
  if (v.dtype != DType::fp32 && (fp32_only || v.dtype != DType::bf16)) {
    fail(kernel, std::string(name) + (fp32_only ? " must be fp32" : " must be bf16 or fp32"));
  }
  if (v.cols != cols) fail(kernel, std::string(name) + " has " + std::to_string(v.cols) + " cols, expected " + std::to_string(cols));
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
    fail(kernel, std::string(name) + ": groups of " + std::to_string(v.positions) + " rows, expected whole sequences of " +
                     std::to_string(group_rows));
  }
  return m;
}

void check_shape(const AttentionShape& s, const char* kernel) {
  if (s.batch <= 0 || s.seq <= 0 || s.heads <= 0 || s.kv_heads <= 0 || s.head_dim <= 0) fail(kernel, "bad shape");
  if (s.heads % s.kv_heads != 0) fail(kernel, "heads not a multiple of kv_heads");
  if (s.window < 0) fail(kernel, "negative window");
  if (s.softcap < 0.0f) fail(kernel, "negative softcap");
  if (s.head_dim > 256) fail(kernel, "head_dim " + std::to_string(s.head_dim) + " > 256 is not supported");
  if (s.batch > 65535 || s.heads > 65535) fail(kernel, "batch or heads beyond the grid's limits");
  if (s.seq > (i64{1} << 30)) fail(kernel, "seq too long");
  if (s.query_rows() != s.seq || s.query_first != 0) {
    fail(kernel, "queries at a subset of the positions (context parallelism) are run by the CPU reference only");
  }
}

Params make_params(const AttentionShape& s) {
  Params p;
  p.batch = s.batch;
  p.seq = s.seq;
  p.heads = s.heads;
  p.kv_heads = s.kv_heads;
  p.hd = s.head_dim;
  p.window = s.window;
  p.scale = s.scale;
  p.softcap = s.softcap;
  return p;
}

void check_launch(const char* kernel) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw std::runtime_error(std::string(kernel) + ": " + cudaGetErrorString(e));
}

// ---- Tile products in shared memory --------------------------------------------------------

__device__ __forceinline__ float component(const float4& v, int e) {
  return e == 0 ? v.x : (e == 1 ? v.y : (e == 2 ? v.z : v.w));
}

/// acc[i][j] += sum_{d < R} A[(a_row + i) * LDA + d] * B[(tx + 16 j) * LDB + d]
/// (both operands row-major in the reduced index; d in increasing order).
template <int RM, int CN, int R, int LDA, int LDB>
__device__ __forceinline__ void mm_nt(float (&acc)[RM][CN], const float* A, int a_row, const float* B, int tx) {
#pragma unroll 2
  for (int d = 0; d < R; d += 4) {
    float4 a[RM], b[CN];
#pragma unroll
    for (int i = 0; i < RM; ++i) a[i] = *reinterpret_cast<const float4*>(A + (a_row + i) * LDA + d);
#pragma unroll
    for (int j = 0; j < CN; ++j) b[j] = *reinterpret_cast<const float4*>(B + (tx + 16 * j) * LDB + d);
#pragma unroll
    for (int i = 0; i < RM; ++i) {
#pragma unroll
      for (int j = 0; j < CN; ++j) {
        float s = acc[i][j];
        s = fmaf(a[i].x, b[j].x, s);
        s = fmaf(a[i].y, b[j].y, s);
        s = fmaf(a[i].z, b[j].z, s);
        s = fmaf(a[i].w, b[j].w, s);
        acc[i][j] = s;
      }
    }
  }
}

/// acc[i][c][e] += sum_{r < R} A[(a_row + i) * LDA + r] * B[r * LDB + col0 + tx * 4 + 64 c + e]
/// (A row-major in the reduced index, B row-major in the output column).
template <int RM, int CD, int R, int LDA, int LDB>
__device__ __forceinline__ void mm_nn(float (&acc)[RM][CD][4], const float* A, int a_row, const float* B, int col0,
                                      int tx) {
#pragma unroll 2
  for (int r = 0; r < R; r += 4) {
    float4 a[RM];
#pragma unroll
    for (int i = 0; i < RM; ++i) a[i] = *reinterpret_cast<const float4*>(A + (a_row + i) * LDA + r);
#pragma unroll
    for (int rr = 0; rr < 4; ++rr) {
#pragma unroll
      for (int c = 0; c < CD; ++c) {
        const float4 b = *reinterpret_cast<const float4*>(B + (r + rr) * LDB + col0 + tx * 4 + 64 * c);
#pragma unroll
        for (int i = 0; i < RM; ++i) {
          const float x = component(a[i], rr);
          acc[i][c][0] = fmaf(x, b.x, acc[i][c][0]);
          acc[i][c][1] = fmaf(x, b.y, acc[i][c][1]);
          acc[i][c][2] = fmaf(x, b.z, acc[i][c][2]);
          acc[i][c][3] = fmaf(x, b.w, acc[i][c][3]);
        }
      }
    }
  }
}

/// acc[i][c][e] += sum_{r < R} A[r * LDA + a_col + i] * B[r * LDB + tx * 4 + 64 c + e]
/// (A read transposed: its rows are the reduced index).
template <int RM, int CD, int R, int LDA, int LDB>
__device__ __forceinline__ void mm_tn(float (&acc)[RM][CD][4], const float* A, int a_col, const float* B, int tx) {
#pragma unroll 2
  for (int r = 0; r < R; ++r) {
    float a[RM];
#pragma unroll
    for (int i = 0; i < RM; ++i) a[i] = A[r * LDA + a_col + i];
#pragma unroll
    for (int c = 0; c < CD; ++c) {
      const float4 b = *reinterpret_cast<const float4*>(B + r * LDB + tx * 4 + 64 * c);
#pragma unroll
      for (int i = 0; i < RM; ++i) {
        acc[i][c][0] = fmaf(a[i], b.x, acc[i][c][0]);
        acc[i][c][1] = fmaf(a[i], b.y, acc[i][c][1]);
        acc[i][c][2] = fmaf(a[i], b.z, acc[i][c][2]);
        acc[i][c][3] = fmaf(a[i], b.w, acc[i][c][3]);
      }
    }
  }
}

/// Rows row0 .. row0+ROWS-1 of group g of m, columns col0 .. col0+D-1, into dst (row stride LDD)
/// as fp32: 0 for rows at or beyond seq and for columns at or beyond hd (the padding).
template <int ROWS, int D, int LDD, int NT>
__device__ __forceinline__ void load_tile(float* dst, const Mat& m, i64 g, i64 row0, i64 seq, i64 col0, int hd,
                                          int tid) {
  for (int e = tid; e < ROWS * D; e += NT) {
    const int r = e / D, d = e % D;
    const i64 row = row0 + r;
    float x = 0.0f;
    if (row < seq && d < hd) x = mat_load(m, g, row, col0 + d);
    dst[r * LDD + d] = x;
  }
}

/// Whether query qi sees key kj (qi < seq; then kj <= qi < seq too).
__device__ __forceinline__ bool visible(const Params& p, i64 qi, i64 kj) {
  return qi < p.seq && kj <= qi && (p.window <= 0 || kj > qi - p.window);
}

/// scale * dot, soft-capped when p.softcap > 0 (t: the tanh, 0 without cap): attention_score.
__device__ __forceinline__ float score_of(const Params& p, float dot, float& t) {
  float x = dot * p.scale;
  t = 0.0f;
  if (p.softcap > 0.0f) {
    t = tanhf(x / p.softcap);
    x = p.softcap * t;
  }
  return x;
}

// ---- Forward -------------------------------------------------------------------------------

template <int D, int BQ, int BK, int NT, bool SHARED_KV>
struct ForwardConfig {
  static constexpr int TY = NT / 16, RQ = BQ / TY, CK = BK / 16, CD = D / 64;
  static constexpr int LDD = D + 4, LDP = BK + 4;
  static constexpr std::size_t smem_floats =
      static_cast<std::size_t>(BQ * LDD + (SHARED_KV ? 1 : 2) * BK * LDD + BQ * LDP);
  static constexpr std::size_t smem_bytes = smem_floats * sizeof(float);
  static_assert(NT % 32 == 0 && BQ % TY == 0 && BK % 16 == 0 && D % 64 == 0 && RQ >= 1);
};

template <int D, int BQ, int BK, int NT, bool SHARED_KV>
__global__ void __launch_bounds__(NT) flash_forward_kernel(Params p) {
  using C = ForwardConfig<D, BQ, BK, NT, SHARED_KV>;
  constexpr int RQ = C::RQ, CK = C::CK, CD = C::CD, LDD = C::LDD, LDP = C::LDP;
  MSTPLAN_DYNAMIC_SHARED(float4, smem_f4);
  float* Qs = reinterpret_cast<float*>(smem_f4);
  float* Ks = Qs + BQ * LDD;
  float* Vs = SHARED_KV ? Ks : Ks + BK * LDD;
  float* Ps = Vs + BK * LDD;

  const int tid = static_cast<int>(threadIdx.x), tx = tid & 15, ty = tid >> 4;
  const i64 seq = p.seq;
  // The last query blocks have the most keys: start them first.
  const i64 q0 = static_cast<i64>(gridDim.x - 1 - blockIdx.x) * BQ;
  const i64 h = blockIdx.y, b = blockIdx.z;
  const i64 kvh = h / (p.heads / p.kv_heads);
  const i64 q_col = h * p.hd, kv_col = kvh * p.hd;
  const int hd = static_cast<int>(p.hd);

  load_tile<BQ, D, LDD, NT>(Qs, p.q, b, q0, seq, q_col, hd, tid);

  float m[RQ], l[RQ], acc[RQ][CD][4];
#pragma unroll
  for (int i = 0; i < RQ; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.0f;
#pragma unroll
    for (int c = 0; c < CD; ++c) {
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][c][e] = 0.0f;
    }
  }

  const i64 q_last = std::min<i64>(seq, q0 + BQ) - 1;
  const i64 k_first = p.window > 0 ? std::max<i64>(0, q0 - p.window + 1) : 0;
  for (i64 kt = k_first / BK * BK; kt <= q_last; kt += BK) {
    load_tile<BK, D, LDD, NT>(Ks, p.k, b, kt, seq, kv_col, hd, tid);
    if constexpr (!SHARED_KV) load_tile<BK, D, LDD, NT>(Vs, p.v, b, kt, seq, kv_col, hd, tid);
    __syncthreads();  // Q (first pass), K, V staged

    float s[RQ][CK];
#pragma unroll
    for (int i = 0; i < RQ; ++i) {
#pragma unroll
      for (int j = 0; j < CK; ++j) s[i][j] = 0.0f;
    }
    mm_nt<RQ, CK, D, LDD, LDD>(s, Qs, ty * RQ, Ks, tx);

#pragma unroll
    for (int i = 0; i < RQ; ++i) {
      const i64 qi = q0 + ty * RQ + i;
      float block_max = -INFINITY;
#pragma unroll
      for (int j = 0; j < CK; ++j) {
        float t;
        const float x = score_of(p, s[i][j], t);
        s[i][j] = visible(p, qi, kt + tx + 16 * j) ? x : -INFINITY;
        block_max = fmaxf(block_max, s[i][j]);
      }
      // The 16 threads of a row are lanes 0-15 or 16-31 of one warp.
#pragma unroll
      for (int off = 8; off > 0; off >>= 1) block_max = fmaxf(block_max, __shfl_xor_sync(0xffffffffu, block_max, off));
      const float new_max = fmaxf(m[i], block_max);
      const float use_max = new_max == -INFINITY ? 0.0f : new_max;  // a row with nothing seen yet
      const float correction = expf(m[i] - use_max);               // 0 while m is -inf
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < CK; ++j) {
        s[i][j] = expf(s[i][j] - use_max);  // 0 where masked
        sum += s[i][j];
      }
#pragma unroll
      for (int off = 8; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
      l[i] = l[i] * correction + sum;
      m[i] = new_max;
#pragma unroll
      for (int c = 0; c < CD; ++c) {
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[i][c][e] *= correction;
      }
#pragma unroll
      for (int j = 0; j < CK; ++j) Ps[(ty * RQ + i) * LDP + tx + 16 * j] = s[i][j];
    }
    if constexpr (SHARED_KV) {
      __syncthreads();  // every thread is done reading K
      load_tile<BK, D, LDD, NT>(Vs, p.v, b, kt, seq, kv_col, hd, tid);
    }
    __syncthreads();  // P (and V) staged
    mm_nn<RQ, CD, BK, LDP, LDD>(acc, Ps, ty * RQ, Vs, 0, tx);
    __syncthreads();  // K, V, P free for the next block of keys
  }

#pragma unroll
  for (int i = 0; i < RQ; ++i) {
    const i64 qi = q0 + ty * RQ + i;
    if (qi >= seq) continue;
#pragma unroll
    for (int c = 0; c < CD; ++c) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int d = tx * 4 + 64 * c + e;
        if (d < hd) mat_store(p.o, b, qi, q_col + d, acc[i][c][e] / l[i]);
      }
    }
    if (tx == 0) mat_store(p.lse, b * p.heads + h, qi, 0, m[i] + logf(l[i]));
  }
}

template <int D, int BQ, int BK, int NT, bool SHARED_KV>
void launch_forward(const Params& p, cudaStream_t stream) {
  using C = ForwardConfig<D, BQ, BK, NT, SHARED_KV>;
  auto kernel = flash_forward_kernel<D, BQ, BK, NT, SHARED_KV>;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(C::smem_bytes));
  const dim3 grid(static_cast<unsigned>((p.seq + BQ - 1) / BQ), static_cast<unsigned>(p.heads),
                  static_cast<unsigned>(p.batch));
  MSTPLAN_LAUNCH(grid, NT, C::smem_bytes, stream, kernel)(p);
}

// ---- Backward ------------------------------------------------------------------------------

/// delta = rowsum(dout * o) per (batch, head, query), and dq_accum = 0: one warp per (token, head).
__global__ void attention_delta_kernel(Params p) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const i64 warps = static_cast<i64>(gridDim.x) * blockDim.x / 32;
  const i64 rows = p.batch * p.seq * p.heads;
  for (i64 w = (static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x) / 32; w < rows; w += warps) {
    const i64 h = w % p.heads, t = w / p.heads;
    const i64 b = t / p.seq, i = t % p.seq;
    float sum = 0.0f;
    for (i64 d = lane; d < p.hd; d += 32) {
      const i64 c = h * p.hd + d;
      sum += mat_load(p.dout, b, i, c) * mat_load(p.o, b, i, c);
      mat_store(p.dq_accum, b, i, c, 0.0f);
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    if (lane == 0) mat_store(p.delta, b * p.heads + h, i, 0, sum);
  }
}

/// dq = dq_accum, rounded to dq's dtype.
__global__ void attention_dq_kernel(Params p) {
  const i64 rows = p.batch * p.seq, cols = p.heads * p.hd;
  for (i64 t = blockIdx.x; t < rows; t += gridDim.x) {
    const i64 b = t / p.seq, i = t % p.seq;
    for (i64 c = threadIdx.x; c < cols; c += blockDim.x) mat_store(p.dq, b, i, c, mat_load(p.dq_accum, b, i, c));
  }
}

template <int D, int BQ, int BK, int NT>
struct BackwardConfig {
  static constexpr int TY = NT / 16, RQ = BQ / TY, RK = BK / TY, CK = BK / 16, CD = D / 64;
  static constexpr int LDD = D + 4, LDP = BK + 4;
  static constexpr std::size_t smem_floats =
      static_cast<std::size_t>(2 * BK * LDD + 2 * BQ * LDD + 2 * BQ * LDP + 2 * BQ);
  static constexpr std::size_t smem_bytes = smem_floats * sizeof(float);
  static_assert(NT % 32 == 0 && BQ % TY == 0 && BK % TY == 0 && BK % 16 == 0 && BQ % 4 == 0 && D % 64 == 0);
  static_assert(RQ >= 1 && RK >= 1 && BQ <= NT);
};

template <int D, int BQ, int BK, int NT>
__global__ void __launch_bounds__(NT) flash_backward_kernel(Params p) {
  using C = BackwardConfig<D, BQ, BK, NT>;
  constexpr int RQ = C::RQ, RK = C::RK, CK = C::CK, CD = C::CD, LDD = C::LDD, LDP = C::LDP;
  MSTPLAN_DYNAMIC_SHARED(float4, smem_f4);
  float* Ks = reinterpret_cast<float*>(smem_f4);
  float* Vs = Ks + BK * LDD;
  float* Qs = Vs + BK * LDD;
  float* dOs = Qs + BQ * LDD;
  float* Ps = dOs + BQ * LDD;
  float* dSs = Ps + BQ * LDP;
  float* lse_s = dSs + BQ * LDP;
  float* delta_s = lse_s + BQ;

  const int tid = static_cast<int>(threadIdx.x), tx = tid & 15, ty = tid >> 4;
  const i64 seq = p.seq;
  const i64 k0 = static_cast<i64>(blockIdx.x) * BK;
  const i64 kvh = blockIdx.y, b = blockIdx.z;
  const i64 group = p.heads / p.kv_heads;
  const i64 kv_col = kvh * p.hd;
  const int hd = static_cast<int>(p.hd);

  load_tile<BK, D, LDD, NT>(Ks, p.k, b, k0, seq, kv_col, hd, tid);
  load_tile<BK, D, LDD, NT>(Vs, p.v, b, k0, seq, kv_col, hd, tid);

  float dk[RK][CD][4], dv[RK][CD][4];
#pragma unroll
  for (int i = 0; i < RK; ++i) {
#pragma unroll
    for (int c = 0; c < CD; ++c) {
#pragma unroll
      for (int e = 0; e < 4; ++e) dk[i][c][e] = dv[i][c][e] = 0.0f;
    }
  }

  // Queries that see a key of this block: k0 ..= min(seq - 1, k_last + window - 1).
  const i64 k_last = std::min<i64>(seq, k0 + BK) - 1;
  const i64 q_end = p.window > 0 ? std::min<i64>(seq, k_last + p.window) : seq;
  for (i64 hh = 0; hh < group; ++hh) {
    const i64 h = kvh * group + hh;
    const i64 q_col = h * p.hd, stat_group = b * p.heads + h;
    for (i64 qt = k0 / BQ * BQ; qt < q_end; qt += BQ) {
      __syncthreads();  // the previous block of queries is done with Q, dO, P, dS
      load_tile<BQ, D, LDD, NT>(Qs, p.q, b, qt, seq, q_col, hd, tid);
      load_tile<BQ, D, LDD, NT>(dOs, p.dout, b, qt, seq, q_col, hd, tid);
      if (tid < BQ) {
        const i64 qi = qt + tid;
        lse_s[tid] = qi < seq ? mat_load(p.lse, stat_group, qi, 0) : 0.0f;
        delta_s[tid] = qi < seq ? mat_load(p.delta, stat_group, qi, 0) : 0.0f;
      }
      __syncthreads();

      float s[RQ][CK], dp[RQ][CK];
#pragma unroll
      for (int i = 0; i < RQ; ++i) {
#pragma unroll
        for (int j = 0; j < CK; ++j) s[i][j] = dp[i][j] = 0.0f;
      }
      mm_nt<RQ, CK, D, LDD, LDD>(s, Qs, ty * RQ, Ks, tx);
      mm_nt<RQ, CK, D, LDD, LDD>(dp, dOs, ty * RQ, Vs, tx);
#pragma unroll
      for (int i = 0; i < RQ; ++i) {
        const int r = ty * RQ + i;
        const i64 qi = qt + r;
#pragma unroll
        for (int j = 0; j < CK; ++j) {
          const int c = tx + 16 * j;
          float prob = 0.0f, ds = 0.0f;
          if (visible(p, qi, k0 + c)) {
            float t;
            const float x = score_of(p, s[i][j], t);
            prob = expf(x - lse_s[r]);
            ds = prob * (dp[i][j] - delta_s[r]);      // d loss / d (capped score)
            if (p.softcap > 0.0f) ds *= 1.0f - t * t;  // d cap(z) / dz
            ds *= p.scale;
          }
          Ps[r * LDP + c] = prob;
          dSs[r * LDP + c] = ds;
        }
      }
      __syncthreads();  // P, dS staged

      mm_tn<RK, CD, BQ, LDP, LDD>(dv, Ps, ty * RK, dOs, tx);   // dV += P^T dO
      mm_tn<RK, CD, BQ, LDP, LDD>(dk, dSs, ty * RK, Qs, tx);   // dK += dS^T Q
#pragma unroll
      for (int c = 0; c < CD; ++c) {  // dQ += dS K, 64 columns at a time
        float dq[RQ][1][4];
#pragma unroll
        for (int i = 0; i < RQ; ++i) {
#pragma unroll
          for (int e = 0; e < 4; ++e) dq[i][0][e] = 0.0f;
        }
        mm_nn<RQ, 1, BK, LDP, LDD>(dq, dSs, ty * RQ, Ks, 64 * c, tx);
#pragma unroll
        for (int i = 0; i < RQ; ++i) {
          const i64 qi = qt + ty * RQ + i;
          if (qi >= seq) continue;
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int d = tx * 4 + 64 * c + e;
            if (d < hd) {
              atomicAdd(reinterpret_cast<float*>(p.dq_accum.data) + mat_index(p.dq_accum, b, qi, q_col + d),
                        dq[i][0][e]);
            }
          }
        }
      }
    }
  }

#pragma unroll
  for (int i = 0; i < RK; ++i) {
    const i64 kj = k0 + ty * RK + i;
    if (kj >= seq) continue;
#pragma unroll
    for (int c = 0; c < CD; ++c) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int d = tx * 4 + 64 * c + e;
        if (d < hd) {
          mat_store(p.dk, b, kj, kv_col + d, dk[i][c][e]);
          mat_store(p.dv, b, kj, kv_col + d, dv[i][c][e]);
        }
      }
    }
  }
}

template <int D, int BQ, int BK, int NT>
void launch_backward(const Params& p, cudaStream_t stream) {
  using C = BackwardConfig<D, BQ, BK, NT>;
  auto kernel = flash_backward_kernel<D, BQ, BK, NT>;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(C::smem_bytes));
  const dim3 grid(static_cast<unsigned>((p.seq + BK - 1) / BK), static_cast<unsigned>(p.kv_heads),
                  static_cast<unsigned>(p.batch));
  MSTPLAN_LAUNCH(grid, NT, C::smem_bytes, stream, kernel)(p);
}

}  // namespace

// Tile sizes: all fp32 in shared memory and at most 99 KiB per block (what sm_86 / sm_89 allow),
//   forward  (Q + K + V + P):          hd <= 64: 68 KiB, <= 128: 75 KiB, <= 256: 69.5 KiB (K, V share)
//   backward (K + V + Q + dO + P + dS): hd <= 64: 68.3 KiB, <= 128: 75.3 KiB, <= 256: 67.6 KiB
Status attention_forward(const AttentionShape& s, const View& q, const View& k, const View& v, const View& o,
                         const View& lse, cudaStream_t stream) {
  return launch_status("attention_forward", [&] {
    const char* kernel = "cuda::attention_forward";
    check_shape(s, kernel);
    Params p = make_params(s);
    p.q = as_mat(q, s.batch, s.seq, s.heads * s.head_dim, false, kernel, "q");
    p.k = as_mat(k, s.batch, s.seq, s.kv_heads * s.head_dim, false, kernel, "k");
    p.v = as_mat(v, s.batch, s.seq, s.kv_heads * s.head_dim, false, kernel, "v");
    p.o = as_mat(o, s.batch, s.seq, s.heads * s.head_dim, false, kernel, "o");
    p.lse = as_mat(lse, s.batch * s.heads, s.seq, 1, true, kernel, "lse");
    if (s.head_dim <= 64) {
      launch_forward<64, 64, 64, 256, false>(p, stream);
    } else if (s.head_dim <= 128) {
      launch_forward<128, 64, 32, 256, false>(p, stream);
    } else {
      launch_forward<256, 32, 32, 128, true>(p, stream);
    }
    check_launch(kernel);
  });
}

Status attention_backward(const AttentionShape& s, const View& q, const View& k, const View& v, const View& o,
                          const View& lse, const View& dout, const View& dq, const View& dk, const View& dv,
                          const View& dq_accum, const View& delta, cudaStream_t stream) {
  return launch_status("attention_backward", [&] {
    const char* kernel = "cuda::attention_backward";
    check_shape(s, kernel);
    Params p = make_params(s);
    const i64 q_cols = s.heads * s.head_dim, kv_cols = s.kv_heads * s.head_dim;
    p.q = as_mat(q, s.batch, s.seq, q_cols, false, kernel, "q");
    p.k = as_mat(k, s.batch, s.seq, kv_cols, false, kernel, "k");
    p.v = as_mat(v, s.batch, s.seq, kv_cols, false, kernel, "v");
    p.o = as_mat(o, s.batch, s.seq, q_cols, false, kernel, "o");
    p.lse = as_mat(lse, s.batch * s.heads, s.seq, 1, true, kernel, "lse");
    p.dout = as_mat(dout, s.batch, s.seq, q_cols, false, kernel, "dout");
    p.dq = as_mat(dq, s.batch, s.seq, q_cols, false, kernel, "dq");
    p.dk = as_mat(dk, s.batch, s.seq, kv_cols, false, kernel, "dk");
    p.dv = as_mat(dv, s.batch, s.seq, kv_cols, false, kernel, "dv");
    p.dq_accum = as_mat(dq_accum, s.batch, s.seq, q_cols, true, kernel, "dq_accum");
    p.delta = as_mat(delta, s.batch * s.heads, s.seq, 1, true, kernel, "delta");

    const i64 rows = s.batch * s.seq * s.heads;  // one warp each
    MSTPLAN_LAUNCH(blocks_for(rows * 32, 256), 256, 0, stream, attention_delta_kernel)(p);
    if (s.head_dim <= 64) {
      launch_backward<64, 32, 64, 256>(p, stream);
    } else if (s.head_dim <= 128) {
      launch_backward<128, 32, 32, 256>(p, stream);
    } else {
      launch_backward<256, 16, 16, 128>(p, stream);
    }
    const i64 tokens = s.batch * s.seq;
    MSTPLAN_LAUNCH(static_cast<unsigned>(std::min<i64>(tokens, kMaxGridStrideBlocks)), 256, 0, stream, attention_dq_kernel)(p);
    check_launch(kernel);
  });
}

}  // namespace mstplan::cuda
