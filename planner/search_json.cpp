#include "planner/search_json.h"

#include <algorithm>

#include "planner/enum_names.h"

namespace mstplan {

nlohmann::json plan_json(const Plan& p, const ModelSpec& model, std::int64_t seq_len) {
  auto chunks = [&](const ChunkSetting& c, std::int64_t positions) {
    nlohmann::json j = {{"chunks", chunk_count(c, positions)}};
    if (c.chunk_tokens) j["chunk_tokens"] = *c.chunk_tokens;
    return j;
  };
  nlohmann::json j;
  j["mlp"] = chunks(p.mlp, seq_len);
  j["mlp"]["mode"] = to_string(p.mlp_mode);
  j["lm_head"] = chunks(p.lm_head, std::max<std::int64_t>(seq_len - 1, 1));
  j["lm_head"]["mode"] = to_string(p.lm_head_mode);
  nlohmann::json layers = nlohmann::json::array();
  if (p.recompute != RecomputeKind::none) {
    for (std::int64_t l = 0; l < model.num_layers; ++l) {
      if (recomputes_layer(p, l)) layers.push_back(l);
    }
  }
  j["recompute"] = {{"kind", to_string(p.recompute)}, {"layers", layers}};
  j["offload"] = p.offload_checkpoints;
  j["description"] = describe_plan(p, model, seq_len);
  return j;
}

nlohmann::json evaluation_json(const Evaluation& e, const ModelSpec& model) {
  nlohmann::json by_kind;
  for (std::size_t k = 0; k < kTensorKinds; ++k) {
    by_kind[std::string(to_string(static_cast<TensorKind>(k)))] = e.analysis.peak.by_kind[k];
  }
  nlohmann::json by_phase;
  for (std::size_t k = 0; k < kPhases; ++k) {
    by_phase[std::string(to_string(static_cast<Phase>(k)))] = e.analysis.phase_peak_bytes[k];
  }
  nlohmann::json j = {{"seq_len", e.seq_len},
          {"fits", e.fits},
          {"peak_bytes", e.analysis.peak.allocated_bytes},
          {"peak_live_bytes", e.analysis.peak_live_bytes},
          {"required_bytes", e.required_bytes},
          {"host_peak_bytes", e.analysis.host_peak_bytes},
          {"host_node_bytes", e.host_node_bytes},
          {"peak_at", e.peak_at},
          {"peak_phase", to_string(e.peak_phase)},
          {"peak_breakdown_bytes", by_kind},
          {"phase_peak_bytes", by_phase},
          {"tokens_per_s", e.time.tokens_per_s},
          {"step_seconds", e.time.step_seconds},
          {"comm_seconds", e.time.comm_seconds},
          {"exposed_comm_seconds", e.time.exposed_comm_seconds},
          {"plan", plan_json(e.plan, model, e.positions)}};
  if (e.pool) {
    // pytorch profile: the caching allocator simulated with the GPU's usable bytes.
    j["caching_allocator"] = {{"peak_allocated_bytes", e.pool->peak_allocated_bytes},
                              {"peak_reserved_bytes", e.pool->peak_reserved_bytes},
                              {"reserved_at_peak_allocated_bytes", e.pool->reserved_at_peak_allocated_bytes},
                              {"segments_created", e.pool->segments_created},
                              {"cache_flushes", e.pool->cache_flushes},
                              {"out_of_memory", e.pool->out_of_memory}};
  }
  return j;
}

void add_search_json(nlohmann::json& out, const ModelSpec& model, const TrainingSetup& setup, const SearchResult& result,
                     Method chosen_method, const Evaluation* chosen) {
  nlohmann::json methods = nlohmann::json::array();
  for (const MethodResult& m : result.methods) {
    nlohmann::json j = {{"method", to_string(m.method)}};
    if (m.at_max) {
      j["max_seq_len"] = m.at_max->seq_len;
      j["peak_bytes"] = m.at_max->analysis.peak.allocated_bytes;
      j["peak_at"] = m.at_max->peak_at;
      j["tokens_per_s"] = m.at_max->time.tokens_per_s;
      j["plan"] = plan_json(m.at_max->plan, model, m.at_max->positions);
      j["at_max"] = evaluation_json(*m.at_max, model);
    } else {
      j["max_seq_len"] = 0;
      j["peak_bytes"] = nullptr;
      j["peak_at"] = nullptr;
      j["tokens_per_s"] = nullptr;
      j["plan"] = nullptr;
    }
    if (setup.seq_len) {
      j["seq_len"] = *setup.seq_len;
      j["fits"] = m.at_request && m.at_request->fits;
      j["peak_bytes_at_seq"] = m.at_request ? nlohmann::json(m.at_request->analysis.peak.allocated_bytes) : nlohmann::json(nullptr);
      j["at_seq"] = m.at_request ? evaluation_json(*m.at_request, model) : nlohmann::json(nullptr);
    }
    methods.push_back(j);
  }
  out["methods"] = methods;
  nlohmann::json pareto = nlohmann::json::array();
  for (const Evaluation& e : result.pareto) pareto.push_back(evaluation_json(e, model));
  out["pareto"] = pareto;
  if (setup.seq_len) {
    out["fastest_at_seq"] = result.fastest_at_request ? evaluation_json(*result.fastest_at_request, model) : nlohmann::json(nullptr);
  }
  out["chosen"] = chosen ? nlohmann::json{{"method", to_string(chosen_method)}, {"evaluation", evaluation_json(*chosen, model)}}
                         : nlohmann::json(nullptr);
  out["evaluations"] = result.evaluations;
}

nlohmann::json layouts_pareto_json(const std::vector<LayoutResult>& layouts, const ModelSpec& model) {
  nlohmann::json out = nlohmann::json::array();
  for (const LayoutPoint& p : layouts_pareto(layouts)) {
    out.push_back({{"zero", static_cast<int>(p.zero)}, {"sp", p.sp}, {"cp", p.cp}, {"plan", evaluation_json(p.plan, model)}});
  }
  return out;
}

nlohmann::json layouts_json(const std::vector<LayoutResult>& layouts, const ModelSpec& model) {
  nlohmann::json out = nlohmann::json::array();
  for (const LayoutResult& l : layouts) {
    out.push_back({{"zero", static_cast<int>(l.zero)},
                   {"sp", l.sp},
                   {"cp", l.cp},
                   {"static_bytes", l.static_bytes},
                   {"longest", l.longest ? evaluation_json(*l.longest, model) : nlohmann::json(nullptr)},
                   {"at_request", l.at_request ? evaluation_json(*l.at_request, model) : nlohmann::json(nullptr)}});
  }
  return out;
}

}  // namespace mstplan
