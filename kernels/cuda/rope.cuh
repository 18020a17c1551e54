#pragma once
// Rotary embedding in place (Hugging Face's rotate_half), forward or inverse: reference.h.
#include "kernels/cuda/status.h"
#include "kernels/cuda/view.h"

namespace mstplan::cuda {

Status rope(const View& x, std::int64_t head_dim, const Rope& rope, std::int64_t seq_len, bool inverse,
            cudaStream_t stream);

}  // namespace mstplan::cuda
