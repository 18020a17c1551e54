#pragma once
// Engine exports (`mst-plan ... --export deepspeed --out plan.yaml`): a plan written as the config of a
// training engine users already run, so that the step the engine executes is the one the planner
// predicted. Only what the engine can express is exported; auto's candidates are mapped to such
// plans (SearchOptions::express), and a setup no engine config reproduces is refused with the reason.
//
//   deepspeed   an ArcticTraining recipe (ALST's: DeepSpeed ZeRO-3, Ulysses, TiledMLP, Liger, checkpoint
//               offload) -> STEM.arctic.yml, run with `arctic_training STEM.arctic.yml`
//   accelerate  an accelerate config (FSDP2, DDP or one GPU) and the Trainer's arguments
//               -> STEM.accelerate.yaml and STEM.training_args.json
//   torchtitan  refused: the pytorch profile models the Hugging Face step, not torchtitan's
//
// The versions each export targets, and where every key was read, are in Note [Engine exports]
// (engine_export.cpp).
//
//   if (auto why = export_setup_problem(Engine::deepspeed, model, setup)) ... refuse *why;
//   options.express = [&](const Plan& p) { return express_plan(Engine::deepspeed, model, setup, p); };
//   std::vector<ExportFile> files = export_files(Engine::deepspeed, plan_file, "plan.yaml");
#include <optional>
#include <string>
#include <vector>

#include "planner/enum_names.h"
#include "planner/model_spec.h"
#include "planner/plan.h"
#include "planner/plan_io.h"
#include "planner/setup.h"

namespace mstplan {

enum class Engine { deepspeed, accelerate, torchtitan };

template <>
struct EnumNames<Engine> {
  static constexpr std::array<std::pair<Engine, std::string_view>, 3> table{
      {{Engine::deepspeed, "deepspeed"}, {Engine::accelerate, "accelerate"}, {Engine::torchtitan, "torchtitan"}}};
};

/// Why `setup` (its profile, precision, optimizer, layout, attention) cannot be run by `engine`, with
/// the flag or field to change; nullopt when it can.
[[nodiscard]] std::optional<std::string> export_setup_problem(Engine engine, const ModelSpec& model,
                                                              const TrainingSetup& setup);

/// Why `engine` cannot run `plan` as planned (a knob its config has no setting for); nullopt when
/// it can. Only meaningful when export_setup_problem is nullopt.
[[nodiscard]] std::optional<std::string> export_plan_problem(Engine engine, const ModelSpec& model,
                                                             const TrainingSetup& setup, const Plan& plan);

/// The plan nearest to `plan` that `engine` runs (selective or partial recompute becomes full
/// recompute of every layer, chunked MLPs become the engine's tiling or none, chunked LM heads
/// Liger's fused loss); nullopt when there is none. auto's candidates for an export.
[[nodiscard]] std::optional<Plan> express_plan(Engine engine, const ModelSpec& model, const TrainingSetup& setup,
                                               Plan plan);

struct ExportFile {
  std::string path;  ///< beside the plan file: "plan.arctic.yml" for plan.yaml
  std::string text;
};

/// The engine's files for `file` (a plan neither problem refuses: an invariant), named after
/// `plan_path`'s stem; `producer` names the program that wrote them ("mst-plan 0.1.0 (commit ...)").
[[nodiscard]] std::vector<ExportFile> export_files(Engine engine, const PlanFile& file, const std::string& plan_path,
                                                   const std::string& producer);

}  // namespace mstplan
