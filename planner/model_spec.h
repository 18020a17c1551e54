#pragma once
// Model specs: the shape of a decoder-only transformer, as the planner and runtime need it.
//
// A spec comes from a YAML file of models/ (fields named as in Hugging Face's config.json, see
// docs/specs.md) or from a Hugging Face config.json (hf_config.h). It is validated on load, so
// every ModelSpec in the program is consistent: heads divide as they must and every byte count
// derived from it fits in 64 bits.
//
// Families fix the block structure that the fields do not say:
//   llama, mistral, qwen2: x += attn(norm(x)); x += mlp(norm(x))           (2 norms per layer)
//   gemma2: x += post_norm(attn(norm(x))); x += post_norm(mlp(norm(x)))    (4 norms per layer),
//           embeddings scaled by sqrt(hidden_size), RMSNorm weight applied as (1 + w).
//
//   Expected<ModelSpec> spec = load_model_file("models/llama3-8b.yaml");
//   std::int64_t n = parameter_count(*spec);   // 8'030'261'248
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "planner/dtype.h"
#include "planner/enum_names.h"
#include "planner/error.h"

namespace mstplan {

enum class Family { llama, mistral, qwen2, gemma2 };
enum class NormKind { rmsnorm, layernorm };
enum class MlpActivation {
  swiglu,  ///< down(silu(gate(x)) * up(x))
  geglu,   ///< down(gelu_tanh(gate(x)) * up(x))
};
/// Which layers use the sliding window.
enum class SlidingLayers {
  all,   ///< every layer (Mistral 7B v0.1)
  even,  ///< layers 0, 2, 4, ... (Gemma 2: local and global attention alternate)
};
enum class RopeScaling { none, linear, dynamic, llama3 };

template <>
struct EnumNames<Family> {
  static constexpr std::array<std::pair<Family, std::string_view>, 4> table{
      {{Family::llama, "llama"}, {Family::mistral, "mistral"}, {Family::qwen2, "qwen2"}, {Family::gemma2, "gemma2"}}};
};
template <>
struct EnumNames<NormKind> {
  static constexpr std::array<std::pair<NormKind, std::string_view>, 2> table{
      {{NormKind::rmsnorm, "rmsnorm"}, {NormKind::layernorm, "layernorm"}}};
};
template <>
struct EnumNames<MlpActivation> {
  static constexpr std::array<std::pair<MlpActivation, std::string_view>, 2> table{
      {{MlpActivation::swiglu, "swiglu"}, {MlpActivation::geglu, "geglu"}}};
};
template <>
struct EnumNames<SlidingLayers> {
  static constexpr std::array<std::pair<SlidingLayers, std::string_view>, 2> table{
      {{SlidingLayers::all, "all"}, {SlidingLayers::even, "even"}}};
};
template <>
struct EnumNames<RopeScaling> {
  static constexpr std::array<std::pair<RopeScaling, std::string_view>, 4> table{
      {{RopeScaling::none, "none"}, {RopeScaling::linear, "linear"}, {RopeScaling::dynamic, "dynamic"},
       {RopeScaling::llama3, "llama3"}}};
};

struct SlidingWindow {
  std::int64_t size = 0;  ///< tokens each query attends to
  SlidingLayers layers = SlidingLayers::all;
  bool operator==(const SlidingWindow&) const = default;
};

struct RopeSpec {
  double theta = 10000.0;
  RopeScaling scaling = RopeScaling::none;
  double factor = 1.0;                                ///< linear, dynamic, llama3
  double low_freq_factor = 1.0;                       ///< llama3 only
  double high_freq_factor = 4.0;                      ///< llama3 only
  std::int64_t original_max_position_embeddings = 0;  ///< llama3 only
  bool operator==(const RopeSpec&) const = default;
};

struct ModelSpec {
  std::string name;
  Family family = Family::llama;
  std::int64_t hidden_size = 0;        ///< d
  std::int64_t intermediate_size = 0;  ///< I, the MLP width
  std::int64_t num_layers = 0;         ///< L
  std::int64_t num_heads = 0;          ///< query heads
  std::int64_t num_kv_heads = 0;       ///< key/value heads (GQA); divides num_heads
  std::int64_t head_dim = 0;           ///< hidden_size / num_heads unless the spec says otherwise
  std::int64_t vocab_size = 0;         ///< V
  std::int64_t max_position_embeddings = 0;
  bool tied_embeddings = false;        ///< the LM head reuses the embedding matrix
  bool qkv_bias = false;               ///< bias on the q, k and v projections (Qwen2)
  NormKind norm = NormKind::rmsnorm;
  std::int64_t norms_per_layer = 2;    ///< 2, or 4 with post-norms (Gemma 2)
  double norm_eps = 1e-6;
  MlpActivation mlp_activation = MlpActivation::swiglu;
  std::optional<SlidingWindow> sliding_window;
  std::optional<double> attn_logit_softcap;   ///< tanh soft-capping of attention scores
  std::optional<double> final_logit_softcap;  ///< tanh soft-capping of the LM head's logits
  std::optional<double> query_pre_attn_scalar;  ///< scores scaled by 1/sqrt(this) instead of 1/sqrt(head_dim)
  RopeSpec rope;
  DType dtype = DType::bf16;           ///< the checkpoint's dtype
  /// What transformers' from_pretrained takes for this model, a Hub id ("meta-llama/Llama-3.1-8B")
  /// or a local folder: engine exports (--export) name it; empty when unknown.
  std::string name_or_path;

  std::string source;  ///< where it was read from, for messages; not part of the model

  bool operator==(const ModelSpec&) const = default;
};

/// One parameter tensor, shaped like PyTorch's (out_features, in_features); vectors have cols 1.
struct ParamTensor {
  std::string name;          ///< "embed.weight", "layer.7.attn.q.weight", "lm_head.weight"
  std::int64_t layer = -1;   ///< -1 outside the layers
  std::int64_t rows = 0;
  std::int64_t cols = 1;
  [[nodiscard]] std::int64_t numel() const { return rows * cols; }
};

/// Layers a spec may have: the step program holds ops per layer, and no model comes near this.
inline constexpr std::int64_t kMaxLayers = 65536;

/// Every parameter tensor, in the order of the forward pass. The LM head is absent when tied.
[[nodiscard]] std::vector<ParamTensor> parameters(const ModelSpec& spec);

struct ParameterCounts {
  std::int64_t embedding = 0;
  std::int64_t attention = 0;  ///< all layers: q, k, v, o (and q/k/v bias)
  std::int64_t mlp = 0;        ///< all layers: gate, up, down
  std::int64_t norms = 0;      ///< all layers' norms and the final norm
  std::int64_t lm_head = 0;    ///< 0 when tied
  std::int64_t total = 0;
};

/// Counts derived from the shapes; the spec never states its own parameter count.
[[nodiscard]] ParameterCounts count_parameters(const ModelSpec& spec);
[[nodiscard]] std::int64_t parameter_count(const ModelSpec& spec);

/// A broken relation between fields: which field to blame and why.
struct SpecProblem {
  std::string field;  ///< named as in the YAML spec / config.json ("num_key_value_heads")
  std::string message;
};

/// The parameter count in closed form with checked arithmetic: nullopt when it leaves int64.
/// Safe on any spec (unlike parameters(), which enumerates every layer).
[[nodiscard]] std::optional<std::int64_t> checked_parameter_count(const ModelSpec& spec);

/// Checks the relations between fields (heads divide, family conventions, rope parameters, at
/// most kMaxLayers layers, byte counts within 64 bits). Individual fields are range-checked by
/// the readers.
[[nodiscard]] std::optional<SpecProblem> check_model_relations(const ModelSpec& spec);

/// Reads a model spec from YAML text; `origin` names the file in messages.
[[nodiscard]] Expected<ModelSpec> parse_model_yaml(const std::string& text, const std::string& origin);
/// Reads a model spec YAML file.
[[nodiscard]] Expected<ModelSpec> load_model_file(const std::string& path);
/// The spec as YAML in the models/ format; parse_model_yaml(model_to_yaml(s)) == s (but source).
[[nodiscard]] std::string model_to_yaml(const ModelSpec& spec);

}  // namespace mstplan
