#pragma once
// A backend: raw memory on the device and the host, and the kernels the executor calls for the
// ops of a step program. The CPU backend (cpu_backend.h) runs the reference kernels of
// kernels/reference/; the CUDA backend (a later issue) implements the same calls on a GPU.
//
// Views (kernels/reference/reference.h) describe the operands: pointers from `allocate`, a dtype
// and a strided set of rows. Every call has the reference kernel's contract, documented there.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "kernels/reference/reference.h"
#include "planner/program.h"

namespace mstplan {

using ref::AdamW;
using ref::AttentionShape;
using ref::GatedActivation;
using ref::Rope;
using ref::View;

/// What a device backend measures besides the allocator's own counts (CUDA: the stream-ordered
/// pool's high-water marks and cudaMemGetInfo). Context and library bytes are not the step's: they
/// are reported apart, as the planner's GPU reserve covers them.
struct DeviceMemoryReport {
  std::string device;                     ///< "NVIDIA H100 80GB HBM3"
  std::int64_t total_bytes = 0;           ///< cudaMemGetInfo total
  std::int64_t context_bytes = 0;         ///< used once the context existed (other processes too)
  std::int64_t library_bytes = 0;         ///< used by creating the libraries' handles (cuBLASLt)
  std::int64_t pool_used_high_bytes = 0;  ///< the pool's used high-water mark since the last reset
  std::int64_t pool_reserved_high_bytes = 0;  ///< its reserved high-water mark
  std::int64_t used_after_bytes = 0;      ///< cudaMemGetInfo used after the step
};

class Backend {
 public:
  virtual ~Backend() = default;
  [[nodiscard]] virtual std::string_view name() const = 0;

  // ---- Memory: `bytes` already rounded by the allocator; nullptr when there is no room.
  [[nodiscard]] virtual void* allocate(Device where, std::size_t bytes) = 0;
  virtual void release(Device where, void* pointer, std::size_t bytes) = 0;
  /// Whether device pointers can be read by the host (guard bytes are checked then).
  [[nodiscard]] virtual bool host_accessible() const = 0;
  /// Copies between any two pointers this backend handed out, or host memory of the caller;
  /// returns when the copy is complete (after every kernel queued before it).
  virtual void copy_bytes(void* dst, const void* src, std::size_t bytes) = 0;
  /// The program's GEMM workspace tensor, bound by the executor once it is allocated.
  virtual void bind_workspace(void* /*data*/, std::size_t /*bytes*/) {}
  /// A failure of the kernels or copies issued since the last call (launch or library errors),
  /// as text; the executor asks after every op.
  [[nodiscard]] virtual std::optional<std::string> take_error() { return std::nullopt; }
  /// Device-side memory figures (nullopt on the CPU) and the reset of their high-water marks.
  [[nodiscard]] virtual std::optional<DeviceMemoryReport> device_memory() { return std::nullopt; }
  virtual void reset_device_peaks() {}

  /// Initialisation: x[e] = mean + std * n_e, rounded to x's dtype, where n_e is the standard
  /// normal of element e of the counter-based stream `state`: Box-Muller on splitmix64 outputs
  /// number 2e + 1 and 2e + 2 (u, v in (0, 1)), computed in double. Every backend gives the same
  /// values (up to the last bit of a double log or cos); the default computes them on the host.
  virtual void fill_normal(const View& x, std::uint64_t state, double mean, double std);

  // ---- Kernels (see kernels/reference/reference.h for each contract).
  virtual void matmul_xwt(const View& x, const View& w, const std::optional<View>& bias, const View& y,
                          bool accumulate) = 0;
  virtual void matmul_xw(const View& dy, const View& w, const View& dx, bool accumulate) = 0;
  virtual void matmul_dw(const View& dy, const View& x, const View& dw, bool accumulate) = 0;
  virtual void bias_grad(const View& dy, const View& db, bool accumulate) = 0;
  virtual void rmsnorm_forward(const View& x, const View& w, float eps, float offset, const View& y,
                               const View& rstd) = 0;
  virtual void rmsnorm_apply(const View& x, const View& rstd, const View& w, float offset, const View& y) = 0;
  virtual void rmsnorm_backward(const View& dy, const View& x, const View& rstd, const View& w, float offset,
                                const std::optional<View>& residual, const View& dx, const std::optional<View>& dw,
                                bool dw_accumulate) = 0;
  virtual void rope(const View& x, std::int64_t head_dim, const Rope& rope, std::int64_t seq_len, bool inverse) = 0;
  virtual void attention_forward(const AttentionShape& s, const View& q, const View& k, const View& v, const View& o,
                                 const View& lse) = 0;
  virtual void attention_backward(const AttentionShape& s, const View& q, const View& k, const View& v, const View& o,
                                  const View& lse, const View& dout, const View& dq, const View& dk, const View& dv,
                                  const View& dq_accum, const View& delta) = 0;
  virtual void eager_scores(const AttentionShape& s, const View& q, const View& k, const View& scores) = 0;
  virtual void eager_softmax(const View& scores, const View& probs) = 0;
  virtual void eager_pv(const AttentionShape& s, const View& probs, const View& v, const View& o) = 0;
  virtual void eager_dprobs(const AttentionShape& s, const View& dout, const View& v, const View& dprobs) = 0;
  virtual void eager_dv(const AttentionShape& s, const View& probs, const View& dout, const View& dv) = 0;
  virtual void eager_softmax_backward(const View& probs, const View& dprobs, const View& dscores) = 0;
  virtual void eager_dq(const AttentionShape& s, const View& dscores, const View& k, const View& dq) = 0;
  virtual void eager_dk(const AttentionShape& s, const View& dscores, const View& q, const View& dk) = 0;
  virtual void gated_forward(GatedActivation a, const View& g, const View& u, const View& out) = 0;
  virtual void gated_backward(GatedActivation a, const View& dout, const View& g, const View& u, const View& dg,
                              const View& du) = 0;
  virtual void add(const View& a, const View& b, const View& out) = 0;
  virtual void softcap(const View& x, float cap) = 0;
  virtual void scale(const View& x, float s, const View& out) = 0;
  virtual void dequantize(const kernels::Quantized& q, const View& bytes, const View& out) = 0;
  virtual void copy(const View& src, const View& dst) = 0;
  virtual void zero(const View& x) = 0;
  virtual void embedding_forward(const View& tokens, const View& table, float scale, const View& out) = 0;
  virtual void embedding_backward(const View& dout, const View& tokens, float scale, const View& dtable) = 0;
  /// `loss` points at the fp32 loss tensor (backend memory).
  virtual void cross_entropy_forward(const View& logits, const View& targets, float scale, float softcap, float* loss,
                                     const std::optional<View>& lse, const std::optional<View>& dlogits) = 0;
  virtual void cross_entropy_backward(const View& logits, const View& lse, const View& targets, float scale,
                                      float softcap, const View& dlogits) = 0;
  virtual void adamw(const AdamW& o, const View& g, const View& w, const View& m, const View& v,
                     const std::optional<View>& master) = 0;
  virtual void sgd(float lr, float weight_decay, const View& g, const View& w, const std::optional<View>& master) = 0;
};

}  // namespace mstplan
