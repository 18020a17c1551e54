// Gated MLP activations, residual add, soft-capping, copy with casts, zero, embedding forward and
// backward (reference.h's contracts, reference.cpp's arithmetic).
//
// Element-wise ops share one engine: when every operand is flat (its rows consecutive in its
// buffer: one group, or groups packed back to back) a grid-stride loop over the elements;
// otherwise one warp per row (the row's buffer offset computed once per view), lanes on
// consecutive columns. Each thread reads an element of every input before writing the outputs of
// that element, so outputs may alias inputs of the same shape (in place).
// Products and sums use the _rn intrinsics (no FMA contraction) so that add, copy and the
// embedding are bit-exact and the activations differ from the reference only through expf/tanhf.
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/cuda/device.cuh"
#include "kernels/cuda/elementwise.cuh"

namespace mstplan::cuda {
namespace {

using i64 = std::int64_t;

constexpr int kThreads = 256;

// ---- element access by element offset --------------------------------------------------------

__device__ __forceinline__ i64 ld_index(const View& v, i64 off) {
  return v.dtype == DType::int64 ? static_cast<const std::int64_t*>(v.data)[off]
                                 : static_cast<i64>(static_cast<const std::int32_t*>(v.data)[off]);
}

/// Whether view row r is buffer row first + r for every r.
__host__ __device__ __forceinline__ bool is_flat(const View& v) { return v.seqs == 1 || v.seq_stride == v.positions; }

/// Element offset of the first element of view row r.
__device__ __forceinline__ i64 row_offset(const View& v, i64 r) {
  return (is_flat(v) ? v.first + r : v.buffer_row(r)) * v.cols;
}

/// Walks the rows of a view in order without a division per row.
struct RowCursor {
  i64 off;  ///< element offset of the current row
  i64 p;    ///< its position within its group
  __device__ void init(const View& v, i64 r) {
    p = r % v.positions;
    off = v.buffer_row(r) * v.cols;
  }
  __device__ void next(const View& v) {
    off += v.cols;
    if (++p == v.positions) {
      p = 0;
      off += (v.seq_stride - v.positions) * v.cols;
    }
  }
};

// ---- the element-wise engine ----------------------------------------------------------------

template <int N>
struct Pack {
  View v[N];
};

/// Every view flat: element i of the view is element first * cols + i of its buffer.
template <int N, class Op>
__global__ void __launch_bounds__(kThreads) flat_kernel(Pack<N> p, i64 n, Op op) {
  i64 base[N];
#pragma unroll
  for (int j = 0; j < N; ++j) base[j] = p.v[j].first * p.v[j].cols;
  const i64 stride = static_cast<i64>(gridDim.x) * blockDim.x;
  for (i64 i = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    i64 off[N];
#pragma unroll
    for (int j = 0; j < N; ++j) off[j] = base[j] + i;
    op(p.v, off);
  }
}

/// Any views: one warp per row.
template <int N, class Op>
__global__ void __launch_bounds__(kThreads) rows_kernel(Pack<N> p, i64 rows, i64 cols, Op op) {
  const i64 warp = (static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const i64 warps = static_cast<i64>(gridDim.x) * blockDim.x / 32;
  const i64 lane = threadIdx.x % 32;
  for (i64 r = warp; r < rows; r += warps) {
    i64 base[N];
#pragma unroll
    for (int j = 0; j < N; ++j) base[j] = row_offset(p.v[j], r);
    for (i64 c = lane; c < cols; c += 32) {
      i64 off[N];
#pragma unroll
      for (int j = 0; j < N; ++j) off[j] = base[j] + c;
      op(p.v, off);
    }
  }
}

void require(bool ok, const char* kernel, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string(kernel) + ": " + what);
}

i64 rows_of(const View& v) { return v.seqs * v.positions; }

/// Runs `op` on every element of views of one shape (checked).
template <int N, class Op>
void launch(const char* kernel, const Pack<N>& p, Op op, cudaStream_t stream) {
  const i64 rows = rows_of(p.v[0]), cols = p.v[0].cols;
  bool flat = true;
  for (int j = 0; j < N; ++j) {
    require(rows_of(p.v[j]) == rows && p.v[j].cols == cols, kernel, "operands of different shapes");
    flat = flat && is_flat(p.v[j]);
  }
  if (rows == 0 || cols <= 0) return;
  if (flat) {
    MSTPLAN_LAUNCH(blocks_for(rows * cols, kThreads), kThreads, 0, stream, flat_kernel<N, Op>)(p, rows * cols, op);
  } else {
    MSTPLAN_LAUNCH(blocks_for(rows * 32, kThreads), kThreads, 0, stream, rows_kernel<N, Op>)(p, rows, cols, op);
  }
}

// ---- activations ------------------------------------------------------------------------------

constexpr float kGeluK = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluC = 0.044715f;

/// act(g) and d act / dg, the reference's expressions in its order of operations.
__device__ __forceinline__ void activation(GatedActivation a, float g, float& value, float& derivative) {
  if (a == GatedActivation::swiglu) {
    const float sig = __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-g)));
    value = __fmul_rn(g, sig);
    derivative = __fmul_rn(sig, __fadd_rn(1.0f, __fmul_rn(g, __fsub_rn(1.0f, sig))));
  } else {
    const float cubic = __fmul_rn(__fmul_rn(__fmul_rn(kGeluC, g), g), g);
    const float t = tanhf(__fmul_rn(kGeluK, __fadd_rn(g, cubic)));
    const float one_plus_t = __fadd_rn(1.0f, t);
    value = __fmul_rn(__fmul_rn(0.5f, g), one_plus_t);
    const float left = __fmul_rn(0.5f, one_plus_t);
    const float right = __fmul_rn(__fmul_rn(__fmul_rn(__fmul_rn(0.5f, g), __fsub_rn(1.0f, __fmul_rn(t, t))), kGeluK),
                                  __fadd_rn(1.0f, __fmul_rn(__fmul_rn(3.0f * kGeluC, g), g)));
    derivative = __fadd_rn(left, right);
  }
}

struct GatedForwardOp {  // g, u, out
  GatedActivation a;
  __device__ void operator()(const View* v, const i64* off) const {
    const float g = load_at(v[0], off[0]), u = load_at(v[1], off[1]);
    float act = 0.0f, dact = 0.0f;
    activation(a, g, act, dact);
    store_at(v[2], off[2], __fmul_rn(act, u));
  }
};

struct GatedBackwardOp {  // dout, g, u, dg, du
  GatedActivation a;
  __device__ void operator()(const View* v, const i64* off) const {
    const float d = load_at(v[0], off[0]), g = load_at(v[1], off[1]), u = load_at(v[2], off[2]);  // all read before any write
    float act = 0.0f, dact = 0.0f;
    activation(a, g, act, dact);
    store_at(v[3], off[3], __fmul_rn(__fmul_rn(d, u), dact));
    store_at(v[4], off[4], __fmul_rn(d, act));
  }
};

struct AddOp {  // a, b, out
  __device__ void operator()(const View* v, const i64* off) const {
    store_at(v[2], off[2], __fadd_rn(load_at(v[0], off[0]), load_at(v[1], off[1])));
  }
};

struct SoftcapOp {  // x
  float cap;
  __device__ void operator()(const View* v, const i64* off) const {
    store_at(v[0], off[0], __fmul_rn(cap, tanhf(__fdiv_rn(load_at(v[0], off[0]), cap))));
  }
};

struct ScaleOp {  // x, out
  float s;
  __device__ void operator()(const View* v, const i64* off) const {
    store_at(v[1], off[1], __fmul_rn(s, load_at(v[0], off[0])));
  }
};

struct ConvertOp {  // src, dst of different dtypes
  __device__ void operator()(const View* v, const i64* off) const { store_at(v[1], off[1], load_at(v[0], off[0])); }
};

template <class T>
struct RawCopyOp {  // src, dst of one dtype: the bits
  __device__ void operator()(const View* v, const i64* off) const {
    static_cast<T*>(v[1].data)[off[1]] = static_cast<const T*>(v[0].data)[off[0]];
  }
};

template <class T>
struct RawZeroOp {  // x
  __device__ void operator()(const View* v, const i64* off) const { static_cast<T*>(v[0].data)[off[0]] = T{0}; }
};

// ---- embedding --------------------------------------------------------------------------------

/// out[r] = table[tokens[r]] * s, one warp per row; a token outside the table gives a NaN row.
__global__ void __launch_bounds__(kThreads) embedding_forward_kernel(View tokens, View table, float s, View out) {
  const i64 rows = out.rows(), cols = out.cols, vocab = table.rows();
  const i64 warp = (static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const i64 warps = static_cast<i64>(gridDim.x) * blockDim.x / 32;
  const i64 lane = threadIdx.x % 32;
  for (i64 r = warp; r < rows; r += warps) {
    const i64 t = ld_index(tokens, row_offset(tokens, r));
    const bool valid = t >= 0 && t < vocab;
    const i64 to = valid ? row_offset(table, t) : 0, oo = row_offset(out, r);
    for (i64 c = lane; c < cols; c += 32) store_at(out, oo + c, valid ? __fmul_rn(load_at(table, to + c), s) : __int_as_float(0x7fc00000));
  }
}

/// fp32 dtable: dtable[tokens[r]] += dout[r] * s with atomics, one warp per row.
__global__ void __launch_bounds__(kThreads) embedding_backward_atomic_kernel(View dout, View tokens, float s,
                                                                            View dtable) {
  const i64 rows = dout.rows(), cols = dout.cols, vocab = dtable.rows();
  const i64 warp = (static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const i64 warps = static_cast<i64>(gridDim.x) * blockDim.x / 32;
  const i64 lane = threadIdx.x % 32;
  float* table = static_cast<float*>(dtable.data);
  for (i64 r = warp; r < rows; r += warps) {
    const i64 t = ld_index(tokens, row_offset(tokens, r));
    if (t < 0 || t >= vocab) continue;  // outside the table: skipped
    const i64 to = row_offset(dtable, t), go = row_offset(dout, r);
    for (i64 c = lane; c < cols; c += 32) atomicAdd(table + to + c, __fmul_rn(load_at(dout, go + c), s));
  }
}

constexpr int kOrderedThreads = 64;
constexpr int kOrderedBatch = 8;

/// Any dtable (bf16): one thread per column walks the rows in the reference's order, rounding
/// after every addition as the reference does. Rows are taken kOrderedBatch at a time: when the
/// batch's tokens are distinct its read-modify-writes are independent and issued together.
__global__ void __launch_bounds__(kOrderedThreads) embedding_backward_ordered_kernel(View dout, View tokens, float s,
                                                                                    View dtable) {
  const i64 rows = dout.rows(), cols = dout.cols, vocab = dtable.rows();
  for (i64 c = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; c < cols;
       c += static_cast<i64>(gridDim.x) * blockDim.x) {
    RowCursor cd, ct;
    cd.init(dout, 0);
    ct.init(tokens, 0);
    for (i64 r0 = 0; r0 < rows; r0 += kOrderedBatch) {
      i64 off[kOrderedBatch];  // dtable element offset, -1 for no row / a token outside the table
      float g[kOrderedBatch];
#pragma unroll
      for (int b = 0; b < kOrderedBatch; ++b) {
        off[b] = -1;
        g[b] = 0.0f;
        if (r0 + b < rows) {
          const i64 t = ld_index(tokens, ct.off);
          if (t >= 0 && t < vocab) off[b] = row_offset(dtable, t) + c;
          g[b] = __fmul_rn(load_at(dout, cd.off + c), s);
          cd.next(dout);
          ct.next(tokens);
        }
      }
      bool distinct = true;
#pragma unroll
      for (int a = 0; a < kOrderedBatch; ++a) {
#pragma unroll
        for (int b = a + 1; b < kOrderedBatch; ++b) distinct = distinct && (off[a] < 0 || off[a] != off[b]);
      }
      if (distinct) {
        float old[kOrderedBatch];
#pragma unroll
        for (int b = 0; b < kOrderedBatch; ++b) old[b] = off[b] >= 0 ? load_at(dtable, off[b]) : 0.0f;
#pragma unroll
        for (int b = 0; b < kOrderedBatch; ++b) {
          if (off[b] >= 0) store_at(dtable, off[b], __fadd_rn(old[b], g[b]));
        }
      } else {
#pragma unroll
        for (int b = 0; b < kOrderedBatch; ++b) {
          if (off[b] >= 0) store_at(dtable, off[b], __fadd_rn(load_at(dtable, off[b]), g[b]));
        }
      }
    }
  }
}

/// `value` rounded to bf16 (nearest even) and back, on the host, as the reference's round_to.
float round_to(DType dtype, float value) {
  if (dtype != DType::bf16) return value;
  std::uint32_t bits = 0;
  static_assert(sizeof(bits) == sizeof(value));
  std::memcpy(&bits, &value, sizeof(bits));
  if ((bits & 0x7F800000u) == 0x7F800000u && (bits & 0x007FFFFFu) != 0) {
    bits = (bits | 0x00400000u) & 0xFFFF0000u;  // NaN stays a quiet NaN
  } else {
    bits = ((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16) << 16;
  }
  float out = 0.0f;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

void check_index_view(const View& tokens, i64 rows, const char* kernel) {
  require(tokens.dtype == DType::int32 || tokens.dtype == DType::int64, kernel, "tokens must be int32 or int64");
  require(rows_of(tokens) == rows, kernel, "tokens and the activation have different row counts");
}

}  // namespace

Status gated_forward(GatedActivation a, const View& g, const View& u, const View& out, cudaStream_t stream) {
  return launch_status("gated_forward", [&] {
    launch("gated_forward", Pack<3>{{g, u, out}}, GatedForwardOp{a}, stream);
  });
}

Status gated_backward(GatedActivation a, const View& dout, const View& g, const View& u, const View& dg, const View& du,
                      cudaStream_t stream) {
  return launch_status("gated_backward", [&] {
    launch("gated_backward", Pack<5>{{dout, g, u, dg, du}}, GatedBackwardOp{a}, stream);
  });
}

Status add(const View& a, const View& b, const View& out, cudaStream_t stream) {
  return launch_status("add", [&] {
    launch("add", Pack<3>{{a, b, out}}, AddOp{}, stream);
  });
}

Status softcap(const View& x, float cap, cudaStream_t stream) {
  return launch_status("softcap", [&] {
    require(cap > 0.0f, "softcap", "cap must be positive");
    launch("softcap", Pack<1>{{x}}, SoftcapOp{cap}, stream);
  });
}

namespace {

__device__ __forceinline__ float read_f32(const std::uint8_t* p) {
  const std::uint32_t bits = static_cast<std::uint32_t>(p[0]) | (static_cast<std::uint32_t>(p[1]) << 8) |
                             (static_cast<std::uint32_t>(p[2]) << 16) | (static_cast<std::uint32_t>(p[3]) << 24);
  return __int_as_float(static_cast<int>(bits));
}

// One thread per element, as ref::dequantize computes it (the same fp32 operations in order).
__global__ void __launch_bounds__(kThreads) dequantize_kernel(Quantized q, const std::uint8_t* b, View out) {
  const i64 n = q.rows * q.cols;
  const i64 blocks = (n + kernels::kQuantBlock - 1) / kernels::kQuantBlock;
  const i64 groups = (blocks + kernels::kNestedBlock - 1) / kernels::kNestedBlock;
  const std::uint8_t* scales = b + (n + 1) / 2;
  for (i64 e = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; e < n;
       e += static_cast<i64>(gridDim.x) * blockDim.x) {
    const i64 r = e / q.cols, c = e % q.cols;
    float w = 0.0f;
    if (q.format == kernels::QuantFormat::int8_rows) {
      w = __fdiv_rn(__fmul_rn(static_cast<float>(static_cast<std::int8_t>(b[e])), read_f32(b + n + 4 * r)), 127.0f);
    } else {
      const i64 blk = e / kernels::kQuantBlock;
      float m = 0.0f;
      if (!q.double_quant) {
        m = read_f32(scales + 4 * blk);
      } else {
        const float g = read_f32(scales + blocks + 4 * (blk / kernels::kNestedBlock));
        const float offset = read_f32(scales + blocks + 4 * groups);
        m = __fadd_rn(__fdiv_rn(__fmul_rn(static_cast<float>(static_cast<std::int8_t>(scales[blk])), g), 127.0f), offset);
      }
      const int code = e % 2 == 0 ? b[e / 2] >> 4 : b[e / 2] & 0xF;
      w = __fmul_rn(kernels::quant_code(q.format, code), m);
    }
    store(out, r, c, w);
  }
}

}  // namespace

Status dequantize(const Quantized& q, const void* bytes, const View& out, cudaStream_t stream) {
  return launch_status("dequantize", [&] {
    require(bytes != nullptr || q.rows * q.cols == 0, "dequantize", "no bytes");
    require(rows_of(out) == q.rows && out.cols == q.cols, "dequantize", "out must be rows x cols");
    const i64 n = q.rows * q.cols;
    if (n == 0) return;
    MSTPLAN_LAUNCH(blocks_for(n, kThreads), kThreads, 0, stream, dequantize_kernel)(
        q, static_cast<const std::uint8_t*>(bytes), out);
  });
}

Status scale(const View& x, float s, const View& out, cudaStream_t stream) {
  return launch_status("scale", [&] {
    launch("scale", Pack<2>{{x, out}}, ScaleOp{s}, stream);
  });
}

Status copy(const View& src, const View& dst, cudaStream_t stream) {
  return launch_status("copy", [&] {
    const Pack<2> p{{src, dst}};
    if (src.dtype != dst.dtype) return launch("copy", p, ConvertOp{}, stream);
    switch (src.dtype) {
      case DType::bf16: return launch("copy", p, RawCopyOp<std::uint16_t>{}, stream);
      case DType::fp32:
      case DType::int32: return launch("copy", p, RawCopyOp<std::uint32_t>{}, stream);
      case DType::int64: return launch("copy", p, RawCopyOp<std::uint64_t>{}, stream);
    }
  });
}

Status zero(const View& x, cudaStream_t stream) {
  return launch_status("zero", [&] {
    const Pack<1> p{{x}};
    switch (x.dtype) {
      case DType::bf16: return launch("zero", p, RawZeroOp<std::uint16_t>{}, stream);
      case DType::fp32:
      case DType::int32: return launch("zero", p, RawZeroOp<std::uint32_t>{}, stream);
      case DType::int64: return launch("zero", p, RawZeroOp<std::uint64_t>{}, stream);
    }
  });
}

Status embedding_forward(const View& tokens, const View& table, float scale, const View& out, cudaStream_t stream) {
  return launch_status("embedding_forward", [&] {
    const char* kernel = "embedding_forward";
    const i64 rows = rows_of(out);
    check_index_view(tokens, rows, kernel);
    require(out.cols == table.cols, kernel, "out and table have different column counts");
    if (rows == 0 || out.cols <= 0) return;
    const float s = round_to(out.dtype, scale);
    MSTPLAN_LAUNCH(blocks_for(rows * 32, kThreads), kThreads, 0, stream, embedding_forward_kernel)(tokens, table, s, out);
  });
}

Status embedding_backward(const View& dout, const View& tokens, float scale, const View& dtable, cudaStream_t stream) {
  return launch_status("embedding_backward", [&] {
    const char* kernel = "embedding_backward";
    const i64 rows = rows_of(dout);
    check_index_view(tokens, rows, kernel);
    require(dout.cols == dtable.cols, kernel, "dout and dtable have different column counts");
    if (rows == 0 || dout.cols <= 0) return;
    const float s = round_to(dout.dtype, scale);
    if (dtable.dtype == DType::fp32) {
      MSTPLAN_LAUNCH(blocks_for(rows * 32, kThreads), kThreads, 0, stream, embedding_backward_atomic_kernel)(dout, tokens, s,
                                                                                                 dtable);
    } else {
      MSTPLAN_LAUNCH(blocks_for(dout.cols, kOrderedThreads), kOrderedThreads, 0, stream, embedding_backward_ordered_kernel)(
          dout, tokens, s, dtable);
    }
  });
}

}  // namespace mstplan::cuda
