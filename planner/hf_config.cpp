#include "planner/hf_config.h"

#include <cmath>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "planner/yaml_input.h"

namespace mstplan {
namespace {

using json = nlohmann::json;

// An architecture and the defaults of its transformers config class, used for fields absent
// from config.json (the sizes themselves are required: a config without them is broken).
struct Architecture {
  std::string_view hf_name;
  Family family;
  bool tied;                                  // tie_word_embeddings
  std::int64_t max_position_embeddings;
  std::optional<std::int64_t> kv_heads;       // num_key_value_heads; nullopt: = num_attention_heads
  std::optional<std::int64_t> head_dim;       // nullopt: hidden_size / num_attention_heads
  std::optional<std::int64_t> sliding_window;
};

// LlamaConfig, MistralConfig, Qwen2Config, Gemma2Config (transformers 4.4x): rms_norm_eps 1e-6
// and rope_theta 10000 for all four.
constexpr std::array<Architecture, 4> kArchitectures{{
    {"LlamaForCausalLM", Family::llama, false, 2048, std::nullopt, std::nullopt, std::nullopt},
    {"MistralForCausalLM", Family::mistral, false, 4096 * 32, 8, std::nullopt, 4096},
    {"Qwen2ForCausalLM", Family::qwen2, false, 32768, 32, std::nullopt, std::nullopt},
    {"Gemma2ForCausalLM", Family::gemma2, true, 8192, 4, 256, 4096},
}};
constexpr double kDefaultEps = 1e-6;
constexpr double kDefaultRopeTheta = 10000.0;
// Gemma2Config: attention scores soft-capped at 50, logits at 30, scores scaled by 1/sqrt(256).
constexpr double kGemmaAttnSoftcap = 50.0;
constexpr double kGemmaFinalSoftcap = 30.0;
constexpr double kGemmaQueryPreAttnScalar = 256.0;

std::string supported_list() {
  std::string out;
  for (const auto& a : kArchitectures) out += (out.empty() ? "" : ", ") + std::string(a.hf_name);
  return out;
}

// "line:column" (1-based) of a byte offset.
std::string location_of(const std::string& text, std::size_t byte) {
  std::size_t line = 1;
  std::size_t column = 1;
  for (std::size_t i = 0; i < std::min(byte, text.size()); ++i) {
    if (text[i] == '\n') {
      ++line;
      column = 1;
    } else {
      ++column;
    }
  }
  return fmt::format("{}:{}", line, column);
}

// Reads the fields of one JSON object; the first error wins, as with FieldReader. nlohmann keeps
// no positions for values, so a field's location is found in the text: the first `"key":` at or
// after the object's own start.
class JsonFields {
 public:
  JsonFields(const json& object, const std::string& text, std::string origin, std::size_t search_from,
             std::string prefix, std::optional<Error>* error)
      : object_(object), text_(text), origin_(std::move(origin)), from_(search_from), prefix_(std::move(prefix)),
        error_(error) {}

  /// Present, even when null.
  [[nodiscard]] bool present(std::string_view key) const { return object_.contains(key); }

  std::optional<std::int64_t> integer(std::string_view key, bool required) {
    const json* v = find(key, required, "a positive integer");
    if (!v) return std::nullopt;
    if ((v->is_number_unsigned() && v->get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX)) ||
        (v->is_number_float() && std::fabs(v->get<double>()) >= 9.2e18)) {
      fail(key, fmt::format("expected a positive integer, got {}, which is out of the 64-bit range", v->dump()));
      return std::nullopt;
    }
    if (!v->is_number_integer() || v->get<std::int64_t>() < 1) {
      fail(key, fmt::format("expected a positive integer, got {}", v->dump()));
      return std::nullopt;
    }
    return v->get<std::int64_t>();
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

  /// A nested object's reader (nullopt when absent or null).
  std::optional<JsonFields> object(std::string_view key) {
    const json* v = find(key, false, "an object");
    if (!v) return std::nullopt;
    if (!v->is_object()) {
      fail(key, fmt::format("expected an object, got {}", v->dump()));
      return std::nullopt;
    }
    return JsonFields(*v, text_, origin_, offset_of(key).value_or(from_), prefix_ + std::string(key) + ".", error_);
  }

  void fail(std::string_view key, const std::string& message, ErrorKind kind = ErrorKind::invalid) {
    if (*error_) return;
    const auto at = offset_of(key);
    const std::string where = at ? fmt::format("{}:{}", origin_, location_of(text_, *at)) : origin_;
    *error_ = Error{kind, fmt::format("{}: field '{}{}': {}", where, prefix_, key, message)};
  }

 private:
  std::optional<std::size_t> offset_of(std::string_view key) const {
    const std::string quoted = fmt::format("\"{}\"", key);
    for (auto at = text_.find(quoted, from_); at != std::string::npos; at = text_.find(quoted, at + 1)) {
      const auto next = text_.find_first_not_of(" \t\r\n", at + quoted.size());
      if (next != std::string::npos && text_[next] == ':') return at;
    }
    return std::nullopt;
  }

  const json* find(std::string_view key, bool required, std::string_view expected) {
    if (*error_) return nullptr;
    auto it = object_.find(key);
    if (it == object_.end() || it->is_null()) {
      if (required) {
        *error_ = Error{ErrorKind::invalid, fmt::format("{}: {} field '{}{}' ({}) in config.json", origin_,
                                                        it == object_.end() ? "missing" : "null", prefix_, key, expected)};
      }
      return nullptr;
    }
    return &*it;
  }

  const json& object_;
  const std::string& text_;
  std::string origin_;
  std::size_t from_;
  std::string prefix_;
  std::optional<Error>* error_;
};

// RoPE scaling from rope_scaling (or rope_parameters): type and its factors.
void read_rope_scaling(JsonFields* scaling, ModelSpec& s) {
  if (!scaling) return;
  const std::string type = scaling->string("rope_type").value_or(scaling->string("type").value_or("default"));
  if (type == "default") {
    s.rope.scaling = RopeScaling::none;
  } else if (type == "linear" || type == "dynamic" || type == "llama3") {
    s.rope.scaling = *parse_enum<RopeScaling>(type);
    s.rope.factor = scaling->number("factor", true).value_or(1.0);
    if (type == "llama3") {
      s.rope.low_freq_factor = scaling->number("low_freq_factor", true).value_or(1.0);
      s.rope.high_freq_factor = scaling->number("high_freq_factor", true).value_or(4.0);
      s.rope.original_max_position_embeddings = scaling->integer("original_max_position_embeddings", true).value_or(1);
    }
  } else {
    scaling->fail(scaling->present("rope_type") ? "rope_type" : "type",
                  fmt::format("unsupported rope type '{}' (supported: linear, dynamic, llama3)", type),
                  ErrorKind::unsupported);
  }
}

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
    // e.byte is one past the offending character.
    return make_error(ErrorKind::parse, "{}:{}: malformed JSON: {}", origin, location_of(text, e.byte > 0 ? e.byte - 1 : 0),
                      reason);
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
  std::optional<Error> error;
  JsonFields f(root, text, origin, 0, "", &error);

  // Architecture: "architectures": ["LlamaForCausalLM"].
  auto archs = root.find("architectures");
  if (archs == root.end() || !archs->is_array() || archs->empty() || !(*archs)[0].is_string()) {
    f.fail("architectures", fmt::format("expected a list naming the architecture, like [\"LlamaForCausalLM\"] "
                                        "(supported: {})", supported_list()));
    return *error;
  }
  const std::string arch_name = (*archs)[0].get<std::string>();
  const Architecture* arch = nullptr;
  for (const auto& a : kArchitectures) {
    if (a.hf_name == arch_name) arch = &a;
  }
  if (!arch) {
    f.fail("architectures", fmt::format("unsupported architecture '{}' (supported: {})", arch_name, supported_list()),
           ErrorKind::unsupported);
    return *error;
  }

  ModelSpec s;
  s.name = name;
  s.source = origin;
  s.family = arch->family;
  s.hidden_size = f.integer("hidden_size", true).value_or(1);
  s.intermediate_size = f.integer("intermediate_size", true).value_or(1);
  s.num_layers = f.integer("num_hidden_layers", true).value_or(1);
  s.num_heads = f.integer("num_attention_heads", true).value_or(1);
  s.num_kv_heads = f.integer("num_key_value_heads", false).value_or(arch->kv_heads.value_or(s.num_heads));
  const auto head_dim = f.integer("head_dim", false);
  s.vocab_size = f.integer("vocab_size", true).value_or(1);
  s.max_position_embeddings = f.integer("max_position_embeddings", false).value_or(arch->max_position_embeddings);
  s.tied_embeddings = f.boolean("tie_word_embeddings").value_or(arch->tied);
  // Qwen2 always has q/k/v bias; Llama may have it (attention_bias), Mistral and Gemma 2 never.
  s.qkv_bias = s.family == Family::qwen2 || (s.family == Family::llama && f.boolean("attention_bias").value_or(false));
  if (f.boolean("mlp_bias").value_or(false)) f.fail("mlp_bias", "MLP bias is not supported", ErrorKind::unsupported);
  s.norm = NormKind::rmsnorm;
  s.norms_per_layer = s.family == Family::gemma2 ? 4 : 2;
  s.norm_eps = f.number("rms_norm_eps", false).value_or(kDefaultEps);

  // Activation: "hidden_act", or Gemma's "hidden_activation" (which wins when both are given).
  const char* act_key = f.present("hidden_activation") ? "hidden_activation" : "hidden_act";
  const std::string act = f.string(act_key).value_or(s.family == Family::gemma2 ? "gelu_pytorch_tanh" : "silu");
  if (act == "silu" || act == "swish") {
    s.mlp_activation = MlpActivation::swiglu;
  } else if (act == "gelu_pytorch_tanh" || act == "gelu" || act == "gelu_new") {
    s.mlp_activation = MlpActivation::geglu;
  } else {
    f.fail(act_key, fmt::format("unsupported activation '{}' (supported: silu, gelu_pytorch_tanh)", act),
           ErrorKind::unsupported);
  }

  // Sliding window: Mistral (all layers), Gemma 2 (even layers), Qwen2 only with
  // use_sliding_window. An explicit null turns it off; an absent field takes the default.
  const auto window = f.present("sliding_window") ? f.integer("sliding_window", false) : arch->sliding_window;
  if (s.family == Family::qwen2 && f.boolean("use_sliding_window").value_or(false)) {
    f.fail("use_sliding_window", "Qwen2's sliding window on the upper layers is not supported", ErrorKind::unsupported);
  } else if (s.family == Family::mistral && window) {
    s.sliding_window = SlidingWindow{*window, SlidingLayers::all};
  } else if (s.family == Family::gemma2 && window) {
    s.sliding_window = SlidingWindow{*window, SlidingLayers::even};
  }
  if (s.family == Family::gemma2) {
    auto capped = [&](const char* key, double fallback) {
      return f.present(key) ? f.number(key, false) : std::optional<double>(fallback);
    };
    s.attn_logit_softcap = capped("attn_logit_softcapping", kGemmaAttnSoftcap);
    s.final_logit_softcap = capped("final_logit_softcapping", kGemmaFinalSoftcap);
    s.query_pre_attn_scalar = f.number("query_pre_attn_scalar", false).value_or(kGemmaQueryPreAttnScalar);
  }

  // RoPE: rope_theta + rope_scaling, or transformers v5's rope_parameters (theta inside).
  auto rope_params = f.object("rope_parameters");
  auto scaling = f.object("rope_scaling");
  s.rope.theta = f.number("rope_theta", false)
                     .value_or(rope_params ? rope_params->number("rope_theta", false).value_or(kDefaultRopeTheta)
                                           : kDefaultRopeTheta);
  read_rope_scaling(scaling ? &*scaling : (rope_params ? &*rope_params : nullptr), s);

  const char* dtype_key = f.present("torch_dtype") ? "torch_dtype" : "dtype";
  const std::string dtype = f.string(dtype_key).value_or("bfloat16");
  if (dtype == "bfloat16") {
    s.dtype = DType::bf16;
  } else if (dtype == "float16") {
    s.dtype = DType::fp16;
  } else if (dtype == "float32") {
    s.dtype = DType::fp32;
  } else {
    f.fail(dtype_key, fmt::format("expected bfloat16, float16 or float32, got '{}'", dtype));
  }
  if (error) return *error;

  if (!head_dim && !arch->head_dim && s.hidden_size % s.num_heads != 0) {
    f.fail("num_attention_heads", fmt::format("{} heads do not divide hidden_size {} (and no head_dim is given)",
                                              s.num_heads, s.hidden_size));
    return *error;
  }
  s.head_dim = head_dim.value_or(arch->head_dim.value_or(s.hidden_size / s.num_heads));
  if (auto problem = check_model_relations(s)) {
    f.fail(problem->field, problem->message);
    return *error;
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
  auto spec = parse_hf_config(*text, file.string(), name);
  // A folder holding config.json is what from_pretrained loads (a snapshot with its weights).
  if (spec && file.filename() == "config.json") spec->name_or_path = std::filesystem::absolute(file, ec).parent_path().string();
  return spec;
}

}  // namespace mstplan
