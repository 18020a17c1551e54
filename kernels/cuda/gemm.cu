// GEMMs through cuBLASLt (reference.h's matmul_xwt / matmul_xw / matmul_dw) and the bias
// gradient (a column reduction).
//
// cuBLASLt is column-major: a row-major R x C matrix with row stride ld is, unchanged in memory,
// the column-major C x R matrix with leading dimension ld. So every product is computed
// transposed, with the operands' own rows as cuBLASLt's columns:
//
//   xwt: y^T (out x rows) = op(w) . x^T     A = w  stored in x out (ld w.cols), op T
//                                           B = x  stored in x rows (ld x.cols), op N
//                                           D = y  stored out x rows (ld y.cols)
//   xw:  dx^T (in x rows) = w . dy^T        A = w  stored in x out (ld w.cols), op N
//                                           B = dy stored out x rows (ld dy.cols), op N
//                                           D = dx stored in x rows (ld dx.cols)
//   dw:  dw^T (in x out) = x^T . op(dy)     A = x  stored in x rows (ld x.cols), op N
//                                           B = dy stored out x rows (ld dy.cols), op T
//                                           D = dw stored in x out (ld dw.cols)
//
// A View of several groups (a chunk: B groups of P rows, S rows apart) is B matrices: xwt and xw
// run one strided-batched matmul (batch stride S * cols elements; the weight's stride 0); dw
// sums over every row, so it runs one matmul per group, the first with the requested beta and
// the others with beta 1. C is D (beta 1 accumulates in place), alpha is 1, scale type fp32,
// compute CUBLAS_COMPUTE_32F (fp32 operands: true fp32, no TF32).
#include "kernels/cuda/gemm.cuh"

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <numeric>

#include "kernels/cuda/device.cuh"

namespace mstplan::cuda {

namespace {

std::int64_t element_bytes(DType t) {
  switch (t) {
    case DType::bf16: return 2;
    case DType::fp32: return 4;
    case DType::int32: return 4;
    case DType::int64: return 8;
  }
  return 4;
}

bool is_float(DType t) { return t == DType::bf16 || t == DType::fp32; }

cudaDataType_t cuda_type(DType t) { return t == DType::bf16 ? CUDA_R_16BF : CUDA_R_32F; }

/// Whether the view's rows are consecutive buffer rows (from `first`).
bool one_matrix(const View& v) { return v.seqs <= 1 || v.seq_stride == v.positions; }

/// Address of buffer row `row` of the view's buffer.
char* row_address(const View& v, std::int64_t row) {
  return static_cast<char*>(v.data) + row * v.cols * element_bytes(v.dtype);
}

/// How the rows of two row-operands (same row count) split into matrices of `rows` rows each,
/// `count` of them. `uniform`: matrix b of each operand starts b * stride() buffer rows after its
/// first (one strided-batched call); otherwise each matrix is addressed on its own.
struct RowPlan {
  std::int64_t count = 1, rows = 0;
  bool uniform = true;
};

RowPlan plan_rows(const View& a, const View& b) {
  const std::int64_t total = a.rows();
  if (one_matrix(a) && one_matrix(b)) return {1, total, true};
  std::int64_t g = 0;  // the largest run of rows consecutive in both
  if (!one_matrix(a)) g = std::gcd(g, a.positions);
  if (!one_matrix(b)) g = std::gcd(g, b.positions);
  const bool uniform = (one_matrix(a) || a.positions == g) && (one_matrix(b) || b.positions == g);
  return {total / g, g, uniform};
}

/// Buffer rows between consecutive matrices of a uniform plan.
std::int64_t plan_stride(const View& v, const RowPlan& plan) { return one_matrix(v) ? plan.rows : v.seq_stride; }

/// Largest power of two, at most 256, dividing the address and the byte strides (the alignment
/// cuBLASLt's heuristic must assume; its default is 256).
std::uint32_t alignment_of(const void* p, std::int64_t ld_bytes, std::int64_t batch_stride_bytes) {
  const std::uint64_t bits = static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(p)) |
                             static_cast<std::uint64_t>(ld_bytes) | static_cast<std::uint64_t>(batch_stride_bytes) |
                             256u;
  return static_cast<std::uint32_t>(bits & (~bits + 1u));  // lowest set bit
}

__global__ void add_bias_kernel(View y, View bias) {
  const std::int64_t n = y.rows() * y.cols;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t r = i / y.cols, c = i % y.cols;
    store(y, r, c, load(y, r, c) + load(bias, 0, c));
  }
}

__global__ void zero_kernel(View v) {
  const std::int64_t n = v.rows() * v.cols;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    store(v, i / v.cols, i % v.cols, 0.0f);
  }
}

constexpr int kBiasCols = 32;  // columns per block (one warp wide: coalesced rows)
constexpr int kBiasRows = 16;  // row lanes per block

/// db[c] = sum over rows of dy[r][c] (+ db[c]): each block sums kBiasCols columns, kBiasRows
/// strided partial sums per column added at the end.
__global__ void __launch_bounds__(kBiasCols* kBiasRows) bias_grad_kernel(View dy, View db, bool accumulate) {
  __shared__ float partial[kBiasRows][kBiasCols + 1];
  const std::int64_t c = static_cast<std::int64_t>(blockIdx.x) * kBiasCols + threadIdx.x;
  const std::int64_t rows = dy.rows();
  float acc = 0.0f;
  if (c < dy.cols) {
    for (std::int64_t r = threadIdx.y; r < rows; r += kBiasRows) acc += load(dy, r, c);
  }
  partial[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < dy.cols) {
    float sum = 0.0f;
    for (int i = 0; i < kBiasRows; ++i) sum += partial[i][threadIdx.x];
    if (accumulate) sum += load(db, 0, c);
    store(db, 0, c, sum);
  }
}

}  // namespace

struct Gemm::Problem {
  /// One column-major matrix as cuBLASLt stores it (before its op).
  struct Matrix {
    const void* data = nullptr;
    DType dtype = DType::fp32;
    std::uint64_t rows = 0, cols = 0;
    std::int64_t ld = 0;
    std::int64_t batch_stride = 0;  // elements
  };
  const char* op = "";
  cublasOperation_t trans_a = CUBLAS_OP_N, trans_b = CUBLAS_OP_N;
  Matrix a, b, d;  // C is D
  std::int32_t batch = 1;
  float beta = 0.0f;
  const void* bias = nullptr;  // CUBLASLT_EPILOGUE_BIAS with a bias of D's dtype, length D's rows
};

Gemm::Gemm() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count <= 0) {
    cudaGetLastError();  // leave no error behind for the caller's launch checks
    return;
  }
  cublasLtHandle_t handle = nullptr;
  if (cublasLtCreate(&handle) == CUBLAS_STATUS_SUCCESS) handle_ = handle;
}

Gemm::~Gemm() {
  if (handle_ != nullptr) cublasLtDestroy(static_cast<cublasLtHandle_t>(handle_));
}

void Gemm::fail(const char* op, const char* what, int status) {
  if (last_error_ != nullptr) return;  // keep the first failure of the call
  if (status != 0) {
    std::snprintf(error_text_, sizeof error_text_, "Gemm::%s: %s failed: %s", op, what,
                  cublasLtGetStatusName(static_cast<cublasStatus_t>(status)));
  } else {
    std::snprintf(error_text_, sizeof error_text_, "Gemm::%s: %s", op, what);
  }
  last_error_ = error_text_;
}

bool Gemm::run(const Problem& p, cudaStream_t stream) {
  auto* const lt = static_cast<cublasLtHandle_t>(handle_);
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t layout_a = nullptr, layout_b = nullptr, layout_d = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  struct Cleanup {  // descriptors are host objects, destroyed on every path
    cublasLtMatmulDesc_t& desc;
    cublasLtMatrixLayout_t &a, &b, &d;
    cublasLtMatmulPreference_t& pref;
    ~Cleanup() {
      if (pref != nullptr) cublasLtMatmulPreferenceDestroy(pref);
      if (d != nullptr) cublasLtMatrixLayoutDestroy(d);
      if (b != nullptr) cublasLtMatrixLayoutDestroy(b);
      if (a != nullptr) cublasLtMatrixLayoutDestroy(a);
      if (desc != nullptr) cublasLtMatmulDescDestroy(desc);
    }
  } cleanup{desc, layout_a, layout_b, layout_d, pref};

  const auto ok = [&](cublasStatus_t status, const char* call) {
    if (status == CUBLAS_STATUS_SUCCESS) return true;
    fail(p.op, call, static_cast<int>(status));
    return false;
  };

  if (!ok(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate")) return false;
  const auto trans_a = static_cast<std::int32_t>(p.trans_a), trans_b = static_cast<std::int32_t>(p.trans_b);
  if (!ok(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a, sizeof trans_a),
          "cublasLtMatmulDescSetAttribute(TRANSA)") ||
      !ok(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b, sizeof trans_b),
          "cublasLtMatmulDescSetAttribute(TRANSB)")) {
    return false;
  }
  if (p.bias != nullptr) {
    // The bias has D's dtype (the attribute's default, so BIAS_DATA_TYPE is left unset) and one
    // value per row of D (an output feature); batch stride 0: the same bias for every matrix.
    const auto epilogue = static_cast<std::uint32_t>(CUBLASLT_EPILOGUE_BIAS);
    if (!ok(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue),
            "cublasLtMatmulDescSetAttribute(EPILOGUE)") ||
        !ok(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &p.bias, sizeof p.bias),
            "cublasLtMatmulDescSetAttribute(BIAS_POINTER)")) {
      return false;
    }
  }

  const auto make_layout = [&](cublasLtMatrixLayout_t* layout, const Problem::Matrix& m) {
    if (!ok(cublasLtMatrixLayoutCreate(layout, cuda_type(m.dtype), m.rows, m.cols, m.ld), "cublasLtMatrixLayoutCreate")) {
      return false;
    }
    if (p.batch > 1) {
      const std::int32_t count = p.batch;
      const std::int64_t stride = m.batch_stride;
      if (!ok(cublasLtMatrixLayoutSetAttribute(*layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count),
              "cublasLtMatrixLayoutSetAttribute(BATCH_COUNT)") ||
          !ok(cublasLtMatrixLayoutSetAttribute(*layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                               sizeof stride),
              "cublasLtMatrixLayoutSetAttribute(STRIDED_BATCH_OFFSET)")) {
        return false;
      }
    }
    return true;
  };
  if (!make_layout(&layout_a, p.a) || !make_layout(&layout_b, p.b) || !make_layout(&layout_d, p.d)) return false;

  const auto align = [&](const Problem::Matrix& m) {
    const std::int64_t size = element_bytes(m.dtype);
    return alignment_of(m.data, m.ld * size, p.batch > 1 ? m.batch_stride * size : 0);
  };
  const std::uint64_t workspace_bytes = workspace_ != nullptr ? workspace_bytes_ : 0;
  const std::uint32_t align_a = align(p.a), align_b = align(p.b), align_d = align(p.d);
  if (!ok(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate") ||
      !ok(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes,
                                               sizeof workspace_bytes),
          "cublasLtMatmulPreferenceSetAttribute(MAX_WORKSPACE_BYTES)") ||
      !ok(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a,
                                               sizeof align_a),
          "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT_A_BYTES)") ||
      !ok(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b,
                                               sizeof align_b),
          "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT_B_BYTES)") ||
      !ok(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d,
                                               sizeof align_d),
          "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT_C_BYTES)") ||
      !ok(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d,
                                               sizeof align_d),
          "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT_D_BYTES)")) {
    return false;
  }

  cublasLtMatmulHeuristicResult_t heuristic{};
  int found = 0;
  const cublasStatus_t searched =
      cublasLtMatmulAlgoGetHeuristic(lt, desc, layout_a, layout_b, layout_d, layout_d, pref, 1, &heuristic, &found);
  if (searched == CUBLAS_STATUS_NOT_SUPPORTED || (searched == CUBLAS_STATUS_SUCCESS && found < 1)) {
    // No algorithm. With the bias epilogue the caller retries without it; otherwise it fails.
    if (p.bias == nullptr) fail(p.op, "cublasLtMatmulAlgoGetHeuristic (no algorithm)", CUBLAS_STATUS_NOT_SUPPORTED);
    return false;
  }
  if (!ok(searched, "cublasLtMatmulAlgoGetHeuristic")) return false;
  const float alpha = 1.0f;  // alpha and beta are host scalars, read before cublasLtMatmul returns
  void* const d = const_cast<void*>(p.d.data);
  return ok(cublasLtMatmul(lt, desc, &alpha, p.a.data, layout_a, p.b.data, layout_b, &p.beta, d, layout_d, d,
                           layout_d, &heuristic.algo, workspace_bytes > 0 ? workspace_ : nullptr,
                           static_cast<std::size_t>(workspace_bytes), stream),
            "cublasLtMatmul");
}

namespace {

/// The checks every GEMM makes: float dtypes, both inputs of one dtype.
const char* dtype_problem(const View& in_a, const View& in_b, const View& out) {
  if (!is_float(in_a.dtype) || !is_float(in_b.dtype) || !is_float(out.dtype)) return "operands must be bf16 or fp32";
  if (in_a.dtype != in_b.dtype) return "the two inputs have different dtypes";
  return nullptr;
}

}  // namespace

Status Gemm::xwt(const View& x, const View& w, const View* bias, const View& y, bool accumulate, cudaStream_t stream) {
  [&] {
    last_error_ = nullptr;
    if (handle_ == nullptr) return;
    const std::int64_t rows = x.rows(), in = x.cols, out = w.rows();
    if (y.rows() != rows || w.cols != in || y.cols != out ||
        (bias != nullptr && (bias->rows() != 1 || bias->cols != out || !is_float(bias->dtype)))) {
      fail("xwt", "shapes do not match (x rows x in, w out x in, bias 1 x out, y rows x out)", 0);
      return;
    }
    if (const char* problem = dtype_problem(x, w, y)) {
      fail("xwt", problem, 0);
      return;
    }
    if (!one_matrix(w)) {
      fail("xwt", "the weight is not one matrix", 0);
      return;
    }
    if (rows == 0) return;
    // The epilogue takes a bias of D's dtype; another dtype is added by a kernel afterwards.
    const bool epilogue_bias = bias != nullptr && bias->dtype == y.dtype;
    const RowPlan plan = plan_rows(x, y);
    Problem p;
    p.op = "xwt";
    p.trans_a = CUBLAS_OP_T;
    p.trans_b = CUBLAS_OP_N;
    p.a = {row_address(w, w.first), w.dtype, static_cast<std::uint64_t>(in), static_cast<std::uint64_t>(out), w.cols, 0};
    p.b = {nullptr, x.dtype, static_cast<std::uint64_t>(in), static_cast<std::uint64_t>(plan.rows), x.cols,
           plan_stride(x, plan) * x.cols};
    p.d = {nullptr, y.dtype, static_cast<std::uint64_t>(out), static_cast<std::uint64_t>(plan.rows), y.cols,
           plan_stride(y, plan) * y.cols};
    p.beta = accumulate ? 1.0f : 0.0f;
    p.bias = epilogue_bias ? static_cast<const void*>(row_address(*bias, bias->first)) : nullptr;
    // One matmul over `part` (y's rows it writes); where no algorithm takes the bias epilogue (a
    // layout or alignment it does not support), the matmul alone and then the bias kernel.
    const auto matmul = [&](const View& part) {
      if (run(p, stream) || p.bias == nullptr || last_error_ != nullptr) return;
      Problem plain = p;
      plain.bias = nullptr;
      if (run(plain, stream)) MSTPLAN_LAUNCH(blocks_for(part.rows() * out, 256), 256, 0, stream, add_bias_kernel)(part, *bias);
    };
    if (plan.uniform) {
      p.batch = static_cast<std::int32_t>(plan.count);
      p.b.data = row_address(x, x.first);
      p.d.data = row_address(y, y.first);
      matmul(y);
    } else {
      for (std::int64_t s = 0; s < plan.count && last_error_ == nullptr; ++s) {
        p.b.data = row_address(x, x.buffer_row(s * plan.rows));
        p.d.data = row_address(y, y.buffer_row(s * plan.rows));
        matmul(View{const_cast<void*>(p.d.data), y.dtype, y.cols, 1, plan.rows, plan.rows, 0});
      }
    }
    if (last_error_ == nullptr && bias != nullptr && !epilogue_bias) {
      MSTPLAN_LAUNCH(blocks_for(rows * out, 256), 256, 0, stream, add_bias_kernel)(y, *bias);
    }
  }();
  return last_error_ != nullptr ? Status{last_error_} : Status{};
}

Status Gemm::xw(const View& dy, const View& w, const View& dx, bool accumulate, cudaStream_t stream) {
  [&] {
    last_error_ = nullptr;
    if (handle_ == nullptr) return;
    const std::int64_t rows = dy.rows(), out = dy.cols, in = w.cols;
    if (w.rows() != out || dx.rows() != rows || dx.cols != in) {
      fail("xw", "shapes do not match (dy rows x out, w out x in, dx rows x in)", 0);
      return;
    }
    if (const char* problem = dtype_problem(dy, w, dx)) {
      fail("xw", problem, 0);
      return;
    }
    if (!one_matrix(w)) {
      fail("xw", "the weight is not one matrix", 0);
      return;
    }
    if (rows == 0) return;
    const RowPlan plan = plan_rows(dy, dx);
    Problem p;
    p.op = "xw";
    p.trans_a = CUBLAS_OP_N;
    p.trans_b = CUBLAS_OP_N;
    p.a = {row_address(w, w.first), w.dtype, static_cast<std::uint64_t>(in), static_cast<std::uint64_t>(out), w.cols, 0};
    p.b = {nullptr, dy.dtype, static_cast<std::uint64_t>(out), static_cast<std::uint64_t>(plan.rows), dy.cols,
           plan_stride(dy, plan) * dy.cols};
    p.d = {nullptr, dx.dtype, static_cast<std::uint64_t>(in), static_cast<std::uint64_t>(plan.rows), dx.cols,
           plan_stride(dx, plan) * dx.cols};
    p.beta = accumulate ? 1.0f : 0.0f;
    if (plan.uniform) {
      p.batch = static_cast<std::int32_t>(plan.count);
      p.b.data = row_address(dy, dy.first);
      p.d.data = row_address(dx, dx.first);
      run(p, stream);
    } else {
      for (std::int64_t s = 0; s < plan.count && last_error_ == nullptr; ++s) {
        p.b.data = row_address(dy, dy.buffer_row(s * plan.rows));
        p.d.data = row_address(dx, dx.buffer_row(s * plan.rows));
        run(p, stream);
      }
    }
  }();
  return last_error_ != nullptr ? Status{last_error_} : Status{};
}

Status Gemm::dw(const View& dy, const View& x, const View& dw, bool accumulate, cudaStream_t stream) {
  [&] {
    last_error_ = nullptr;
    if (handle_ == nullptr) return;
    const std::int64_t rows = dy.rows(), out = dy.cols, in = x.cols;
    if (x.rows() != rows || dw.rows() != out || dw.cols != in) {
      fail("dw", "shapes do not match (dy rows x out, x rows x in, dw out x in)", 0);
      return;
    }
    if (const char* problem = dtype_problem(dy, x, dw)) {
      fail("dw", problem, 0);
      return;
    }
    if (!one_matrix(dw)) {
      fail("dw", "the weight gradient is not one matrix", 0);
      return;
    }
    if (rows == 0) {  // a sum over no rows
      if (!accumulate) MSTPLAN_LAUNCH(blocks_for(out * in, 256), 256, 0, stream, zero_kernel)(dw);
      return;
    }
    const RowPlan plan = plan_rows(dy, x);
    Problem p;
    p.op = "dw";
    p.trans_a = CUBLAS_OP_N;
    p.trans_b = CUBLAS_OP_T;
    p.a = {nullptr, x.dtype, static_cast<std::uint64_t>(in), static_cast<std::uint64_t>(plan.rows), x.cols, 0};
    p.b = {nullptr, dy.dtype, static_cast<std::uint64_t>(out), static_cast<std::uint64_t>(plan.rows), dy.cols, 0};
    p.d = {row_address(dw, dw.first), dw.dtype, static_cast<std::uint64_t>(in), static_cast<std::uint64_t>(out), dw.cols,
           0};
    // One matmul per matrix of rows: the sum runs through D (beta 1 after the first).
    for (std::int64_t s = 0; s < plan.count && last_error_ == nullptr; ++s) {
      p.a.data = row_address(x, x.buffer_row(s * plan.rows));
      p.b.data = row_address(dy, dy.buffer_row(s * plan.rows));
      p.beta = (s == 0 && !accumulate) ? 0.0f : 1.0f;
      run(p, stream);
    }
  }();
  return last_error_ != nullptr ? Status{last_error_} : Status{};
}

Status bias_grad(const View& dy, const View& db, bool accumulate, cudaStream_t stream) {
  return launch_status("bias_grad", [&] {
    if (dy.cols <= 0) return;
    const auto blocks = static_cast<unsigned>((dy.cols + kBiasCols - 1) / kBiasCols);
    MSTPLAN_LAUNCH(blocks, dim3(kBiasCols, kBiasRows), 0, stream, bias_grad_kernel)(dy, db, accumulate);
  });
}

}  // namespace mstplan::cuda
