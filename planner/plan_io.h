#pragma once
// Plan files: everything needed to rebuild the same step program (model spec, GPU spec, setup,
// plan knobs, sequence length), plus what the planner predicted for it. Written by
// `mst-plan --out plan.yaml`, read back by `mst-plan show plan.yaml` and by the runtime.
//
//   PlanFile f{model, gpu, setup, plan, 65536, prediction};
//   if (auto error = write_text_file("plan.yaml", plan_to_yaml(f))) ...;
//   Expected<PlanFile> back = load_plan_file("plan.yaml");
#include <cstdint>
#include <optional>
#include <string>

#include "planner/cluster_spec.h"
#include "planner/error.h"
#include "planner/gpu_spec.h"
#include "planner/model_spec.h"
#include "planner/plan.h"
#include "planner/setup.h"

namespace mstplan {

/// What the planner predicted when it wrote the plan.
struct Prediction {
  std::string method;                     ///< "auto", "mst", ...
  std::int64_t peak_allocated_bytes = 0;  ///< device, allocator-rounded, at the peak
  std::int64_t peak_live_bytes = 0;       ///< device, requested
  std::int64_t required_bytes = 0;        ///< peak + the GPU's reserve
  std::string peak_at;
  double tokens_per_s = 0;
  bool operator==(const Prediction&) const = default;
};

struct PlanFile {
  ModelSpec model;
  GpuSpec gpu;
  TrainingSetup setup;
  Plan plan;
  std::int64_t seq_len = 0;
  Prediction predicted;
  /// The cluster of a multi-GPU plan (setup.parallel.gpus > 1), with the nodes the ranks use.
  std::optional<ClusterSpec> cluster;
};

/// Every knob of the plan, set (a scenario's knobs leave some to the search).
[[nodiscard]] PlanKnobs plan_knobs(const Plan& plan);

[[nodiscard]] std::string plan_to_yaml(const PlanFile& file);
[[nodiscard]] Expected<PlanFile> parse_plan_yaml(const std::string& text, const std::string& origin);
[[nodiscard]] Expected<PlanFile> load_plan_file(const std::string& path);

/// Writes `text` to `path` through a temporary file in the same folder and a rename, so the
/// file is either the old one or the complete new one, never half-written.
[[nodiscard]] std::optional<Error> write_text_file(const std::string& path, const std::string& text);

}  // namespace mstplan
