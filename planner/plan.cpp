#include "planner/plan.h"

#include <algorithm>

#include <fmt/format.h>

namespace mstplan {

Plan Plan::vanilla() { return Plan{}; }

Plan Plan::recompute_all() {
  Plan p;
  p.recompute = RecomputeKind::full;
  return p;
}

Plan Plan::mst_reference(const ModelSpec& model) {
  Plan p = recompute_all();
  p.mlp = ChunkSetting{{}, model.hidden_size};
  p.mlp_mode = MlpMode::tiled;
  p.lm_head = ChunkSetting{(model.vocab_size + model.hidden_size - 1) / model.hidden_size, {}};
  p.lm_head_mode = LmHeadMode::recompute;
  return p;
}

Plan Plan::mst_authors() {
  Plan p = recompute_all();
  p.mlp = ChunkSetting{{}, 4096};  // LlamaMLPWarpper: chunk_size = max(4096 // batch, 1024), batch 1
  p.mlp_mode = MlpMode::paper;
  p.lm_head = ChunkSetting{64, {}};  // LlamaForCausalLMWarpper: mini_s = 64
  p.lm_head_mode = LmHeadMode::recompute;
  p.authors_code = true;
  return p;
}

std::int64_t chunk_count(const ChunkSetting& setting, std::int64_t positions) {
  std::int64_t m = 1;
  if (setting.chunks) m = *setting.chunks;
  if (setting.chunk_tokens) m = (positions + *setting.chunk_tokens - 1) / *setting.chunk_tokens;
  return std::clamp<std::int64_t>(m, 1, std::max<std::int64_t>(positions, 1));
}

bool recomputes_layer(const Plan& plan, std::int64_t layer) {
  if (plan.recompute == RecomputeKind::none) return false;
  return plan.recompute_layers.empty() ||
         std::binary_search(plan.recompute_layers.begin(), plan.recompute_layers.end(), layer);
}

Plan apply_knobs(Plan plan, const PlanKnobs& knobs) {
  if (knobs.mlp_chunks) plan.mlp = *knobs.mlp_chunks;
  if (knobs.mlp_mode) plan.mlp_mode = *knobs.mlp_mode;
  if (knobs.lm_head_chunks) plan.lm_head = *knobs.lm_head_chunks;
  if (knobs.lm_head_mode) plan.lm_head_mode = *knobs.lm_head_mode;
  if (knobs.recompute) plan.recompute = *knobs.recompute;
  if (knobs.recompute_layers) {
    plan.recompute_layers = *knobs.recompute_layers;
    std::sort(plan.recompute_layers.begin(), plan.recompute_layers.end());
    plan.recompute_layers.erase(std::unique(plan.recompute_layers.begin(), plan.recompute_layers.end()),
                                plan.recompute_layers.end());
  }
  if (knobs.offload_checkpoints) plan.offload_checkpoints = *knobs.offload_checkpoints;
  if (knobs.authors_code) plan.authors_code = *knobs.authors_code;
  return plan;
}

std::string describe_plan(const Plan& p, const ModelSpec& model, std::int64_t seq_len) {
  auto chunks = [&](const ChunkSetting& c, std::int64_t positions) {
    const std::int64_t m = chunk_count(c, positions);
    if (c.chunk_tokens) return fmt::format("{} chunks of {} tokens", m, *c.chunk_tokens);
    return m == 1 ? std::string("1 chunk") : fmt::format("{} chunks", m);
  };
  std::string recompute = "no recompute";
  if (p.recompute != RecomputeKind::none) {
    const std::int64_t layers =
        p.recompute_layers.empty() ? model.num_layers : static_cast<std::int64_t>(p.recompute_layers.size());
    recompute = fmt::format("recompute {} {}/{} layers", to_string(p.recompute), layers, model.num_layers);
  }
  return fmt::format("MLP {} ({}), LM head {} ({}), {}{}", chunks(p.mlp, seq_len), to_string(p.mlp_mode),
                     chunks(p.lm_head, seq_len - 1 > 0 ? seq_len - 1 : 1), to_string(p.lm_head_mode), recompute,
                     p.offload_checkpoints ? ", checkpoints offloaded to host" : "") +
         (p.authors_code ? ", the MST authors' code" : "");
}

}  // namespace mstplan
