// mst-plan models [NAME|PATH]: the model catalog, or one spec as YAML or JSON.
#include "cli/command.h"

#include <fmt/ostream.h>
#include "planner/catalog.h"
#include "planner/json_output.h"
#include "planner/units.h"
#include "planner/yaml_input.h"

namespace mstplan::cli {

std::optional<Failure> run_models(const std::string& which, bool json, std::ostream& out) {
  if (!which.empty()) {
    auto model = resolve_model(which);
    if (!model) return Failure{exit_code_of(model.error()), model.error().message};
    if (json) {
      out << json_text(model_json(*model)) << '\n';
    } else {
      fmt::print(out, "# {} parameters (derived from the shapes below); read from {}\n{}",
                 format_thousands(parameter_count(*model)), model->source, model_to_yaml(*model));
    }
    return std::nullopt;
  }
  if (json) {
    nlohmann::json list = nlohmann::json::array();
    for (const ModelSpec& m : builtin_models()) list.push_back(model_json(m));
    out << json_text(list) << '\n';
    return std::nullopt;
  }
  fmt::print(out, "{:<13} {:<8} {:>16} {:>6} {:>6} {:>6} {:>9} {:>7}  {}\n", "model", "family", "parameters", "layers",
             "hidden", "MLP", "heads/kv", "vocab", "notes");
  for (const ModelSpec& m : builtin_models()) {
    std::string notes;
    auto note = [&](bool on, std::string_view text) {
      if (on) notes += (notes.empty() ? "" : ", ") + std::string(text);
    };
    note(m.tied_embeddings, "tied");
    note(m.qkv_bias, "qkv bias");
    note(m.sliding_window.has_value(), "sliding window");
    note(m.final_logit_softcap.has_value(), "soft-capping");
    note(m.rope.scaling == RopeScaling::llama3, "llama3 rope");
    fmt::print(out, "{:<13} {:<8} {:>16} {:>6} {:>6} {:>6} {:>9} {:>7}  {}\n", m.name, to_string(m.family),
               format_thousands(parameter_count(m)), m.num_layers, m.hidden_size, m.intermediate_size,
               fmt::format("{}/{}", m.num_heads, m.num_kv_heads), m.vocab_size, notes);
  }
  return std::nullopt;
}

}  // namespace mstplan::cli
