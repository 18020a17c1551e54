#include "planner/model_spec.h"

#include <algorithm>
#include <array>

#include "planner/units.h"
#include "planner/spec_fields.h"
#include "planner/yaml_input.h"

namespace mstplan {
namespace {

// Norm tensors of one layer, in forward order, for 2 or 4 norms per layer.
std::vector<std::string_view> norm_names(std::int64_t norms_per_layer) {
  if (norms_per_layer == 4) return {"attn_norm", "attn_post_norm", "mlp_norm", "mlp_post_norm"};
  return {"attn_norm", "mlp_norm"};
}

// All parameter tensors of a spec that passed check_model_relations.
std::vector<ParamTensor> enumerate_parameters(const ModelSpec& s) {
  std::vector<ParamTensor> out;
  auto add = [&](std::string name, std::int64_t layer, std::int64_t rows, std::int64_t cols) {
    out.push_back(ParamTensor{std::move(name), layer, rows, cols});
  };
  const std::int64_t q_rows = s.num_heads * s.head_dim;
  const std::int64_t kv_rows = s.num_kv_heads * s.head_dim;
  const auto norms = norm_names(s.norms_per_layer);
  auto add_norm = [&](const std::string& prefix, std::int64_t layer) {
    add(prefix + ".weight", layer, s.hidden_size, 1);
    if (s.norm == NormKind::layernorm) add(prefix + ".bias", layer, s.hidden_size, 1);
  };

  out.reserve(static_cast<std::size_t>(s.num_layers) * 16 + 4);
  add("embed.weight", -1, s.vocab_size, s.hidden_size);
  for (std::int64_t l = 0; l < s.num_layers; ++l) {
    const std::string p = fmt::format("layer.{}.", l);
    add_norm(p + std::string(norms[0]), l);
    add(p + "attn.q.weight", l, q_rows, s.hidden_size);
    add(p + "attn.k.weight", l, kv_rows, s.hidden_size);
    add(p + "attn.v.weight", l, kv_rows, s.hidden_size);
    if (s.qkv_bias) {
      add(p + "attn.q.bias", l, q_rows, 1);
      add(p + "attn.k.bias", l, kv_rows, 1);
      add(p + "attn.v.bias", l, kv_rows, 1);
    }
    add(p + "attn.o.weight", l, s.hidden_size, q_rows);
    if (norms.size() == 4) add_norm(p + std::string(norms[1]), l);
    add_norm(p + std::string(norms.size() == 4 ? norms[2] : norms[1]), l);
    add(p + "mlp.gate.weight", l, s.intermediate_size, s.hidden_size);
    add(p + "mlp.up.weight", l, s.intermediate_size, s.hidden_size);
    add(p + "mlp.down.weight", l, s.hidden_size, s.intermediate_size);
    if (norms.size() == 4) add_norm(p + std::string(norms[3]), l);
  }
  add_norm("final_norm", -1);
  if (!s.tied_embeddings) add("lm_head.weight", -1, s.vocab_size, s.hidden_size);
  return out;
}

// The size fields with their names in the YAML spec / config.json; max_position_embeddings,
// which no parameter depends on, comes last.
std::array<std::pair<std::int64_t, const char*>, 8> size_fields(const ModelSpec& s) {
  return {{{s.vocab_size, "vocab_size"},
           {s.hidden_size, "hidden_size"},
           {s.intermediate_size, "intermediate_size"},
           {s.num_layers, "num_hidden_layers"},
           {s.num_heads, "num_attention_heads"},
           {s.num_kv_heads, "num_key_value_heads"},
           {s.head_dim, "head_dim"},
           {s.max_position_embeddings, "max_position_embeddings"}}};
}

}  // namespace

std::optional<std::int64_t> checked_parameter_count(const ModelSpec& s) {
  // Each step is checked; an empty optional propagates through the helpers.
  using Count = std::optional<std::int64_t>;
  auto mul = [](Count a, Count b) -> Count { return a && b ? checked_mul(*a, *b) : std::nullopt; };
  auto add = [](Count a, Count b) -> Count { return a && b ? checked_add(*a, *b) : std::nullopt; };
  const Count d = s.hidden_size;
  const Count q_rows = mul(s.num_heads, s.head_dim);
  const Count kv_rows = mul(s.num_kv_heads, s.head_dim);
  const Count norm = mul(d, Count(s.norm == NormKind::layernorm ? 2 : 1));
  const Count embedding = mul(s.vocab_size, d);
  Count layer = add(mul(Count(2), mul(q_rows, d)), mul(Count(2), mul(kv_rows, d)));  // q, o; k, v
  if (s.qkv_bias) layer = add(layer, add(q_rows, mul(Count(2), kv_rows)));
  layer = add(layer, mul(Count(3), mul(Count(s.intermediate_size), d)));  // gate, up, down
  layer = add(layer, mul(Count(s.norms_per_layer), norm));
  Count total = add(embedding, add(mul(Count(s.num_layers), layer), norm));
  if (!s.tied_embeddings) total = add(total, embedding);
  return total;
}

std::vector<ParamTensor> parameters(const ModelSpec& spec) {
  MSTPLAN_CHECK(!check_model_relations(spec).has_value(), "parameters() of an invalid spec '{}'", spec.name);
  return enumerate_parameters(spec);
}

ParameterCounts count_parameters(const ModelSpec& spec) {
  ParameterCounts c;
  for (const ParamTensor& p : parameters(spec)) {
    const std::int64_t n = p.numel();
    c.total += n;
    if (p.name == "embed.weight") {
      c.embedding += n;
    } else if (p.name == "lm_head.weight") {
      c.lm_head += n;
    } else if (p.name.find(".attn.") != std::string::npos) {
      c.attention += n;
    } else if (p.name.find(".mlp.") != std::string::npos) {
      c.mlp += n;
    } else {
      c.norms += n;
    }
  }
  return c;
}

std::int64_t parameter_count(const ModelSpec& spec) { return count_parameters(spec).total; }

std::optional<SpecProblem> check_model_relations(const ModelSpec& s) {
  auto problem = [](std::string field, std::string message) {
    return std::optional<SpecProblem>(SpecProblem{std::move(field), std::move(message)});
  };
  const auto sizes = size_fields(s);
  for (const auto& [value, field] : sizes) {
    if (value <= 0) return problem(field, fmt::format("expected a positive integer, got {}", value));
  }
  if (s.num_kv_heads > s.num_heads || s.num_heads % s.num_kv_heads != 0) {
    return problem("num_key_value_heads",
                   fmt::format("{} key/value heads do not divide {} attention heads (each key/value head "
                               "must serve a whole group of query heads)",
                               s.num_kv_heads, s.num_heads));
  }
  if (s.head_dim % 2 != 0) {
    return problem("head_dim", fmt::format("head_dim {} is odd; rotary embeddings rotate pairs of dimensions", s.head_dim));
  }
  const std::int64_t expected_norms = s.family == Family::gemma2 ? 4 : 2;
  if (s.norms_per_layer != expected_norms) {
    return problem("norms_per_layer", fmt::format("family {} has {} norms per layer, got {}", to_string(s.family),
                                                  expected_norms, s.norms_per_layer));
  }
  if (s.rope.scaling == RopeScaling::llama3) {
    if (s.rope.original_max_position_embeddings <= 0) {
      return problem("rope_scaling", "llama3 scaling needs original_max_position_embeddings");
    }
    if (s.rope.high_freq_factor <= s.rope.low_freq_factor) {
      return problem("rope_scaling", fmt::format("llama3 scaling needs high_freq_factor ({}) above low_freq_factor ({})",
                                                 s.rope.high_freq_factor, s.rope.low_freq_factor));
    }
  }
  if (s.num_layers > kMaxLayers) {
    return problem("num_hidden_layers", fmt::format("{} layers is beyond the {} this planner handles", s.num_layers,
                                                    kMaxLayers));
  }
  // Byte counts: the largest per-parameter footprint we model is under 32 bytes (fp32 master,
  // bf16 copy, fp32 gradient, two fp32 optimizer states), so total * 32 must fit in int64.
  const auto total = checked_parameter_count(s);
  if (!total || !checked_mul(*total, 32)) {
    // Blame the largest size among those that enter the count (not max_position_embeddings, last).
    const auto* largest = &*std::max_element(sizes.begin(), sizes.end() - 1);
    return problem(largest->second, "sizes too large: the parameter bytes of this model would overflow 64 bits");
  }
  return std::nullopt;
}

void read_model_fields(FieldReader& r, ModelSpec& s) {
  s.name = r.required_string("name");
  s.family = r.required_enum<Family>("family");
  s.hidden_size = r.required_int("hidden_size");
  s.intermediate_size = r.required_int("intermediate_size");
  s.num_layers = r.required_int("num_hidden_layers");
  s.num_heads = r.required_int("num_attention_heads");
  s.num_kv_heads = r.required_int("num_key_value_heads");
  const auto head_dim = r.optional_int("head_dim");
  s.vocab_size = r.required_int("vocab_size");
  s.max_position_embeddings = r.required_int("max_position_embeddings");
  s.tied_embeddings = r.required_bool("tie_word_embeddings");
  s.qkv_bias = r.required_bool("attention_bias");
  s.norm = r.required_enum<NormKind>("norm");
  s.norms_per_layer = r.required_int("norms_per_layer");
  s.norm_eps = r.required_number("norm_eps");
  s.mlp_activation = r.required_enum<MlpActivation>("mlp_activation");
  if (auto window = r.optional_map("sliding_window")) {
    s.sliding_window = SlidingWindow{window->required_int("size"), window->required_enum<SlidingLayers>("layers")};
    (void)window->finish();
  }
  s.attn_logit_softcap = r.optional_number("attn_logit_softcapping");
  s.final_logit_softcap = r.optional_number("final_logit_softcapping");
  s.query_pre_attn_scalar = r.optional_number("query_pre_attn_scalar");
  s.rope.theta = r.required_number("rope_theta");
  if (auto scaling = r.optional_map("rope_scaling")) {
    s.rope.scaling = scaling->required_enum<RopeScaling>("type");
    if (s.rope.scaling != RopeScaling::none) s.rope.factor = scaling->required_number("factor");
    if (s.rope.scaling == RopeScaling::llama3) {
      s.rope.low_freq_factor = scaling->required_number("low_freq_factor");
      s.rope.high_freq_factor = scaling->required_number("high_freq_factor");
      s.rope.original_max_position_embeddings = scaling->required_int("original_max_position_embeddings");
    }
    (void)scaling->finish();
  }
  s.dtype = r.required_enum<DType>("dtype");
  s.name_or_path = r.optional_string("name_or_path").value_or("");
  if (r.ok() && !head_dim && s.hidden_size % s.num_heads != 0) {
    r.fail("num_attention_heads", fmt::format("{} heads do not divide hidden_size {} (give head_dim explicitly "
                                              "when the head width is not hidden_size / heads)",
                                              s.num_heads, s.hidden_size));
  }
  s.head_dim = head_dim.value_or(r.ok() ? s.hidden_size / s.num_heads : 1);
  if (r.finish()) return;
  if (auto problem = check_model_relations(s)) r.fail(problem->field, problem->message);
}

Expected<ModelSpec> parse_model_yaml(const std::string& text, const std::string& origin) {
  auto node = load_yaml(text, origin, "model spec");
  if (!node) return node.error();
  FieldReader r = FieldReader::root(*node, origin, "model spec");
  ModelSpec s;
  s.source = origin;
  read_model_fields(r, s);
  if (auto error = r.finish()) return *error;
  return s;
}

Expected<ModelSpec> load_model_file(const std::string& path) {
  return parse_file(path, parse_model_yaml);
}

std::string model_to_yaml(const ModelSpec& s) {
  auto optional_number = [](const std::optional<double>& v) { return v ? fmt::format("{}", *v) : std::string("null"); };
  std::string out;
  auto line = [&out](std::string_view key, const std::string& value) { out += fmt::format("{}: {}\n", key, value); };
  line("name", yaml_scalar(s.name));
  line("family", std::string(to_string(s.family)));
  line("hidden_size", fmt::format("{}", s.hidden_size));
  line("intermediate_size", fmt::format("{}", s.intermediate_size));
  line("num_hidden_layers", fmt::format("{}", s.num_layers));
  line("num_attention_heads", fmt::format("{}", s.num_heads));
  line("num_key_value_heads", fmt::format("{}", s.num_kv_heads));
  line("head_dim", fmt::format("{}", s.head_dim));
  line("vocab_size", fmt::format("{}", s.vocab_size));
  line("max_position_embeddings", fmt::format("{}", s.max_position_embeddings));
  line("tie_word_embeddings", s.tied_embeddings ? "true" : "false");
  line("attention_bias", s.qkv_bias ? "true" : "false");
  line("norm", std::string(to_string(s.norm)));
  line("norms_per_layer", fmt::format("{}", s.norms_per_layer));
  line("norm_eps", fmt::format("{}", s.norm_eps));
  line("mlp_activation", std::string(to_string(s.mlp_activation)));
  line("sliding_window", s.sliding_window ? fmt::format("{{size: {}, layers: {}}}", s.sliding_window->size,
                                                        to_string(s.sliding_window->layers))
                                          : std::string("null"));
  line("attn_logit_softcapping", optional_number(s.attn_logit_softcap));
  line("final_logit_softcapping", optional_number(s.final_logit_softcap));
  line("query_pre_attn_scalar", optional_number(s.query_pre_attn_scalar));
  line("rope_theta", fmt::format("{}", s.rope.theta));
  switch (s.rope.scaling) {
    case RopeScaling::none: line("rope_scaling", "null"); break;
    case RopeScaling::linear:
    case RopeScaling::dynamic:
      line("rope_scaling", fmt::format("{{type: {}, factor: {}}}", to_string(s.rope.scaling), s.rope.factor));
      break;
    case RopeScaling::llama3:
      line("rope_scaling", fmt::format("{{type: llama3, factor: {}, low_freq_factor: {}, high_freq_factor: {}, "
                                       "original_max_position_embeddings: {}}}",
                                       s.rope.factor, s.rope.low_freq_factor, s.rope.high_freq_factor,
                                       s.rope.original_max_position_embeddings));
      break;
  }
  line("dtype", std::string(to_string(s.dtype)));
  if (!s.name_or_path.empty()) line("name_or_path", yaml_scalar(s.name_or_path));
  return out;
}

}  // namespace mstplan
