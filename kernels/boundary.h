#pragma once
// The kernel boundary: the shapes and parameters both kernel families take, the CPU reference
// (kernels/reference/reference.h, namespace ref) and the CUDA launchers (kernels/cuda/*.cuh,
// namespace cuda), defined once. Plain C++ without fmt or planner headers, so that nvcc
// compiles it (nvcc 13 cannot compile fmt 9's consteval format checks) and the planner's own
// enums stay the planner's: runtime/ converts them (runtime/step_ops.cpp).
#include <cstdint>

namespace mstplan::kernels {

/// RoPE's frequency scaling (transformers' rope_scaling.rope_type).
enum class RopeScaling : std::uint8_t {
  none,
  linear,   ///< every frequency divided by `factor`
  dynamic,  ///< dynamic NTK: the base grows beyond max_position_embeddings
  llama3,   ///< Llama 3.1's band-wise rule (transformers' _compute_llama3_parameters)
};

/// The rotary embedding's parameters (one head; head_dim / 2 frequencies).
struct Rope {
  double theta = 10000.0;
  RopeScaling scaling = RopeScaling::none;
  double factor = 1.0, low_freq_factor = 1.0, high_freq_factor = 4.0;
  std::int64_t original_max_position_embeddings = 0;  ///< llama3: the pre-training context
  std::int64_t max_position_embeddings = 0;           ///< dynamic scaling applies beyond this length
  /// The position of a view's position 0 (Ulysses: a rank holds positions [first_position, ...)
  /// of each sequence); the angle of view row r is (first_position + View::position(r)) x freq.
  std::int64_t first_position = 0;
};

/// Causal attention with grouped key/value heads; q is T x heads*head_dim, k and v are
/// T x kv_heads*head_dim, T = batch x seq.
struct AttentionShape {
  std::int64_t batch = 1, seq = 0, heads = 0, kv_heads = 0, head_dim = 0;
  float scale = 1.0f;       ///< scores = q.k * scale
  float softcap = 0.0f;     ///< > 0: scores = softcap * tanh(scores / softcap)
  std::int64_t window = 0;  ///< > 0: query i sees keys (i - window, i]
  /// Context parallelism: q (and o, lse, dq, delta) hold `queries` positions of each sequence
  /// from position `query_first`, k and v all `seq` of them (0: queries = seq, from 0).
  std::int64_t queries = 0, query_first = 0;
  [[nodiscard]] std::int64_t query_rows() const { return queries > 0 ? queries : seq; }
};

/// PyTorch's AdamW hyper-parameters for one step.
struct AdamW {
  float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.0f;
  std::int64_t step = 1;  ///< 1-based, for bias correction
};

/// The MLP's gated activation: silu(g) * u or gelu_tanh(g) * u.
enum class GatedActivation : std::uint8_t { swiglu, geglu };

}  // namespace mstplan::kernels
