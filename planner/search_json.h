#pragma once
// The search's results as JSON: the `methods`, `pareto`, `fastest_at_seq`, `chosen` and
// `evaluations` fields of `mst-plan --json`, which the reports also write (report.json), so that
// both say the same numbers the same way.
//
//   nlohmann::json out;
//   add_search_json(out, model, setup, result, Method::automatic, &*result.methods.back().at_max);
#include <cstdint>

#include <nlohmann/json.hpp>

#include "planner/search.h"

namespace mstplan {

[[nodiscard]] nlohmann::json plan_json(const Plan& plan, const ModelSpec& model, std::int64_t seq_len);
[[nodiscard]] nlohmann::json evaluation_json(const Evaluation& e, const ModelSpec& model);
/// The `methods` array (and `pareto`, `fastest_at_seq`, `chosen`) of the --json contract.
/// Each layout: {"zero", "static_bytes", "longest": evaluation or null, "at_request": evaluation or null}.
[[nodiscard]] nlohmann::json layouts_json(const std::vector<LayoutResult>& layouts, const ModelSpec& model);
/// layouts_pareto(): [{zero, sp, plan}], longest first.
[[nodiscard]] nlohmann::json layouts_pareto_json(const std::vector<LayoutResult>& layouts, const ModelSpec& model);

void add_search_json(nlohmann::json& out, const ModelSpec& model, const TrainingSetup& setup, const SearchResult& result,
                     Method chosen_method, const Evaluation* chosen);

}  // namespace mstplan
