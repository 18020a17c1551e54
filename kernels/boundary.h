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

/// A frozen base weight stored quantized (LoRA over a quantized base): `rows` x `cols` values
/// (out x in) laid out in bytes as the planner counts them (Note [Quantized base weights] in
/// planner/static_memory.h):
///   int8_rows: rows x cols int8 values q, then one fp32 absmax s per row: w = q s / 127;
///   nf4, fp4: two 4-bit codes per byte (element 2i in the high nibble) over the flat row-major
///     elements, then each block of 64 elements' absmax m: without double quantization fp32
///     (w = code[q] m); with it one int8 q8 per block, then one fp32 scale g per 256 blocks and
///     the fp32 offset o: m = q8 g / 127 + o.
/// nf4's code is QLoRA's NormalFloat (bitsandbytes' table); fp4's is e2m1 (0, 0.5, 1, 1.5, 2, 3,
/// 4, 6 and their negatives) over 6. The layout is this project's: the bytes are bitsandbytes'
/// counts, but its double quantization codes the block scales with its dynamic 8-bit map and its
/// fp4 table differs, so its files are not read as such.
enum class QuantFormat : std::uint8_t { int8_rows, nf4, fp4 };
struct Quantized {
  QuantFormat format = QuantFormat::nf4;
  bool double_quant = true;
  std::int64_t rows = 0, cols = 0;
};
inline constexpr std::int64_t kQuantBlock = 64;    ///< 4-bit: elements per absmax
inline constexpr std::int64_t kNestedBlock = 256;  ///< double quantization: block scales per fp32 scale
/// The bytes of a quantized weight (the planner's base_weight_bytes).
[[nodiscard]] constexpr std::int64_t quantized_bytes(const Quantized& q) {
  const std::int64_t n = q.rows * q.cols;
  if (q.format == QuantFormat::int8_rows) return n + 4 * q.rows;
  const std::int64_t blocks = (n + kQuantBlock - 1) / kQuantBlock;
  if (!q.double_quant) return (n + 1) / 2 + 4 * blocks;
  return (n + 1) / 2 + blocks + 4 * ((blocks + kNestedBlock - 1) / kNestedBlock) + 4;
}
/// The 16 values of a 4-bit code (nf4 or fp4), ascending index = the stored nibble.
[[nodiscard]] constexpr float quant_code(QuantFormat f, int q) {
  constexpr float nf4[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
                             -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
                             0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
                             0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};
  constexpr float e2m1[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  if (f == QuantFormat::nf4) return nf4[q];
  return (q < 8 ? 1.0f : -1.0f) * e2m1[q % 8] / 6.0f;
}

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
