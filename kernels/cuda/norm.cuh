#pragma once
// RMSNorm forward, apply (selective recompute) and backward: reference.h's contracts.
#include "kernels/cuda/status.h"
#include "kernels/cuda/view.h"

namespace mstplan::cuda {

Status rmsnorm_forward(const View& x, const View& w, float eps, float offset, const View& y, const View& rstd,
                       cudaStream_t stream);
Status rmsnorm_apply(const View& x, const View& rstd, const View& w, float offset, const View& y, cudaStream_t stream);
/// residual may be null; dw may be null.
Status rmsnorm_backward(const View& dy, const View& x, const View& rstd, const View& w, float offset, const View* residual,
                        const View& dx, const View* dw, bool dw_accumulate, cudaStream_t stream);

}  // namespace mstplan::cuda
