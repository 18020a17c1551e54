#pragma once
// GEMMs through cuBLASLt: bf16 or fp32 operands, fp32 accumulation (CUBLAS_COMPUTE_32F), the
// layouts of reference.h's matmul_xwt / matmul_xw / matmul_dw (row-major Views; a View with
// several groups is one strided-batched call, or one call per group where the strides are not
// uniform). The workspace is the program's `gemm_workspace` tensor, bound once per executor.
#include <cstddef>

#include "kernels/cuda/status.h"
#include "kernels/cuda/view.h"

namespace mstplan::cuda {

/// A cuBLASLt handle with the workspace it may use. Create one per backend.
class Gemm {
 public:
  Gemm();
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;
  /// The workspace cuBLASLt may use (the program's tensor); before it is bound: none.
  void bind_workspace(void* data, std::size_t bytes) { workspace_ = data; workspace_bytes_ = bytes; }
  // Each call returns why it was not enqueued (the failing cuBLASLt call and its status, or a
  // shape or dtype it does not take), or ok.
  /// y = x . w^T [+ bias] (accumulate: y +=).
  Status xwt(const View& x, const View& w, const View* bias, const View& y, bool accumulate, cudaStream_t stream);
  /// dx = dy . w (accumulate: dx +=).
  Status xw(const View& dy, const View& w, const View& dx, bool accumulate, cudaStream_t stream);
  /// dw = dy^T . x summed over every row (accumulate: dw +=).
  Status dw(const View& dy, const View& x, const View& dw, bool accumulate, cudaStream_t stream);
  /// Whether the handle was created (false: no device; every call then does nothing).
  [[nodiscard]] bool ok() const { return handle_ != nullptr; }

 private:
  struct Problem;  // one cuBLASLt matmul (gemm.cu)
  bool run(const Problem& p, cudaStream_t stream);  // false: not enqueued
  void fail(const char* op, const char* what, int status);

  void* handle_ = nullptr;  // cublasLtHandle_t
  void* workspace_ = nullptr;
  std::size_t workspace_bytes_ = 0;
  const char* last_error_ = nullptr;  // the running call's first failure: null or error_text_
  char error_text_[192] = {};
};

/// db (1 x out) = sum over rows of dy (accumulate: db +=).
Status bias_grad(const View& dy, const View& db, bool accumulate, cudaStream_t stream);

}  // namespace mstplan::cuda
