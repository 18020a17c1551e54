#pragma once
// The CPU backend: host memory for both "device" and host pools, and the reference kernels.
// Runs any plan whose bytes fit in this machine's memory; slow (plain loops), exact to define.
// The class is open so that tests can wrap one kernel (to inject a fault, say).
#include <memory>

#include "runtime/backend.h"

namespace mstplan {

class CpuBackend : public Backend {
 public:
  [[nodiscard]] std::string_view name() const override { return "cpu"; }
  /// 256-byte aligned host memory, as the native allocator model rounds.
  [[nodiscard]] void* allocate(Device where, std::size_t bytes) override;
  void release(Device, void* pointer, std::size_t) override;
  [[nodiscard]] bool host_accessible() const override;
  void copy_bytes(void* dst, const void* src, std::size_t bytes) override;
  void matmul_xwt(const View& x, const View& w, const std::optional<View>& bias, const View& y, bool accumulate) override;
  void matmul_xw(const View& dy, const View& w, const View& dx, bool accumulate) override;
  void matmul_dw(const View& dy, const View& x, const View& dw, bool accumulate) override;
  void bias_grad(const View& dy, const View& db, bool accumulate) override;
  void rmsnorm_forward(const View& x, const View& w, float eps, float offset, const View& y, const View& rstd) override;
  void rmsnorm_apply(const View& x, const View& rstd, const View& w, float offset, const View& y) override;
  void rmsnorm_backward(const View& dy, const View& x, const View& rstd, const View& w, float offset, const std::optional<View>& residual, const View& dx, const std::optional<View>& dw, bool dw_accumulate) override;
  void rope(const View& x, std::int64_t head_dim, const Rope& rope, std::int64_t seq_len, bool inverse) override;
  void attention_forward(const AttentionShape& s, const View& q, const View& k, const View& v, const View& o, const View& lse) override;
  void attention_backward(const AttentionShape& s, const View& q, const View& k, const View& v, const View& o, const View& lse, const View& dout, const View& dq, const View& dk, const View& dv, const View& dq_accum, const View& delta) override;
  void eager_scores(const AttentionShape& s, const View& q, const View& k, const View& scores) override;
  void eager_softmax(const View& scores, const View& probs) override;
  void eager_pv(const AttentionShape& s, const View& probs, const View& v, const View& o) override;
  void eager_dprobs(const AttentionShape& s, const View& dout, const View& v, const View& dprobs) override;
  void eager_dv(const AttentionShape& s, const View& probs, const View& dout, const View& dv) override;
  void eager_softmax_backward(const View& probs, const View& dprobs, const View& dscores) override;
  void eager_dq(const AttentionShape& s, const View& dscores, const View& k, const View& dq) override;
  void eager_dk(const AttentionShape& s, const View& dscores, const View& q, const View& dk) override;
  void gated_forward(GatedActivation a, const View& g, const View& u, const View& out) override;
  void gated_backward(GatedActivation a, const View& dout, const View& g, const View& u, const View& dg, const View& du) override;
  void add(const View& a, const View& b, const View& out) override;
  void softcap(const View& x, float cap) override;
  void scale(const View& x, float s, const View& out) override;
  void dequantize(const kernels::Quantized& q, const View& bytes, const View& out) override;
  void copy(const View& src, const View& dst) override;
  void zero(const View& x) override;
  void embedding_forward(const View& tokens, const View& table, float scale, const View& out) override;
  void embedding_backward(const View& dout, const View& tokens, float scale, const View& dtable) override;
  void cross_entropy_forward(const View& logits, const View& targets, float scale, float softcap, float* loss, const std::optional<View>& lse, const std::optional<View>& dlogits) override;
  void cross_entropy_backward(const View& logits, const View& lse, const View& targets, float scale, float softcap, const View& dlogits) override;
  void adamw(const AdamW& o, const View& g, const View& w, const View& m, const View& v, const std::optional<View>& master) override;
  void sgd(float lr, float weight_decay, const View& g, const View& w, const std::optional<View>& master) override;
};

[[nodiscard]] std::unique_ptr<Backend> make_cpu_backend();

}  // namespace mstplan
