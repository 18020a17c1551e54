// The part of cuBLASLt that kernels/cuda/gemm.cu calls, on the CPU: matmul descriptors (fp32
// compute and scale, TRANSA / TRANSB, the BIAS epilogue and its pointer), matrix layouts
// (bf16 or fp32, rows, cols, leading dimension, strided batches), preferences (workspace and
// minimum alignments, kept with the algorithm) and cublasLtMatmul with cuBLASLt's documented
// semantics, column-major:
//
//   D = alpha * op(A) . op(B) + beta * C (+ bias[i] on row i of D with the BIAS epilogue)
//   op(A): m x k (A stored m x k for N, k x m for T; element (r, c) of a stored matrix at
//   r + c * ld), op(B): k x n, C and D: m x n; batch b of a matrix at b * its batch stride.
//
// What a real call refuses is refused here with its status, so that a layout mistake in gemm.cu
// fails its test: shapes that do not chain (m, n, k), a leading dimension below the rows, batch
// counts that differ, C's layout other than D's when C is D, operands of another type than the
// ones supported (bf16 or fp32, A and B alike), and an operand less aligned than the preference
// promised (cuBLASLt would pick a kernel that faults). Accumulation is fp32 in k order; the
// result is rounded to D's type.
#include <cublasLt.h>
#include <cuda_bf16.h>

#include <bit>
#include <cstdint>
#include <cstring>
#include <new>

namespace {

struct Desc {
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  cudaDataType_t scale = CUDA_R_32F;
  cublasOperation_t trans_a = CUBLAS_OP_N, trans_b = CUBLAS_OP_N;
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;
};

struct Layout {
  cudaDataType_t type = CUDA_R_32F;
  std::uint64_t rows = 0, cols = 0;
  std::int64_t ld = 0;
  std::int32_t batch_count = 1;
  std::int64_t batch_stride = 0;  ///< elements
};

struct Preference {
  std::uint64_t workspace_bytes = 0;
  std::uint32_t align_a = 256, align_b = 256, align_c = 256, align_d = 256;
};

/// What an "algorithm" carries from the heuristic to the matmul: the alignments it assumed.
struct Algo {
  std::uint32_t align_a, align_b, align_c, align_d;
};
static_assert(sizeof(Algo) <= sizeof(cublasLtMatmulAlgo_t));

Desc* desc_of(cublasLtMatmulDesc_t d) { return reinterpret_cast<Desc*>(d); }
Layout* layout_of(cublasLtMatrixLayout_t l) { return reinterpret_cast<Layout*>(l); }
Preference* pref_of(cublasLtMatmulPreference_t p) { return reinterpret_cast<Preference*>(p); }

template <typename T>
cublasStatus_t read_value(T& out, const void* buf, std::size_t size) {
  if (buf == nullptr || size != sizeof(T)) return CUBLAS_STATUS_INVALID_VALUE;
  std::memcpy(&out, buf, sizeof(T));
  return CUBLAS_STATUS_SUCCESS;
}

/// An enum attribute stored as `Stored` (int32 for operations, uint32 for the epilogue).
template <typename Stored, typename Enum>
cublasStatus_t read_enum(Enum& out, const void* buf, std::size_t size) {
  Stored v{};
  const cublasStatus_t s = read_value(v, buf, size);
  if (s == CUBLAS_STATUS_SUCCESS) out = static_cast<Enum>(v);
  return s;
}

/// A new descriptor holding `value`, as the opaque handle type.
template <typename Handle, typename T>
cublasStatus_t create(Handle* out, const T& value) {
  auto* p = new (std::nothrow) T(value);
  if (p == nullptr) return CUBLAS_STATUS_ALLOC_FAILED;
  *out = reinterpret_cast<Handle>(p);
  return CUBLAS_STATUS_SUCCESS;
}

bool supported_type(cudaDataType_t t) { return t == CUDA_R_16BF || t == CUDA_R_32F; }

float load(const void* base, cudaDataType_t t, std::int64_t index) {
  if (t == CUDA_R_16BF) return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[index]);
  return static_cast<const float*>(base)[index];
}
void store(void* base, cudaDataType_t t, std::int64_t index, float x) {
  if (t == CUDA_R_16BF) {
    static_cast<__nv_bfloat16*>(base)[index] = __float2bfloat16_rn(x);
  } else {
    static_cast<float*>(base)[index] = x;
  }
}

bool aligned(const void* p, std::uint32_t alignment) {
  return alignment == 0 || std::bit_cast<std::uintptr_t>(p) % alignment == 0;
}

/// op(X)'s (rows, cols) for a stored layout.
void op_shape(const Layout& l, cublasOperation_t op, std::uint64_t& rows, std::uint64_t& cols) {
  rows = op == CUBLAS_OP_N ? l.rows : l.cols;
  cols = op == CUBLAS_OP_N ? l.cols : l.rows;
}

/// The checks cublasLtMatmulAlgoGetHeuristic and cublasLtMatmul make on a problem.
cublasStatus_t check_problem(const Desc& d, const Layout& a, const Layout& b, const Layout& c, const Layout& out) {
  if (d.compute != CUBLAS_COMPUTE_32F || d.scale != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (!supported_type(a.type) || !supported_type(out.type) || a.type != b.type || c.type != out.type) {
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (d.trans_a == CUBLAS_OP_C || d.trans_b == CUBLAS_OP_C) return CUBLAS_STATUS_NOT_SUPPORTED;
  std::uint64_t m = 0, k = 0, k2 = 0, n = 0;
  op_shape(a, d.trans_a, m, k);
  op_shape(b, d.trans_b, k2, n);
  if (k != k2 || out.rows != m || out.cols != n || c.rows != m || c.cols != n) return CUBLAS_STATUS_INVALID_VALUE;
  for (const Layout* l : {&a, &b, &c, &out}) {
    if (l->ld < static_cast<std::int64_t>(l->rows) || l->ld < 1) return CUBLAS_STATUS_INVALID_VALUE;
    if (l->batch_count != out.batch_count || l->batch_count < 1) return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (d.epilogue != CUBLASLT_EPILOGUE_DEFAULT && d.epilogue != CUBLASLT_EPILOGUE_BIAS) return CUBLAS_STATUS_NOT_SUPPORTED;
  return CUBLAS_STATUS_SUCCESS;
}

}  // namespace

struct cublasLtContext {
  int unused = 0;
};

extern "C" {

cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle) {
  *handle = new cublasLtContext;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle) {
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

const char* cublasLtGetStatusName(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    default: return "CUBLAS_STATUS_UNKNOWN (CUDA emulation)";
  }
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t compute,
                                        cudaDataType_t scale) {
  return create(desc, Desc{.compute = compute, .scale = scale});
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
  delete desc_of(desc);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr,
                                              const void* buf, std::size_t size) {
  Desc& d = *desc_of(desc);
  switch (attr) {
    case CUBLASLT_MATMUL_DESC_TRANSA: return read_enum<std::int32_t>(d.trans_a, buf, size);
    case CUBLASLT_MATMUL_DESC_TRANSB: return read_enum<std::int32_t>(d.trans_b, buf, size);
    case CUBLASLT_MATMUL_DESC_EPILOGUE: return read_enum<std::uint32_t>(d.epilogue, buf, size);
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: return read_value(d.bias, buf, size);
    default: return CUBLAS_STATUS_NOT_SUPPORTED;
  }
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType type, std::uint64_t rows,
                                          std::uint64_t cols, std::int64_t ld) {
  return create(layout, Layout{.type = type, .rows = rows, .cols = cols, .ld = ld});
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
  delete layout_of(layout);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t layout, cublasLtMatrixLayoutAttribute_t attr,
                                                const void* buf, std::size_t size) {
  Layout& l = *layout_of(layout);
  switch (attr) {
    case CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT: return read_value(l.batch_count, buf, size);
    case CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET: return read_value(l.batch_stride, buf, size);
    default: return CUBLAS_STATUS_NOT_SUPPORTED;
  }
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
  return create(pref, Preference{});
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
  delete pref_of(pref);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void* buf,
                                                    std::size_t size) {
  Preference& p = *pref_of(pref);
  switch (attr) {
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES: return read_value(p.workspace_bytes, buf, size);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES: return read_value(p.align_a, buf, size);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES: return read_value(p.align_b, buf, size);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES: return read_value(p.align_c, buf, size);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES: return read_value(p.align_d, buf, size);
    default: return CUBLAS_STATUS_NOT_SUPPORTED;
  }
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                              cublasLtMatmulPreference_t pref, int requested,
                                              cublasLtMatmulHeuristicResult_t results[], int* returned) {
  if (handle == nullptr || requested < 1 || returned == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *returned = 0;
  const cublasStatus_t s = check_problem(*desc_of(desc), *layout_of(a), *layout_of(b), *layout_of(c), *layout_of(d));
  if (s != CUBLAS_STATUS_SUCCESS) return s;
  const Preference& p = *pref_of(pref);
  results[0] = cublasLtMatmulHeuristicResult_t{};
  const Algo algo{p.align_a, p.align_b, p.align_c, p.align_d};
  std::memcpy(&results[0].algo, &algo, sizeof algo);
  results[0].state = CUBLAS_STATUS_SUCCESS;
  results[0].wavesCount = 1.0f;
  *returned = 1;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void* alpha_ptr,
                              const void* a_data, cublasLtMatrixLayout_t a_layout, const void* b_data,
                              cublasLtMatrixLayout_t b_layout, const void* beta_ptr, const void* c_data,
                              cublasLtMatrixLayout_t c_layout, void* d_data, cublasLtMatrixLayout_t d_layout,
                              const cublasLtMatmulAlgo_t* algo_ptr, void* /*workspace*/, std::size_t /*workspace_bytes*/,
                              cudaStream_t /*stream*/) {
  if (handle == nullptr || alpha_ptr == nullptr || beta_ptr == nullptr || algo_ptr == nullptr) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  const Desc& d = *desc_of(desc);
  const Layout &a = *layout_of(a_layout), &b = *layout_of(b_layout), &c = *layout_of(c_layout),
               &out = *layout_of(d_layout);
  if (const cublasStatus_t s = check_problem(d, a, b, c, out); s != CUBLAS_STATUS_SUCCESS) return s;
  if (c_data == d_data && (c.ld != out.ld || c.type != out.type || c.batch_stride != out.batch_stride)) {
    return CUBLAS_STATUS_INVALID_VALUE;  // in place only with C's layout equal to D's
  }
  Algo algo{};
  std::memcpy(&algo, algo_ptr, sizeof algo);
  if (!aligned(a_data, algo.align_a) || !aligned(b_data, algo.align_b) || !aligned(c_data, algo.align_c) ||
      !aligned(d_data, algo.align_d)) {
    return CUBLAS_STATUS_EXECUTION_FAILED;  // a kernel chosen for that alignment would fault
  }
  const float alpha = *static_cast<const float*>(alpha_ptr), beta = *static_cast<const float*>(beta_ptr);
  std::uint64_t m = 0, k = 0, n = 0;
  op_shape(a, d.trans_a, m, k);
  n = out.cols;
  for (std::int32_t batch = 0; batch < out.batch_count; ++batch) {
    const std::int64_t a0 = batch * a.batch_stride, b0 = batch * b.batch_stride;
    const std::int64_t c0 = batch * c.batch_stride, d0 = batch * out.batch_stride;
    for (std::uint64_t j = 0; j < n; ++j) {
      for (std::uint64_t i = 0; i < m; ++i) {
        float acc = 0.0f;
        for (std::uint64_t p = 0; p < k; ++p) {
          const std::int64_t ai = d.trans_a == CUBLAS_OP_N ? static_cast<std::int64_t>(i + p * a.ld)
                                                           : static_cast<std::int64_t>(p + i * a.ld);
          const std::int64_t bi = d.trans_b == CUBLAS_OP_N ? static_cast<std::int64_t>(p + j * b.ld)
                                                           : static_cast<std::int64_t>(j + p * b.ld);
          acc += load(a_data, a.type, a0 + ai) * load(b_data, b.type, b0 + bi);
        }
        float value = alpha * acc;
        const auto ci = static_cast<std::int64_t>(i + j * c.ld), di = static_cast<std::int64_t>(i + j * out.ld);
        if (beta != 0.0f) value += beta * load(c_data, c.type, c0 + ci);
        if (d.epilogue == CUBLASLT_EPILOGUE_BIAS) value += load(d.bias, out.type, static_cast<std::int64_t>(i));
        store(d_data, out.type, d0 + di, value);
      }
    }
  }
  return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"
