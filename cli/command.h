#pragma once
// What the commands of the mst-plan command line share (cli/, not installed): the failure a command
// returns, the flags it reads, and one entry point per command, each in its own file:
//   plan_command.cpp      the main command: the longest sequence per method, a plan file (--out)
//   show_command.cpp      mst-plan show PLAN        models_command.cpp   mst-plan models [NAME]
//   gpus_command.cpp      mst-plan gpus [NAME]      devices_command.cpp  mst-plan devices
//   clusters_command.cpp  mst-plan clusters [NAME]
//   report_command.cpp    mst-plan report           sweep_command.cpp    mst-plan sweep FILE...
//   fidelity_command.cpp  mst-plan fidelity [--published]
//   run_command.cpp       mst-plan run PLAN, mst-plan verify PLAN (run_command.h)
// cli.cpp declares the flags with CLI11 and dispatches.
#include <optional>
#include <ostream>
#include <string>
#include <variant>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "cli/cli.h"
#include "planner/enum_names.h"
#include "planner/error.h"
#include "planner/gpu_spec.h"
#include "planner/model_spec.h"
#include "planner/setup.h"
#include "planner/yaml_input.h"
#include "report/measured.h"

namespace mstplan::cli {

// A failure of the command line: the message is printed after "mst-plan: ".
struct Failure {
  ExitCode code;
  std::string message;
};

inline ExitCode exit_code_of(const Error& error) {
  return error.kind == ErrorKind::usage ? ExitCode::usage : ExitCode::input;
}

// A flag's value as typed, and whether it was given at all (an empty value is still given).
struct Flag {
  std::string value;
  CLI::Option* option = nullptr;
  [[nodiscard]] bool given() const { return option != nullptr && option->count() > 0; }
};

// The plan command's flags, parsed by us so that every message has the same shape.
struct PlanFlags {
  Flag model, gpu, scenario, batch, seq, precision, optimizer, grad_accum, attention, profile, method, out, framework;
  Flag gpus, zero, sp, cp, cluster, offload_optimizer, offload_param, export_engine;
  Flag adapter, lora_rank, lora_alpha, lora_targets, lora_dropout, adapter_dtype, base, no_double_quant;
  Flag in_backward, not_in_backward, hold_outputs, expandable_segments;  // values unused: presence is the flag
  bool json = false;

  /// Every plan flag that was given, as typed: subcommands refuse them.
  [[nodiscard]] std::vector<std::string> given_names() const {
    std::vector<std::string> names;
    for (const Flag* f : {&model, &gpu, &scenario, &batch, &seq, &precision, &optimizer, &grad_accum, &attention,
                          &profile, &method, &out, &framework, &in_backward, &not_in_backward, &hold_outputs,
                          &expandable_segments, &gpus, &zero, &sp, &cp, &cluster, &offload_optimizer, &offload_param, &export_engine,
                          &adapter, &lora_rank, &lora_alpha, &lora_targets, &lora_dropout, &adapter_dtype, &base,
                          &no_double_quant}) {
      if (f->given()) names.push_back(f->option->get_name());
    }
    return names;
  }
};

inline std::optional<Failure> usage(std::string message) { return Failure{ExitCode::usage, std::move(message)}; }

// "--profile: expected one of native, pytorch, got 'x'" unless `text` names an E.
template <typename E>
std::optional<Failure> parse_choice(const std::string& flag, const std::string& text, E& out) {
  if (auto value = parse_enum<E>(text)) {
    out = *value;
    return std::nullopt;
  }
  return usage(fmt::format("{}: expected one of {}, got '{}'", flag, enum_choices<E>(), printable(text)));
}

// What the plan flags (and a scenario file) describe: a model, a GPU and a setup.
struct PlanInputs {
  ModelSpec model;
  GpuSpec gpu;
  TrainingSetup setup;
  std::optional<ClusterSpec> cluster;  ///< with setup.parallel.gpus > 1: the nodes the ranks run on
  bool fewest_gpus = false;            ///< --gpus auto: find the fewest GPUs for setup.seq_len
  std::optional<std::string> cluster_argument;  ///< --cluster or the scenario's, as given
};

/// The model, GPU and setup the plan flags (and a scenario file) describe; flags override the
/// scenario field by field.
[[nodiscard]] std::variant<PlanInputs, Failure> resolve_inputs(const PlanFlags& flags);

// The flags of `report` and `sweep` beyond the plan flags.
struct ReportFlags {
  std::string out;
  std::vector<std::string> measured;  // extra measurement files
  std::vector<std::string> files;     // sweep inputs
  int jobs = 0;
  bool json = false;
};

// The flags of `fidelity`.
struct FidelityFlags {
  std::vector<std::string> measured;
  bool no_builtin = false;
  std::string profile = "pytorch";
  bool json = false;
  bool published = false;
  std::vector<std::string> cases;
};

/// The built-in measurements (scenarios/measured/, unless `builtin` is false) and `files`.
[[nodiscard]] std::variant<report::MeasuredData, Failure> measurements(const std::vector<std::string>& files,
                                                                      bool builtin = true);

// The commands. `command` is the command line as typed, for the first line of what is written.
[[nodiscard]] std::optional<Failure> run_plan(const PlanFlags& flags, std::ostream& out);
[[nodiscard]] std::optional<Failure> run_show(const std::string& plan_file, bool json, std::ostream& out);
[[nodiscard]] std::optional<Failure> run_models(const std::string& which, bool json, std::ostream& out);
[[nodiscard]] std::optional<Failure> run_gpus(const std::string& which, bool json, std::ostream& out);
[[nodiscard]] std::optional<Failure> run_clusters(const std::string& which, bool json, std::ostream& out);
[[nodiscard]] std::optional<Failure> run_devices(bool json, std::ostream& out);
[[nodiscard]] std::optional<Failure> run_report(const PlanFlags& flags, const ReportFlags& report,
                                                const std::string& command, std::ostream& out);
[[nodiscard]] std::optional<Failure> run_sweep_command(const ReportFlags& sweep, const std::string& command,
                                                       std::ostream& out, std::ostream& err);
[[nodiscard]] std::optional<Failure> run_fidelity(const FidelityFlags& flags, std::ostream& out);

}  // namespace mstplan::cli
