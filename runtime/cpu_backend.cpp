#include "runtime/cpu_backend.h"

#include <cstdlib>
#include <cstring>

namespace mstplan {
namespace {

class CpuBackend final : public Backend {
 public:
  [[nodiscard]] std::string_view name() const override { return "cpu"; }
  [[nodiscard]] void* allocate(Device, std::size_t bytes) override {
    // 256-byte alignment, as the native allocator model rounds; the size is a multiple of it.
    return std::aligned_alloc(256, bytes == 0 ? 256 : (bytes + 255) / 256 * 256);
  }
  void release(Device, void* pointer, std::size_t) override { std::free(pointer); }
  [[nodiscard]] bool host_accessible() const override { return true; }
  void copy_bytes(void* dst, const void* src, std::size_t bytes) override { std::memcpy(dst, src, bytes); }

  void matmul_xwt(const View& x, const View& w, const std::optional<View>& bias, const View& y, bool accumulate) override { ref::matmul_xwt(x, w, bias, y, accumulate); }
  void matmul_xw(const View& dy, const View& w, const View& dx, bool accumulate) override { ref::matmul_xw(dy, w, dx, accumulate); }
  void matmul_dw(const View& dy, const View& x, const View& dw, bool accumulate) override { ref::matmul_dw(dy, x, dw, accumulate); }
  void bias_grad(const View& dy, const View& db, bool accumulate) override { ref::bias_grad(dy, db, accumulate); }
  void rmsnorm_forward(const View& x, const View& w, float eps, float offset, const View& y, const View& rstd) override { ref::rmsnorm_forward(x, w, eps, offset, y, rstd); }
  void rmsnorm_apply(const View& x, const View& rstd, const View& w, float offset, const View& y) override { ref::rmsnorm_apply(x, rstd, w, offset, y); }
  void rmsnorm_backward(const View& dy, const View& x, const View& rstd, const View& w, float offset, const std::optional<View>& residual, const View& dx, const std::optional<View>& dw, bool dw_accumulate) override { ref::rmsnorm_backward(dy, x, rstd, w, offset, residual, dx, dw, dw_accumulate); }
  void rope(const View& x, std::int64_t head_dim, const Rope& rope, std::int64_t seq_len, bool inverse) override { ref::rope(x, head_dim, rope, seq_len, inverse); }
  void attention_forward(const AttentionShape& s, const View& q, const View& k, const View& v, const View& o, const View& lse) override { ref::attention_forward(s, q, k, v, o, lse); }
  void attention_backward(const AttentionShape& s, const View& q, const View& k, const View& v, const View& o, const View& lse, const View& dout, const View& dq, const View& dk, const View& dv, const View& dq_accum, const View& delta) override { ref::attention_backward(s, q, k, v, o, lse, dout, dq, dk, dv, dq_accum, delta); }
  void eager_scores(const AttentionShape& s, const View& q, const View& k, const View& scores) override { ref::eager_scores(s, q, k, scores); }
  void eager_softmax(const View& scores, const View& probs) override { ref::eager_softmax(scores, probs); }
  void eager_pv(const AttentionShape& s, const View& probs, const View& v, const View& o) override { ref::eager_pv(s, probs, v, o); }
  void eager_dprobs(const AttentionShape& s, const View& dout, const View& v, const View& dprobs) override { ref::eager_dprobs(s, dout, v, dprobs); }
  void eager_dv(const AttentionShape& s, const View& probs, const View& dout, const View& dv) override { ref::eager_dv(s, probs, dout, dv); }
  void eager_softmax_backward(const View& probs, const View& dprobs, const View& dscores) override { ref::eager_softmax_backward(probs, dprobs, dscores); }
  void eager_dq(const AttentionShape& s, const View& dscores, const View& k, const View& dq) override { ref::eager_dq(s, dscores, k, dq); }
  void eager_dk(const AttentionShape& s, const View& dscores, const View& q, const View& dk) override { ref::eager_dk(s, dscores, q, dk); }
  void gated_forward(GatedActivation a, const View& g, const View& u, const View& out) override { ref::gated_forward(a, g, u, out); }
  void gated_backward(GatedActivation a, const View& dout, const View& g, const View& u, const View& dg, const View& du) override { ref::gated_backward(a, dout, g, u, dg, du); }
  void add(const View& a, const View& b, const View& out) override { ref::add(a, b, out); }
  void softcap(const View& x, float cap) override { ref::softcap(x, cap); }
  void copy(const View& src, const View& dst) override { ref::copy(src, dst); }
  void zero(const View& x) override { ref::zero(x); }
  void embedding_forward(const View& tokens, const View& table, float scale, const View& out) override { ref::embedding_forward(tokens, table, scale, out); }
  void embedding_backward(const View& dout, const View& tokens, float scale, const View& dtable) override { ref::embedding_backward(dout, tokens, scale, dtable); }
  void cross_entropy_forward(const View& logits, const View& targets, float scale, float softcap, float* loss, const std::optional<View>& lse, const std::optional<View>& dlogits) override { ref::cross_entropy_forward(logits, targets, scale, softcap, loss, lse, dlogits); }
  void cross_entropy_backward(const View& logits, const View& lse, const View& targets, float scale, float softcap, const View& dlogits) override { ref::cross_entropy_backward(logits, lse, targets, scale, softcap, dlogits); }
  void adamw(const AdamW& o, const View& g, const View& w, const View& m, const View& v, const std::optional<View>& master) override { ref::adamw(o, g, w, m, v, master); }
  void sgd(float lr, float weight_decay, const View& g, const View& w, const std::optional<View>& master) override { ref::sgd(lr, weight_decay, g, w, master); }
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace mstplan
