#pragma once
// What the plan command prints: the static memory, the table of methods with their longest
// sequences, the chosen plan with its memory breakdown at the peak (the JSON form: planner/search_json.h).
#include <iosfwd>

#include "planner/gpu_spec.h"
#include "planner/plan_io.h"
#include "planner/model_spec.h"
#include "planner/search.h"
#include "planner/setup.h"

namespace mstplan::cli {

/// The first lines (model, GPU, setup) and the static memory table; with "does not fit" advice
/// when the static state alone exceeds the GPU. Returns whether the static state fits.
bool print_static(std::ostream& out, const ModelSpec& model, const GpuSpec& gpu, const TrainingSetup& setup);

/// A plan file's recorded prediction against the step it describes, rebuilt (`now`): an error
/// naming the field when the peak, its op or the fit differ (the file was edited, or written by
/// another version of the planner), for `show`, `run` and `verify` to refuse.
[[nodiscard]] std::optional<Error> check_recorded_prediction(const std::string& path, const PlanFile& file,
                                                             const Evaluation& now);

/// The methods table, the chosen plan and its breakdown, the Pareto set of auto, and where the
/// plan goes (`plan_path`: the --out file, empty without one).
void print_search(std::ostream& out, const ModelSpec& model, const GpuSpec& gpu, const TrainingSetup& setup,
                  const SearchResult& result, Method chosen_method, const Evaluation* chosen,
                  const std::string& plan_path);

/// A multi-GPU setup's layouts: each ZeRO stage's static bytes per rank and auto's longest
/// sequence (and, with a requested length, whether it fits there), the setup's own stage marked.
void print_layouts(std::ostream& out, const ModelSpec& model, const TrainingSetup& setup,
                   const std::vector<LayoutResult>& layouts);

}  // namespace mstplan::cli
