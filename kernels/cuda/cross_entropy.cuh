#pragma once
// LM-head cross-entropy per mini-sequence: fp32 softmax, ignore index -100, soft-capping,
// dlogits in the forward (forward-grad mode) or from the kept log-sum-exp (recompute mode):
// reference.h's contracts. `loss` is a device fp32 scalar the kernel adds to.
#include "kernels/cuda/status.h"
#include "kernels/cuda/view.h"

namespace mstplan::cuda {

/// lse and dlogits may be null.
Status cross_entropy_forward(const View& logits, const View& targets, float scale, float softcap, float* loss,
                             const View* lse, const View* dlogits, cudaStream_t stream);
Status cross_entropy_backward(const View& logits, const View& lse, const View& targets, float scale, float softcap,
                              const View& dlogits, cudaStream_t stream);

}  // namespace mstplan::cuda
