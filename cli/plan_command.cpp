// The main command: the longest sequence per method for a model and a GPU, and a plan file (--out).
#include "cli/command.h"

#include <charconv>
#include <cmath>
#include <limits>
#include <ranges>
#include <sstream>
#include <fmt/ostream.h>
#include <fmt/ranges.h>
#include "cli/plan_output.h"
#include "planner/catalog.h"
#include "planner/engine_export.h"
#include "planner/json_output.h"
#include "planner/plan_io.h"
#include "planner/search.h"
#include "planner/search_json.h"
#include "planner/static_memory.h"
#include "planner/units.h"
#include "planner/yaml_input.h"

namespace mstplan::cli {

namespace {

// --gpus auto searches 1, 2, 4, ... up to this many GPUs.
constexpr std::int64_t kMaxGpus = 1024;

// "--batch: expected a positive integer, got '0'".
std::optional<Failure> parse_positive(const std::string& flag, const std::string& text, std::int64_t& out,
                                      bool size_suffixes = false) {
  const std::string expected =
      size_suffixes ? "a positive integer (K = 1024 and M = 1048576 suffixes allowed) or 'search'" : "a positive integer";
  const auto parsed = parse_count(text, size_suffixes);
  if (std::holds_alternative<CountError>(parsed)) {
    return usage(std::get<CountError>(parsed) == CountError::out_of_range
                     ? fmt::format("{}: expected {}, got '{}', which is out of the 64-bit range", flag, expected,
                                   printable(text))
                     : fmt::format("{}: expected {}, got '{}'", flag, expected, printable(text)));
  }
  if (std::get<std::int64_t>(parsed) <= 0) {
    return usage(fmt::format("{}: expected {}, got '{}'", flag, expected, printable(text)));
  }
  out = std::get<std::int64_t>(parsed);
  return std::nullopt;
}

// A finite number in [min, max): "--lora-alpha: expected a positive number, got 'x'".
std::optional<Failure> parse_number(const std::string& flag, const std::string& text, double min, double max,
                                    std::string_view expected, double& out) {
  double value = 0;
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (text.empty() || ec != std::errc() || ptr != end || !std::isfinite(value) || value < min || value >= max) {
    return usage(fmt::format("{}: expected {}, got '{}'", flag, expected, printable(text)));
  }
  out = value;
  return std::nullopt;
}

// Flags override the scenario field by field.
std::optional<Failure> apply_flags(const PlanFlags& f, TrainingSetup& s) {
  std::optional<Failure> failure;
  auto run = [&](std::optional<Failure> result) {
    if (!failure && result) failure = std::move(result);
  };
  if (f.in_backward.given() && f.not_in_backward.given()) {
    return usage("--optimizer-in-backward and --no-optimizer-in-backward contradict each other; give one");
  }
  if (f.batch.given()) run(parse_positive("--batch", f.batch.value, s.batch));
  if (f.seq.given()) {
    if (f.seq.value == "search") {
      s.seq_len.reset();
    } else {
      std::int64_t seq = 0;
      run(parse_positive("--seq", f.seq.value, seq, true));
      s.seq_len = seq;
    }
  }
  if (f.precision.given()) run(parse_choice("--precision", f.precision.value, s.precision));
  if (f.optimizer.given()) run(parse_choice("--optimizer", f.optimizer.value, s.optimizer));
  if (f.in_backward.given()) s.optimizer_in_backward = true;
  if (f.not_in_backward.given()) s.optimizer_in_backward = false;
  if (f.grad_accum.given()) run(parse_positive("--grad-accum", f.grad_accum.value, s.grad_accum));
  if (f.attention.given()) run(parse_choice("--attention", f.attention.value, s.attention));
  if (f.profile.given()) run(parse_choice("--profile", f.profile.value, s.profile));
  if (f.framework.given()) run(parse_choice("--framework", f.framework.value, s.framework));
  if (f.hold_outputs.given()) s.hold_outputs = true;
  if (f.gpus.given() && f.gpus.value != "auto") run(parse_positive("--gpus", f.gpus.value, s.parallel.gpus));
  if (f.zero.given()) run(parse_choice("--zero", f.zero.value, s.parallel.zero));
  if (f.sp.given()) run(parse_positive("--sp", f.sp.value, s.parallel.sp));
  if (f.cp.given()) run(parse_positive("--cp", f.cp.value, s.parallel.cp));
  if (f.offload_param.given()) s.offload_param = true;
  if (f.offload_optimizer.given() || f.offload_param.given()) {
    s.offload_optimizer = true;
    if (!f.in_backward.given()) s.optimizer_in_backward = false;  // the host steps it after backward
  }
  if (f.expandable_segments.given()) s.expandable_segments = true;
  AdapterSetup& a = s.adapter;
  if (f.adapter.given()) run(parse_choice("--adapter", f.adapter.value, a.kind));
  if (f.lora_rank.given()) run(parse_positive("--lora-rank", f.lora_rank.value, a.rank));
  if (f.lora_alpha.given()) {
    run(parse_number("--lora-alpha", f.lora_alpha.value, std::numeric_limits<double>::min(),
                     std::numeric_limits<double>::infinity(), "a positive number", a.alpha));
  }
  if (f.lora_dropout.given()) {
    run(parse_number("--lora-dropout", f.lora_dropout.value, 0.0, 1.0, "a probability in [0, 1)", a.dropout));
  }
  if (f.lora_targets.given()) {
    std::vector<std::string> names;
    for (const auto part : std::views::split(std::string_view(f.lora_targets.value), ',')) {
      names.emplace_back(part.begin(), part.end());
    }
    auto targets = parse_lora_targets(names);
    if (targets) {
      a.targets = *targets;
    } else {
      run(usage(fmt::format("--lora-targets: {} (got '{}')", targets.error().message, printable(f.lora_targets.value))));
    }
  }
  if (f.adapter_dtype.given()) {
    DType dtype = DType::bf16;
    run(parse_choice("--adapter-dtype", f.adapter_dtype.value, dtype));
    a.dtype = dtype;
  }
  if (f.base.given()) run(parse_choice("--base", f.base.value, a.base));
  if (f.no_double_quant.given()) a.double_quant = false;
  // The engines step the optimizer after backward.
  if (f.export_engine.given() && !f.in_backward.given()) s.optimizer_in_backward = false;
  return failure;
}

// Resolves a model or GPU argument; errors about one taken from the scenario name its field.
template <typename Spec>
Expected<Spec> resolve_reference(const Flag& flag, const std::optional<std::string>& from_scenario,
                                 const std::string& scenario_file, std::string_view field,
                                 Expected<Spec> (*resolve)(const std::string&)) {
  if (flag.given()) return resolve(flag.value);
  auto spec = resolve(*from_scenario);
  if (!spec) return Error{spec.error().kind, fmt::format("{}: field '{}': {}", scenario_file, field, spec.error().message)};
  return spec;
}

}  // namespace

std::variant<PlanInputs, Failure> resolve_inputs(const PlanFlags& f) {
  Scenario scenario;
  if (f.scenario.given()) {
    if (f.scenario.value.empty()) return *usage("--scenario: expected a file, got ''");
    auto loaded = load_scenario_file(f.scenario.value);
    if (!loaded) return Failure{exit_code_of(loaded.error()), loaded.error().message};
    scenario = std::move(*loaded);
  }
  if (!f.model.given() && !scenario.model) {
    return *usage("--model is required (or a scenario file with a 'model' field); e.g. --model llama3-8b");
  }
  if (!f.gpu.given() && !scenario.gpu) {
    return *usage("--gpu is required (or a scenario file with a 'gpu' field); e.g. --gpu A100-80G");
  }
  TrainingSetup setup = scenario.setup;
  if (auto failure = apply_flags(f, setup)) return *failure;
  if (f.gpus.given() && f.gpus.value == "auto") {
    if (!setup.seq_len) return *usage("--gpus auto: finds the fewest GPUs for a length; give --seq N");
    if (f.zero.given()) return *usage("--gpus auto: compares every ZeRO stage itself; leave --zero out");
    if (f.sp.given()) return *usage("--gpus auto: compares sequence-parallel degrees itself; leave --sp out");
    if (f.cp.given()) return *usage("--gpus auto: compares context-parallel degrees itself; leave --cp out");
    setup.parallel = Parallelism{};  // a scenario's layout is what auto replaces
  }
  auto model = resolve_reference<ModelSpec>(f.model, scenario.model, scenario.source, "model", resolve_model);
  if (!model) return Failure{exit_code_of(model.error()), model.error().message};
  auto gpu = resolve_reference<GpuSpec>(f.gpu, scenario.gpu, scenario.source, "gpu", resolve_gpu);
  if (!gpu) return Failure{exit_code_of(gpu.error()), gpu.error().message};
  if (auto error = check_setup_for_model(setup, *model, scenario.source.empty() ? "flags" : scenario.source)) {
    return Failure{exit_code_of(*error), error->message};
  }
  std::optional<ClusterSpec> cluster;
  std::optional<std::string> named = f.cluster.given() ? std::optional(f.cluster.value) : scenario.cluster;
  const bool fewest = f.gpus.given() && f.gpus.value == "auto";
  if (fewest) {
    PlanInputs inputs{std::move(*model), std::move(*gpu), std::move(setup), std::nullopt, true, named};
    return inputs;
  }
  if (setup.parallel.gpus > 1) {
    auto resolved = cluster_for_ranks(named, *gpu, setup.parallel.gpus);
    if (!resolved) {
      const bool from_file = !f.cluster.given() && scenario.cluster;
      return Failure{exit_code_of(resolved.error()),
                     from_file ? fmt::format("{}: field 'cluster': {}", scenario.source, resolved.error().message)
                               : resolved.error().message};
    }
    cluster = std::move(*resolved);
  } else if (f.cluster.given()) {
    return *usage("--cluster: the nodes of a multi-GPU plan; give --gpus N too");
  } else if (scenario.cluster) {
    return Failure{ExitCode::input,
                   fmt::format("{}: field 'cluster': the nodes of a multi-GPU plan; give gpus too", scenario.source)};
  }
  return PlanInputs{std::move(*model), std::move(*gpu), std::move(setup), std::move(cluster), false, named};
}

std::optional<Failure> run_plan(const PlanFlags& f, std::ostream& out) {
  auto resolved = resolve_inputs(f);
  if (auto* failure = std::get_if<Failure>(&resolved)) return std::move(*failure);
  PlanInputs& inputs = std::get<PlanInputs>(resolved);
  const ModelSpec* model = &inputs.model;
  const GpuSpec* gpu = &inputs.gpu;
  TrainingSetup& setup = inputs.setup;

  Method chosen_method = Method::automatic;
  std::vector<Method> methods(all_methods().begin(), all_methods().end());
  if (f.method.given()) {
    if (auto failure = parse_choice("--method", f.method.value, chosen_method)) return failure;
    if (chosen_method == Method::mst_reference && setup.profile != Profile::pytorch) {
      return usage("--method: mst-reference is the MST authors' PyTorch code; it needs --profile pytorch");
    }
    methods = {chosen_method};
  }
  if (f.out.given() && f.out.value.empty()) return usage("--out: expected a file name, got ''");
  std::optional<Engine> engine;
  if (f.export_engine.given()) {
    Engine e{};
    if (auto failure = parse_choice("--export", f.export_engine.value, e)) return failure;
    if (auto why = export_setup_problem(e, *model, setup)) return usage(fmt::format("--export {}: {}", f.export_engine.value, *why));
    if (inputs.fewest_gpus) {
      return usage(fmt::format("--export {}: give --gpus N (the layouts table of each count shows what fits); "
                               "--gpus auto compares layouts the engine may not run", f.export_engine.value));
    }
    if (!f.out.given()) return usage(fmt::format("--export {}: writes beside the plan file; give --out plan.yaml", f.export_engine.value));
    if (chosen_method != Method::automatic) {
      if (auto why = export_plan_problem(e, *model, setup, method_plan(chosen_method, *model))) {
        return usage(fmt::format("--export {}: method {}: {}; leave --method out and auto keeps to the plans it can run",
                                 f.export_engine.value, to_string(chosen_method), *why));
      }
    }
    engine = e;
  }
  std::function<std::optional<Plan>(const TrainingSetup&, const Plan&)> express;
  if (engine) {
    express = [engine, model](const TrainingSetup& s, const Plan& p) { return express_plan(*engine, *model, s, p); };
  }

  if (inputs.fewest_gpus) {
    auto found = fewest_gpus(*model, *gpu, setup, kMaxGpus, [&](std::int64_t gpus) {
      return cluster_for_ranks(inputs.cluster_argument, *gpu, gpus);
    }, express);
    if (!found) return Failure{exit_code_of(found.error()), found.error().message};
    if (!*found) {
      return Failure{ExitCode::no_fit,
                     fmt::format("--gpus auto: {} tokens fit no layout on up to {} {} GPUs (ZeRO stages with "
                                 "Ulysses over up to {} ranks, the query heads, or context parallelism over up to {}{})",
                                 format_thousands(*setup.seq_len), kMaxGpus, gpu->name, model->num_heads, kMaxGpus,
                                 setup.profile == Profile::native && setup.attention != AttentionKind::eager
                                     ? ""
                                     : "; context parallelism needs the native profile and flash attention")};
    }
    setup.parallel.gpus = (*found)->gpus;
    setup.parallel.zero = (*found)->zero;
    setup.parallel.sp = (*found)->sp;
    setup.parallel.cp = (*found)->cp;
    inputs.cluster = (*found)->cluster;
    if (!f.json) {
      fmt::print(out, "fewest GPUs for {} tokens: {}{} (tried {})\n\n", format_thousands(*setup.seq_len),
                 (*found)->gpus,
                 (*found)->gpus > 1 ? fmt::format(", ZeRO-{}{} on {}", to_string((*found)->zero),
                                                  describe_sharing((*found)->sp, (*found)->cp),
                                                  (*found)->cluster->name)
                                    : std::string(),
                 fmt::join((*found)->tried, ", "));
    }
  }
  const bool static_fits = static_memory(*model, setup).total_bytes() <= gpu->usable_bytes();
  SearchResult result;
  SearchOptions options;
  options.cluster = inputs.cluster;
  options.express = express;
  if (static_fits) result = search(*model, *gpu, setup, methods, options);
  const std::vector<LayoutResult> layouts = search_layouts(*model, *gpu, setup, options);
  const Evaluation* chosen = nullptr;
  for (const MethodResult& m : result.methods) {
    if (m.method != chosen_method) continue;
    if (setup.seq_len) {
      if (m.at_request && m.at_request->fits) chosen = &*m.at_request;
    } else if (m.at_max) {
      chosen = &*m.at_max;
    }
  }

  std::optional<PlanFile> file;
  std::vector<ExportFile> exports;
  if (f.out.given() && chosen) {
    file = PlanFile{*model, *gpu, setup, chosen->plan, chosen->seq_len,
                    Prediction{std::string(to_string(chosen_method)), chosen->analysis.peak.allocated_bytes,
                               chosen->analysis.peak_live_bytes, chosen->required_bytes, chosen->peak_at,
                               chosen->time.tokens_per_s},
                    inputs.cluster};
    if (engine) exports = export_files(*engine, *file, f.out.value, version_string());
  }

  // The answer is rendered first and printed once the files are written: a failed write leaves
  // nothing on stdout, only its error.
  std::ostringstream answer;
  if (f.json) {
    nlohmann::json j;
    j["version"] = version_string();
    if (inputs.fewest_gpus) {
      j["fewest_gpus"] = {{"gpus", setup.parallel.gpus},
                          {"zero", static_cast<int>(setup.parallel.zero)},
                          {"sp", setup.parallel.sp},
                          {"cp", setup.parallel.cp}};
    }
    j["model"] = model_json(*model);
    j["gpu"] = gpu_json(*gpu);
    if (inputs.cluster) j["cluster"] = cluster_json(*inputs.cluster);
    j["setup"] = setup_json(setup);
    j["static"] = static_memory_json(*model, *gpu, setup);
    add_search_json(j, *model, setup, result, chosen_method, chosen);
    if (!layouts.empty()) {
      j["layouts"] = layouts_json(layouts, *model);
      j["layouts_pareto"] = layouts_pareto_json(layouts, *model);
    }
    if (!exports.empty()) {
      j["export"]["engine"] = to_string(*engine);
      for (const ExportFile& e : exports) j["export"]["files"].push_back(e.path);
    }
    answer << json_text(j) << '\n';
  } else {
    if (print_static(answer, *model, *gpu, setup)) {
      print_search(answer, *model, *gpu, setup, result, chosen_method, chosen, f.out.given() && chosen ? f.out.value : std::string());
    }
    print_layouts(answer, *model, setup, layouts);
  }
  if (f.out.given()) {
    if (!chosen) {
      out << answer.str();  // why nothing fits is the answer
      return Failure{ExitCode::no_fit, fmt::format("{}: not written: no {} plan fits{}", f.out.value,
                                                   to_string(chosen_method),
                                                   setup.seq_len ? fmt::format(" {} tokens", *setup.seq_len) : "")};
    }
    if (auto error = write_text_file(f.out.value, plan_to_yaml(*file))) return Failure{ExitCode::internal, error->message};
    for (const ExportFile& e : exports) {
      if (auto error = write_text_file(e.path, e.text)) return Failure{ExitCode::internal, error->message};
    }
    if (!f.json && !exports.empty()) {
      std::vector<std::string> paths;
      for (const ExportFile& e : exports) paths.push_back(e.path);
      fmt::print(answer, "\n{} export: {} (how to run it: the comments at its top)\n", to_string(*engine), fmt::join(paths, ", "));
    }
  }
  out << answer.str();
  return std::nullopt;
}

}  // namespace mstplan::cli
