#pragma once
// Causal GQA attention with O(S) extra memory (FlashAttention-2's algorithm: blockwise with an
// online softmax; output and log-sum-exp saved), forward and backward, with soft-capping and a
// sliding window: reference.h's attention_forward / attention_backward. No S x S buffer.
#include "kernels/cuda/status.h"
#include "kernels/cuda/view.h"

namespace mstplan::cuda {

Status attention_forward(const AttentionShape& s, const View& q, const View& k, const View& v, const View& o,
                         const View& lse, cudaStream_t stream);
Status attention_backward(const AttentionShape& s, const View& q, const View& k, const View& v, const View& o,
                          const View& lse, const View& dout, const View& dq, const View& dk, const View& dv,
                          const View& dq_accum, const View& delta, cudaStream_t stream);

}  // namespace mstplan::cuda
