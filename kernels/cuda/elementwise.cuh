#pragma once
// Gated MLP activations, residual add, soft-capping, copy with casts, zero, embedding forward
// and backward: reference.h's contracts.
#include "kernels/cuda/status.h"
#include "kernels/cuda/view.h"

namespace mstplan::cuda {

Status gated_forward(GatedActivation a, const View& g, const View& u, const View& out, cudaStream_t stream);
Status gated_backward(GatedActivation a, const View& dout, const View& g, const View& u, const View& dg, const View& du,
                      cudaStream_t stream);
Status add(const View& a, const View& b, const View& out, cudaStream_t stream);
Status softcap(const View& x, float cap, cudaStream_t stream);
/// A quantized base weight's values from its quantized_bytes(q) bytes at `bytes` (device memory)
/// into out (rows x cols): ref::dequantize's contract, bit-exact.
Status dequantize(const Quantized& q, const void* bytes, const View& out, cudaStream_t stream);
/// out = s x (out may be x), as ref::scale.
Status scale(const View& x, float s, const View& out, cudaStream_t stream);
Status copy(const View& src, const View& dst, cudaStream_t stream);
Status zero(const View& x, cudaStream_t stream);
Status embedding_forward(const View& tokens, const View& table, float scale, const View& out, cudaStream_t stream);
/// Always accumulates into dtable: fp32 tables by atomics (the order of additions is not the
/// reference's); bf16 tables column by column in the reference's row order (bit-exact).
Status embedding_backward(const View& dout, const View& tokens, float scale, const View& dtable, cudaStream_t stream);

}  // namespace mstplan::cuda
