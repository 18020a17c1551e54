// The report's report.json: every number, the search in the form of `mst-plan --json`.
#include "report/report_formats.h"

#include "planner/json_output.h"
#include "planner/search_json.h"

namespace mstplan::report::detail {

nlohmann::json report_json(const Report& r, const std::string& command) {
  nlohmann::json j;
  j["command"] = command;
  j["model"] = model_json(r.model);
  j["gpu"] = gpu_json(r.gpu);
  j["setup"] = setup_json(r.setup);
  j["static"] = static_memory_json(r.model, r.gpu, r.setup);
  nlohmann::json search;
  const MethodResult* best = r.method(Method::automatic);
  add_search_json(search, r.model, r.setup, r.search, Method::automatic,
                  best && best->at_max ? &*best->at_max : nullptr);
  j["search"] = search;
  nlohmann::json timelines = nlohmann::json::array();
  for (const TimelineSeries& t : r.timelines) {
    timelines.push_back({{"label", t.label},
                         {"ops", t.ops},
                         {"peak_op_index", t.peak_index},
                         {"samples", t.samples.size()},
                         {"evaluation", evaluation_json(t.evaluation, r.model)}});
  }
  j["timeline"] = {{"seq_len", r.timeline_seq_len}, {"series", timelines}};
  nlohmann::json grid = nlohmann::json::array();
  for (const ChunkPoint& c : r.chunk_grid) {
    grid.push_back({{"mlp_chunks", c.mlp_chunks},
                    {"lm_head_chunks", c.lm_head_chunks},
                    {"max_seq_len", c.longest ? nlohmann::json(c.longest->seq_len) : nlohmann::json(nullptr)},
                    {"tokens_per_s", c.longest ? nlohmann::json(c.longest->time.tokens_per_s) : nlohmann::json(nullptr)}});
  }
  j["chunk_grid"] = {{"plan", plan_json(r.chunk_base_plan, r.model, 1)}, {"points", grid}};
  nlohmann::json tp = nlohmann::json::array();
  for (const ThroughputPoint& p : r.throughput) {
    tp.push_back({{"method", to_string(p.method)},
                  {"seq_len", p.evaluation.seq_len},
                  {"tokens_per_s", p.evaluation.time.tokens_per_s},
                  {"peak_bytes", p.evaluation.analysis.peak.allocated_bytes},
                  {"plan", plan_json(p.evaluation.plan, r.model, p.evaluation.positions)}});
  }
  j["throughput"] = tp;
  nlohmann::json measured = nlohmann::json::array();
  for (const FidelityRow& m : r.measured) {
    measured.push_back({{"origin", m.measurement.origin},
                        {"measured_by", m.measurement.measured_by},
                        {"environment", m.measurement.environment},
                        {"method", to_string(m.measurement.method)},
                        {"seq_len", *m.measurement.setup.seq_len},
                        {"measured_peak_bytes", m.measurement.peak_allocated_bytes},
                        {"predicted_peak_bytes", m.predicted},
                        {"error", m.error}});
  }
  j["measured"] = measured;
  return j;
}

}  // namespace mstplan::report::detail
