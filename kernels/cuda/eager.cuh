#pragma once
// Eager attention, one piece at a time (scores and probabilities are (batch*heads*seq) x seq):
// reference.h's eager_* contracts.
#include "kernels/cuda/status.h"
#include "kernels/cuda/view.h"

namespace mstplan::cuda {

Status eager_scores(const AttentionShape& s, const View& q, const View& k, const View& scores, cudaStream_t stream);
Status eager_softmax(const View& scores, const View& probs, cudaStream_t stream);
Status eager_pv(const AttentionShape& s, const View& probs, const View& v, const View& o, cudaStream_t stream);
Status eager_dprobs(const AttentionShape& s, const View& dout, const View& v, const View& dprobs, cudaStream_t stream);
Status eager_dv(const AttentionShape& s, const View& probs, const View& dout, const View& dv, cudaStream_t stream);
Status eager_softmax_backward(const View& probs, const View& dprobs, const View& dscores, cudaStream_t stream);
Status eager_dq(const AttentionShape& s, const View& dscores, const View& k, const View& dq, cudaStream_t stream);
Status eager_dk(const AttentionShape& s, const View& dscores, const View& q, const View& dk, cudaStream_t stream);

}  // namespace mstplan::cuda
