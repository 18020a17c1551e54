#include "planner/hf_config.h"

#include <cmath>
#include <filesystem>
#include <limits>

#include <nlohmann/json.hpp>

#include "planner/yaml_input.h"

namespace mstplan {
namespace {

using json = nlohmann::json;

struct Architecture {
  std::string_view hf_name;
  Family family;
  // Defaults of the transformers config class for fields absent from the file.
  bool tied_default;
  double eps_default;
};

constexpr std::array<Architecture, 4> kArchitectures{{
    {"LlamaForCausalLM", Family::llama, false, 1e-6},
    {"MistralForCausalLM", Family::mistral, false, 1e-6},
    {"Qwen2ForCausalLM", Family::qwen2, false, 1e-6},
    {"Gemma2ForCausalLM", Family::gemma2, true, 1e-6},
}};

std::string supported_list() {
  std::string out;
  for (const auto& a : kArchitectures) out += (out.empty() ? "" : ", ") + std::string(a.hf_name);
  return out;
}

// "line L, column C" of a byte offset (nlohmann reports the offset one past the bad character).
std::string location_of(const std::string& text, std::size_t byte) {
  std::size_t line = 1;
  std::size_t column = 1;
  const std::size_t end = std::min(byte > 0 ? byte - 1 : 0, text.size());
  for (std::size_t i = 0; i < end; ++i) {
    if (text[i] == '\n') {
      ++line;
      column = 1;
    } else {
      ++column;
    }
  }
  return fmt::format("{}:{}", line, column);
}

// Reads fields of the top-level object; the first error wins, as with FieldReader.
class JsonFields {
 public:
  JsonFields(const json& object, std::string origin) : object_(object), origin_(std::move(origin)) {}

  std::optional<std::int64_t> integer(std::string_view key, bool required, std::int64_t min = 1) {
    const json* v = find(key, required, "a positive integer");
    if (!v) return std::nullopt;
    const std::string expected = min == 1 ? "a positive integer" : "a non-negative integer";
    if (v->is_number_unsigned() && v->get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX)) {
      fail(key, fmt::format("expected {}, got {}, which is out of the 64-bit range", expected, v->dump()));
      return std::nullopt;
    }
    if (v->is_number_float() && std::isfinite(v->get<double>()) && std::fabs(v->get<double>()) >= 9.2e18) {
      fail(key, fmt::format("expected {}, got {}, which is out of the 64-bit range", expected, v->dump()));
      return std::nullopt;
    }
    if (!v->is_number_integer()) {
      fail(key, fmt::format("expected {}, got {}", expected, v->dump()));
      return std::nullopt;
    }
    const auto value = v->get<std::int64_t>();
    if (value < min) {
      fail(key, fmt::format("expected {}, got {}", expected, value));
      return std::nullopt;
    }
    return value;
  }

  std::optional<double> number(std::string_view key, bool required) {
    const json* v = find(key, required, "a positive number");
    if (!v) return std::nullopt;
    if (!v->is_number() || !(v->get<double>() > 0.0) || !std::isfinite(v->get<double>())) {
      fail(key, fmt::format("expected a positive number, got {}", v->dump()));
      return std::nullopt;
    }
    return v->get<double>();
  }

  std::optional<bool> boolean(std::string_view key) {
    const json* v = find(key, false, "true or false");
    if (!v) return std::nullopt;
    if (!v->is_boolean()) {
      fail(key, fmt::format("expected true or false, got {}", v->dump()));
      return std::nullopt;
    }
    return v->get<bool>();
  }

  std::optional<std::string> string(std::string_view key) {
    const json* v = find(key, false, "text");
    if (!v) return std::nullopt;
    if (!v->is_string()) {
      fail(key, fmt::format("expected text, got {}", v->dump()));
      return std::nullopt;
    }
    return v->get<std::string>();
  }

  const json* object(std::string_view key) {
    const json* v = find(key, false, "an object");
    if (v && !v->is_object()) {
      fail(key, fmt::format("expected an object, got {}", v->dump()));
      return nullptr;
    }
    return v;
  }

  void fail(std::string_view key, const std::string& message) {
    if (!error_) error_ = Error{ErrorKind::invalid, fmt::format("{}: field '{}': {}", origin_, key, message)};
  }
  void fail_unsupported(std::string_view key, const std::string& message) {
    if (!error_) error_ = Error{ErrorKind::unsupported, fmt::format("{}: field '{}': {}", origin_, key, message)};
  }
  [[nodiscard]] const std::optional<Error>& error() const { return error_; }

 private:
  const json* find(std::string_view key, bool required, std::string_view expected) {
    if (error_) return nullptr;
    auto it = object_.find(key);
    if (it == object_.end() || it->is_null()) {
      if (required) {
        error_ = Error{ErrorKind::invalid,
                       fmt::format("{}: missing field '{}' ({}) in config.json", origin_, key, expected)};
      }
      return nullptr;
    }
    return &*it;
  }

  const json& object_;
  std::string origin_;
  std::optional<Error> error_;
};

}  // namespace

Expected<ModelSpec> parse_hf_config(const std::string& text, const std::string& origin, const std::string& name) {
  json root;
  try {
    root = json::parse(text);
  } catch (const json::parse_error& e) {
    std::string reason = e.what();
    // nlohmann: "[json.exception.parse_error.101] parse error at line 1, column 2: syntax error ..."
    if (auto colon = reason.find(": ", reason.find("column")); colon != std::string::npos) reason = reason.substr(colon + 2);
    if (text.find_first_not_of(" \t\r\n") == std::string::npos) {
      return make_error(ErrorKind::parse, "{}: empty file, expected a Hugging Face config.json object", origin);
    }
    return make_error(ErrorKind::parse, "{}:{}: malformed JSON: {}", origin, location_of(text, e.byte), reason);
  } catch (const json::exception& e) {
    // Also thrown while parsing: a number beyond double's range ("1e400") is out_of_range.406.
    std::string reason = e.what();
    if (auto bracket = reason.find("] "); bracket != std::string::npos) reason = reason.substr(bracket + 2);
    return make_error(ErrorKind::parse, "{}: malformed JSON: {}", origin, reason);
  }
  if (!root.is_object()) {
    return make_error(ErrorKind::parse, "{}: expected a JSON object (a Hugging Face config.json), got {}", origin,
                      root.type_name());
  }
  JsonFields f(root, origin);

  // Architecture: "architectures": ["LlamaForCausalLM"].
  const Architecture* arch = nullptr;
  auto archs = root.find("architectures");
  if (archs == root.end() || !archs->is_array() || archs->empty() || !(*archs)[0].is_string()) {
    return make_error(ErrorKind::invalid, "{}: field 'architectures': expected a list naming the architecture, like "
                      "[\"LlamaForCausalLM\"] (supported: {})", origin, supported_list());
  }
  const std::string arch_name = (*archs)[0].get<std::string>();
  for (const auto& a : kArchitectures) {
    if (a.hf_name == arch_name) arch = &a;
  }
  if (!arch) {
    return make_error(ErrorKind::unsupported, "{}: field 'architectures': unsupported architecture '{}' (supported: {})",
                      origin, arch_name, supported_list());
  }

  ModelSpec s;
  s.name = name;
  s.source = origin;
  s.family = arch->family;
  s.hidden_size = f.integer("hidden_size", true).value_or(1);
  s.intermediate_size = f.integer("intermediate_size", true).value_or(1);
  s.num_layers = f.integer("num_hidden_layers", true).value_or(1);
  s.num_heads = f.integer("num_attention_heads", true).value_or(1);
  s.num_kv_heads = f.integer("num_key_value_heads", false).value_or(s.num_heads);
  const auto head_dim = f.integer("head_dim", false);
  s.vocab_size = f.integer("vocab_size", true).value_or(1);
  s.max_position_embeddings = f.integer("max_position_embeddings", false).value_or(s.family == Family::gemma2 ? 8192 : 2048);
  s.tied_embeddings = f.boolean("tie_word_embeddings").value_or(arch->tied_default);
  // Qwen2 always has q/k/v bias; Llama may have it (attention_bias), Mistral and Gemma 2 never.
  s.qkv_bias = s.family == Family::qwen2 || (s.family == Family::llama && f.boolean("attention_bias").value_or(false));
  if (f.boolean("mlp_bias").value_or(false)) f.fail_unsupported("mlp_bias", "MLP bias is not supported");
  s.norm = NormKind::rmsnorm;
  s.norms_per_layer = s.family == Family::gemma2 ? 4 : 2;
  s.norm_eps = f.number("rms_norm_eps", false).value_or(arch->eps_default);

  // Activation: "hidden_act" (and Gemma's "hidden_activation").
  std::string act = f.string("hidden_activation").value_or(f.string("hidden_act").value_or(
      s.family == Family::gemma2 ? "gelu_pytorch_tanh" : "silu"));
  if (act == "silu" || act == "swish") {
    s.mlp_activation = MlpActivation::swiglu;
  } else if (act == "gelu_pytorch_tanh" || act == "gelu" || act == "gelu_new") {
    s.mlp_activation = MlpActivation::geglu;
  } else {
    f.fail_unsupported("hidden_act", fmt::format("unsupported activation '{}' (supported: silu, gelu_pytorch_tanh)", act));
  }

  // Sliding window: Mistral (all layers), Gemma 2 (even layers), Qwen2 only with use_sliding_window.
  const auto window = f.integer("sliding_window", false);
  if (s.family == Family::qwen2) {
    if (f.boolean("use_sliding_window").value_or(false)) {
      f.fail_unsupported("use_sliding_window", "Qwen2's sliding window on the upper layers is not supported");
    }
  } else if (s.family == Family::mistral && window) {
    s.sliding_window = SlidingWindow{*window, SlidingLayers::all};
  } else if (s.family == Family::gemma2) {
    s.sliding_window = SlidingWindow{window.value_or(4096), SlidingLayers::even};
  }
  if (s.family == Family::gemma2) {
    s.attn_logit_softcap = f.number("attn_logit_softcapping", false);
    s.final_logit_softcap = f.number("final_logit_softcapping", false);
    s.query_pre_attn_scalar = f.number("query_pre_attn_scalar", false).value_or(256.0);
  }

  // RoPE: rope_theta + rope_scaling, or transformers v5's rope_parameters.
  const json* rope_params = f.object("rope_parameters");
  const json* scaling = f.object("rope_scaling");
  s.rope.theta = f.number("rope_theta", false).value_or(
      rope_params && rope_params->contains("rope_theta") && (*rope_params)["rope_theta"].is_number()
          ? (*rope_params)["rope_theta"].get<double>()
          : 10000.0);
  if (!scaling) scaling = rope_params;
  if (scaling && !f.error()) {
    JsonFields sf(*scaling, origin + " (rope_scaling)");
    const std::string type = sf.string("rope_type").value_or(sf.string("type").value_or("default"));
    if (type == "default") {
      s.rope.scaling = RopeScaling::none;
    } else if (type == "linear" || type == "dynamic" || type == "llama3") {
      s.rope.scaling = *parse_enum<RopeScaling>(type);
      s.rope.factor = sf.number("factor", true).value_or(1.0);
      if (type == "llama3") {
        s.rope.low_freq_factor = sf.number("low_freq_factor", true).value_or(1.0);
        s.rope.high_freq_factor = sf.number("high_freq_factor", true).value_or(4.0);
        s.rope.original_max_position_embeddings = sf.integer("original_max_position_embeddings", true).value_or(1);
      }
    } else {
      f.fail_unsupported("rope_scaling", fmt::format("unsupported rope type '{}' (supported: linear, dynamic, llama3)", type));
    }
    if (sf.error()) return *sf.error();
  }

  const std::string dtype = f.string("torch_dtype").value_or(f.string("dtype").value_or("bfloat16"));
  if (dtype == "bfloat16") {
    s.dtype = DType::bf16;
  } else if (dtype == "float16") {
    s.dtype = DType::fp16;
  } else if (dtype == "float32") {
    s.dtype = DType::fp32;
  } else {
    f.fail("torch_dtype", fmt::format("expected bfloat16, float16 or float32, got '{}'", dtype));
  }
  if (f.error()) return *f.error();

  if (!head_dim && s.hidden_size % s.num_heads != 0) {
    return make_error(ErrorKind::invalid, "{}: field 'num_attention_heads': {} heads do not divide hidden_size {} "
                      "(and no head_dim is given)", origin, s.num_heads, s.hidden_size);
  }
  s.head_dim = head_dim.value_or(s.hidden_size / s.num_heads);
  if (auto problem = check_model_relations(s)) {
    return make_error(ErrorKind::invalid, "{}: field '{}': {}", origin, problem->field, problem->message);
  }
  return s;
}

Expected<ModelSpec> load_hf_config(const std::string& path) {
  std::filesystem::path file(path);
  std::error_code ec;
  if (std::filesystem::is_directory(file, ec)) file /= "config.json";
  auto text = read_text_file(file);
  if (!text) return text.error();
  // The model's name is its folder's name (a Hugging Face snapshot), else the file's stem.
  std::string name = file.stem().string();
  const auto folder = std::filesystem::absolute(file, ec).parent_path().filename().string();
  if (file.filename() == "config.json" && !folder.empty()) name = folder;
  return parse_hf_config(*text, file.string(), name);
}

}  // namespace mstplan
