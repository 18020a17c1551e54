#include "runtime/cpu_backend.h"

#include <cstdlib>
#include <cstring>

namespace mstplan {

void* CpuBackend::allocate(Device, std::size_t bytes) {
  // The size is a multiple of 256 already (the allocator rounds); 0 still gets a block.
  return std::aligned_alloc(256, bytes == 0 ? 256 : (bytes + 255) / 256 * 256);
}
void CpuBackend::release(Device, void* pointer, std::size_t) { std::free(pointer); }
bool CpuBackend::host_accessible() const { return true; }
void CpuBackend::copy_bytes(void* dst, const void* src, std::size_t bytes) { std::memcpy(dst, src, bytes); }
void CpuBackend::matmul_xwt(const View& x, const View& w, const std::optional<View>& bias, const View& y, bool accumulate) { ref::matmul_xwt(x, w, bias, y, accumulate); }
void CpuBackend::matmul_xw(const View& dy, const View& w, const View& dx, bool accumulate) { ref::matmul_xw(dy, w, dx, accumulate); }
void CpuBackend::matmul_dw(const View& dy, const View& x, const View& dw, bool accumulate) { ref::matmul_dw(dy, x, dw, accumulate); }
void CpuBackend::bias_grad(const View& dy, const View& db, bool accumulate) { ref::bias_grad(dy, db, accumulate); }
void CpuBackend::rmsnorm_forward(const View& x, const View& w, float eps, float offset, const View& y, const View& rstd) { ref::rmsnorm_forward(x, w, eps, offset, y, rstd); }
void CpuBackend::rmsnorm_apply(const View& x, const View& rstd, const View& w, float offset, const View& y) { ref::rmsnorm_apply(x, rstd, w, offset, y); }
void CpuBackend::rmsnorm_backward(const View& dy, const View& x, const View& rstd, const View& w, float offset, const std::optional<View>& residual, const View& dx, const std::optional<View>& dw, bool dw_accumulate) { ref::rmsnorm_backward(dy, x, rstd, w, offset, residual, dx, dw, dw_accumulate); }
void CpuBackend::rope(const View& x, std::int64_t head_dim, const Rope& rope, std::int64_t seq_len, bool inverse) { ref::rope(x, head_dim, rope, seq_len, inverse); }
void CpuBackend::attention_forward(const AttentionShape& s, const View& q, const View& k, const View& v, const View& o, const View& lse) { ref::attention_forward(s, q, k, v, o, lse); }
void CpuBackend::attention_backward(const AttentionShape& s, const View& q, const View& k, const View& v, const View& o, const View& lse, const View& dout, const View& dq, const View& dk, const View& dv, const View& dq_accum, const View& delta) { ref::attention_backward(s, q, k, v, o, lse, dout, dq, dk, dv, dq_accum, delta); }
void CpuBackend::eager_scores(const AttentionShape& s, const View& q, const View& k, const View& scores) { ref::eager_scores(s, q, k, scores); }
void CpuBackend::eager_softmax(const View& scores, const View& probs) { ref::eager_softmax(scores, probs); }
void CpuBackend::eager_pv(const AttentionShape& s, const View& probs, const View& v, const View& o) { ref::eager_pv(s, probs, v, o); }
void CpuBackend::eager_dprobs(const AttentionShape& s, const View& dout, const View& v, const View& dprobs) { ref::eager_dprobs(s, dout, v, dprobs); }
void CpuBackend::eager_dv(const AttentionShape& s, const View& probs, const View& dout, const View& dv) { ref::eager_dv(s, probs, dout, dv); }
void CpuBackend::eager_softmax_backward(const View& probs, const View& dprobs, const View& dscores) { ref::eager_softmax_backward(probs, dprobs, dscores); }
void CpuBackend::eager_dq(const AttentionShape& s, const View& dscores, const View& k, const View& dq) { ref::eager_dq(s, dscores, k, dq); }
void CpuBackend::eager_dk(const AttentionShape& s, const View& dscores, const View& q, const View& dk) { ref::eager_dk(s, dscores, q, dk); }
void CpuBackend::gated_forward(GatedActivation a, const View& g, const View& u, const View& out) { ref::gated_forward(a, g, u, out); }
void CpuBackend::gated_backward(GatedActivation a, const View& dout, const View& g, const View& u, const View& dg, const View& du) { ref::gated_backward(a, dout, g, u, dg, du); }
void CpuBackend::add(const View& a, const View& b, const View& out) { ref::add(a, b, out); }
void CpuBackend::softcap(const View& x, float cap) { ref::softcap(x, cap); }
void CpuBackend::scale(const View& x, float s, const View& out) { ref::scale(x, s, out); }
void CpuBackend::dequantize(const kernels::Quantized& q, const View& bytes, const View& out) {
  ref::dequantize(q, bytes, out);
}
void CpuBackend::copy(const View& src, const View& dst) { ref::copy(src, dst); }
void CpuBackend::zero(const View& x) { ref::zero(x); }
void CpuBackend::embedding_forward(const View& tokens, const View& table, float scale, const View& out) { ref::embedding_forward(tokens, table, scale, out); }
void CpuBackend::embedding_backward(const View& dout, const View& tokens, float scale, const View& dtable) { ref::embedding_backward(dout, tokens, scale, dtable); }
void CpuBackend::cross_entropy_forward(const View& logits, const View& targets, float scale, float softcap, float* loss, const std::optional<View>& lse, const std::optional<View>& dlogits) { ref::cross_entropy_forward(logits, targets, scale, softcap, loss, lse, dlogits); }
void CpuBackend::cross_entropy_backward(const View& logits, const View& lse, const View& targets, float scale, float softcap, const View& dlogits) { ref::cross_entropy_backward(logits, lse, targets, scale, softcap, dlogits); }
void CpuBackend::adamw(const AdamW& o, const View& g, const View& w, const View& m, const View& v, const std::optional<View>& master) { ref::adamw(o, g, w, m, v, master); }
void CpuBackend::sgd(float lr, float weight_decay, const View& g, const View& w, const std::optional<View>& master) { ref::sgd(lr, weight_decay, g, w, master); }

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace mstplan
