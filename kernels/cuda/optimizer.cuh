#pragma once
// AdamW (bf16 state, or fp32 master + fp32 state) and SGD, one parameter tensor per call, usable
// per parameter inside backward: reference.h's contracts.
#include "kernels/cuda/status.h"
#include "kernels/cuda/view.h"

namespace mstplan::cuda {

/// master may be null.
Status adamw(const AdamW& o, const View& g, const View& w, const View& m, const View& v, const View* master,
             cudaStream_t stream);
Status sgd(float lr, float weight_decay, const View& g, const View& w, const View* master, cudaStream_t stream);

}  // namespace mstplan::cuda
