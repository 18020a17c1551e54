#include "cli/cli.h"

#include <unistd.h>

#include <iostream>
#include <optional>
#include <variant>
#include <ostream>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ostream.h>
#include <nlohmann/json.hpp>

#include "cli/plan_output.h"
#include "cli/run_command.h"
#include "planner/analysis.h"
#include "planner/builder.h"
#include "planner/catalog.h"
#include "planner/json_output.h"
#include "planner/placement.h"
#include "planner/plan_io.h"
#include "planner/schedule_check.h"
#include "planner/search.h"
#include "planner/search_json.h"
#include "planner/setup.h"
#include "planner/static_memory.h"
#include "planner/units.h"
#include "report/fidelity.h"
#include "report/published.h"
#include "report/measured.h"
#include "report/report.h"
#include "report/report_files.h"
#include "report/sweep.h"
#include "runtime/device_probe.h"

#ifndef MSTPLAN_VERSION
#define MSTPLAN_VERSION "unknown"
#endif
#ifndef MSTPLAN_GIT_COMMIT
#define MSTPLAN_GIT_COMMIT "unknown"
#endif

namespace mstplan::cli {
namespace {

// A failure of the command line: the message is printed after "mst-plan: ".
struct Failure {
  ExitCode code;
  std::string message;
};

ExitCode exit_code_of(const Error& error) {
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
  Flag in_backward, not_in_backward, hold_outputs, expandable_segments;  // values unused: presence is the flag
  bool json = false;

  /// Every plan flag that was given, as typed: subcommands refuse them.
  [[nodiscard]] std::vector<std::string> given_names() const {
    std::vector<std::string> names;
    for (const Flag* f : {&model, &gpu, &scenario, &batch, &seq, &precision, &optimizer, &grad_accum, &attention,
                          &profile, &method, &out, &framework, &in_backward, &not_in_backward, &hold_outputs,
                          &expandable_segments}) {
      if (f->given()) names.push_back(f->option->get_name());
    }
    return names;
  }
};

std::optional<Failure> usage(std::string message) { return Failure{ExitCode::usage, std::move(message)}; }

// "--batch: expected a positive integer, got '0'".
std::optional<Failure> parse_positive(const std::string& flag, const std::string& text, std::int64_t& out,
                                      bool size_suffixes = false) {
  const std::string expected =
      size_suffixes ? "a positive integer (K = 1024 and M = 1048576 suffixes allowed) or 'search'" : "a positive integer";
  const auto parsed = parse_count(text, size_suffixes);
  if (std::holds_alternative<CountError>(parsed)) {
    return usage(std::get<CountError>(parsed) == CountError::out_of_range
                     ? fmt::format("{}: expected {}, got '{}', which is out of the 64-bit range", flag, expected, text)
                     : fmt::format("{}: expected {}, got '{}'", flag, expected, text));
  }
  if (std::get<std::int64_t>(parsed) <= 0) return usage(fmt::format("{}: expected {}, got '{}'", flag, expected, text));
  out = std::get<std::int64_t>(parsed);
  return std::nullopt;
}

template <typename E>
std::optional<Failure> parse_choice(const std::string& flag, const std::string& text, E& out) {
  if (auto value = parse_enum<E>(text)) {
    out = *value;
    return std::nullopt;
  }
  return usage(fmt::format("{}: expected one of {}, got '{}'", flag, enum_choices<E>(), text));
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
  if (f.expandable_segments.given()) s.expandable_segments = true;
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

// What the plan flags (and a scenario file) describe: a model, a GPU and a setup.
struct PlanInputs {
  ModelSpec model;
  GpuSpec gpu;
  TrainingSetup setup;
};

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
  auto model = resolve_reference<ModelSpec>(f.model, scenario.model, scenario.source, "model", resolve_model);
  if (!model) return Failure{exit_code_of(model.error()), model.error().message};
  auto gpu = resolve_reference<GpuSpec>(f.gpu, scenario.gpu, scenario.source, "gpu", resolve_gpu);
  if (!gpu) return Failure{exit_code_of(gpu.error()), gpu.error().message};
  if (auto error = check_setup_for_model(setup, *model, scenario.source.empty() ? "flags" : scenario.source)) {
    return Failure{exit_code_of(*error), error->message};
  }
  return PlanInputs{std::move(*model), std::move(*gpu), std::move(setup)};
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

  const bool static_fits = static_memory(*model, setup).total_bytes() <= gpu->usable_bytes();
  SearchResult result;
  if (static_fits) result = search(*model, *gpu, setup, methods);
  const Evaluation* chosen = nullptr;
  for (const MethodResult& m : result.methods) {
    if (m.method != chosen_method) continue;
    if (setup.seq_len) {
      if (m.at_request && m.at_request->fits) chosen = &*m.at_request;
    } else if (m.at_max) {
      chosen = &*m.at_max;
    }
  }

  if (f.json) {
    nlohmann::json j;
    j["version"] = version_string();
    j["model"] = model_json(*model);
    j["gpu"] = gpu_json(*gpu);
    j["setup"] = setup_json(setup);
    j["static"] = static_memory_json(*model, *gpu, setup);
    add_search_json(j, *model, setup, result, chosen_method, chosen);
    out << json_text(j) << '\n';
  } else {
    if (print_static(out, *model, *gpu, setup)) {
      print_search(out, *model, *gpu, setup, result, chosen_method, chosen, f.out.given() && chosen ? f.out.value : std::string());
    }
  }
  if (f.out.given()) {
    if (!chosen) {
      return Failure{ExitCode::no_fit, fmt::format("{}: not written: no {} plan fits{}", f.out.value,
                                                   to_string(chosen_method),
                                                   setup.seq_len ? fmt::format(" {} tokens", *setup.seq_len) : "")};
    }
    PlanFile file{*model, *gpu, setup, chosen->plan, chosen->seq_len,
                  Prediction{std::string(to_string(chosen_method)), chosen->analysis.peak.allocated_bytes,
                             chosen->analysis.peak_live_bytes, chosen->required_bytes, chosen->peak_at,
                             chosen->time.tokens_per_s}};
    if (auto error = write_text_file(f.out.value, plan_to_yaml(file))) return Failure{ExitCode::internal, error->message};
  }
  return std::nullopt;
}

// The flags of `report` and `sweep` beyond the plan flags.
struct ReportFlags {
  std::string out;
  std::vector<std::string> measured;  // extra measurement files
  std::vector<std::string> files;     // sweep inputs
  int jobs = 0;
  bool json = false;
};

// The built-in measurements and the files given with --measured.
std::variant<report::MeasuredData, Failure> measurements(const std::vector<std::string>& files, bool builtin = true) {
  report::MeasuredData all;
  if (builtin) all = report::builtin_measurements();
  for (const std::string& file : files) {
    auto loaded = report::load_measurement_file(file);
    if (!loaded) return Failure{exit_code_of(loaded.error()), loaded.error().message};
    all += *loaded;
  }
  return all;
}

// "mst-plan report --model llama3-8b ...": how the user asked, for the report's first line.
std::string command_line(const std::vector<std::string>& args) {
  std::string out = "mst-plan";
  for (const std::string& a : args) {
    const bool plain = !a.empty() && a.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                                                         "-_./=:+,@%") == std::string::npos;
    out += " " + (plain ? a : "'" + a + "'");
  }
  return out;
}

bool stderr_is_terminal(const std::ostream& err) {
  return err.rdbuf() == std::cerr.rdbuf() && ::isatty(STDERR_FILENO) == 1;
}

std::optional<Failure> run_report(const PlanFlags& f, const ReportFlags& r, const std::string& command, std::ostream& out) {
  if (f.method.given()) return usage("--method: a report covers every method; leave it out");
  if (r.out.empty()) return usage("report: --out DIR is required (the folder the report is written to)");
  auto resolved = resolve_inputs(f);
  if (auto* failure = std::get_if<Failure>(&resolved)) return std::move(*failure);
  const PlanInputs& inputs = std::get<PlanInputs>(resolved);
  auto measured = measurements(r.measured);
  if (auto* failure = std::get_if<Failure>(&measured)) return std::move(*failure);
  report::ReportOptions options;
  options.measurements = std::move(std::get<report::MeasuredData>(measured).peaks);
  const report::Report rep = report::build_report(inputs.model, inputs.gpu, inputs.setup, options);
  auto written = report::write_report(r.out, report::report_files(rep, command), report::find_gnuplot());
  if (!written) return Failure{ExitCode::internal, written.error().message};
  if (r.json || f.json) {
    nlohmann::json j = {{"out", r.out},
                        {"report", r.out + "/report.md"},
                        {"figures", written->figures},
                        {"figures_note", written->figures_note},
                        {"measured_rows", rep.measured.size()}};
    nlohmann::json longest;
    for (const MethodResult& m : rep.search.methods) {
      longest[std::string(to_string(m.method))] = m.at_max ? m.at_max->seq_len : 0;
    }
    j["max_seq_len"] = longest;
    out << json_text(j) << '\n';
    return std::nullopt;
  }
  fmt::print(out, "{} on {}: longest sequence per method\n", inputs.model.name, inputs.gpu.name);
  for (const MethodResult& m : rep.search.methods) {
    fmt::print(out, "  {:<12} {:>10}\n", to_string(m.method), m.at_max ? format_thousands(m.at_max->seq_len) : "none fits");
  }
  fmt::print(out, "report written: {}/report.md ({} figures{}, data in {}/data, every number in {}/report.json)\n", r.out,
             written->figures.size(), rep.measured.empty() ? "" : fmt::format(", {} measured rows", rep.measured.size()),
             r.out, r.out);
  if (!written->figures_note.empty()) fmt::print(out, "note: {}\n", written->figures_note);
  return std::nullopt;
}

std::optional<Failure> run_sweep_command(const ReportFlags& r, const std::string& command, std::ostream& out,
                                         std::ostream& err) {
  if (r.out.empty()) return usage("sweep: --out DIR is required (the folder the reports and the index go to)");
  if (r.jobs < 0) return usage(fmt::format("--jobs: expected a positive integer, got '{}'", r.jobs));
  auto inputs = report::load_sweep_inputs(r.files);
  if (!inputs) return Failure{exit_code_of(inputs.error()), inputs.error().message};
  auto measured = measurements(r.measured);
  if (auto* failure = std::get_if<Failure>(&measured)) return std::move(*failure);
  report::SweepOptions options;
  options.jobs = r.jobs;
  options.command = command;
  options.gnuplot = report::find_gnuplot();
  options.report.measurements = std::move(std::get<report::MeasuredData>(measured).peaks);
  const bool terminal = stderr_is_terminal(err);
  options.on_progress = [&](const report::SweepProgress& p) {
    err << report::format_progress(p, terminal);
    if (terminal && p.done == p.total) err << '\n';
    err.flush();
  };
  auto result = report::run_sweep(*inputs, r.out, options);
  if (!result) return Failure{ExitCode::internal, result.error().message};
  const std::int64_t failures = result->failures();
  fmt::print(out, "{} reports written to {}/ (index: {}/index.md){}\n",
             static_cast<std::int64_t>(result->rows.size()) - failures, r.out, r.out,
             failures > 0 ? fmt::format(", {} failed", failures) : "");
  if (!options.gnuplot) {
    fmt::print(out, "note: gnuplot not found (apt-get install gnuplot-nox): the figures' data and scripts are written; "
                    "draw them with `gnuplot figures/*.gp` in each report's folder\n");
  }
  for (const auto& row : result->rows) {
    if (row.error) {
      return Failure{ExitCode::internal, fmt::format("{} of {} reports failed; {}: {}", failures, result->rows.size(),
                                                     row.item->name, row.error->message)};
    }
  }
  return std::nullopt;
}

struct FidelityFlags {
  std::vector<std::string> measured;
  bool no_builtin = false;
  std::string profile = "pytorch";
  bool json = false;
  bool published = false;
  std::vector<std::string> cases;
};

// "60 K tokens", "71.91 GB (device)": a published figure as printed.
std::string printed(const report::PublishedCase& c) {
  std::string out = fmt::format("{:g} {}", c.value, c.unit);
  if (c.failed) out = fmt::format("{:g} (failed at {:g}) {}", c.value, *c.failed, c.unit);
  if (c.quantity == report::PublishedQuantity::peak_memory) out += fmt::format(" {}", to_string(c.counter));
  if (!c.derived.empty()) out += fmt::format(" (derived: {})", c.derived);
  return out;
}

std::string figure(report::PublishedQuantity q, double value) {
  switch (q) {
    case report::PublishedQuantity::longest_seq_len: return format_thousands(std::llround(value)) + " tokens";
    case report::PublishedQuantity::peak_memory: return format_gib(std::llround(value)) + " GiB";
    case report::PublishedQuantity::tokens_per_s: return format_thousands(std::llround(value)) + " tokens/s";
  }
  return "";
}

// Every published case (tests/data/published/, --case) against the prediction; exit 6 past the bounds.
std::optional<Failure> run_published(const FidelityFlags& f, std::ostream& out) {
  std::vector<report::PublishedCase> cases;
  if (!f.no_builtin) cases = report::builtin_published_cases();
  for (const std::string& file : f.cases) {
    auto c = report::load_published_case(file);
    if (!c) return Failure{exit_code_of(c.error()), c.error().message};
    cases.push_back(std::move(*c));
  }
  const std::vector<report::PublishedRow> rows = report::predict_published(cases);
  std::vector<const report::PublishedCase*> missing;
  for (const report::PublishedCase& c : cases) {
    if (!c.setup) missing.push_back(&c);
  }
  const report::PublishedSummary summary = report::summarize(rows, missing.size());
  const report::PublishedBounds bounds;
  const std::vector<std::string> problems = report::violations(summary, rows, bounds);
  if (f.json) {
    nlohmann::json a = nlohmann::json::array(), m = nlohmann::json::array();
    for (const report::PublishedRow& r : rows) {
      a.push_back({{"case", r.c.id},
                   {"quantity", to_string(r.c.quantity)},
                   {"configuration", report::describe_measurement(*r.c.setup)},
                   {"published", r.published},
                   {"published_as_printed", printed(r.c)},
                   {"predicted", r.predicted},
                   {"error", r.error},
                   {"source", r.c.source},
                   {"url", r.c.url},
                   {"hardware", r.c.hardware},
                   {"note", r.c.note}});
    }
    for (const report::PublishedCase* c : missing) {
      m.push_back({{"case", c->id}, {"missing", c->missing}, {"published_as_printed", printed(*c)}, {"source", c->source},
                   {"url", c->url}});
    }
    out << json_text({{"cases", a},
                      {"not_expressible", m},
                      {"median_abs_peak_error", summary.median_abs_peak_error},
                      {"worst_abs_peak_error", summary.worst_abs_peak_error},
                      {"worst_abs_longest_error", summary.worst_abs_longest_error},
                      {"median_abs_tokens_per_s_error", summary.median_abs_tokens_per_s_error},
                      {"violations", problems}})
        << '\n';
  } else {
    fmt::print(out, "| case | configuration | published | predicted | error | what it teaches |\n"
                    "| --- | --- | ---: | ---: | ---: | --- |\n");
    for (const report::PublishedRow& r : rows) {
      fmt::print(out, "| {} | {} | {} | {} | {:+.2f}% | {} |\n", r.c.id, report::describe_measurement(*r.c.setup),
                 printed(r.c), figure(r.c.quantity, r.predicted), 100 * r.error, r.c.note);
    }
    if (!missing.empty()) {
      fmt::print(out, "\nnot expressible yet:\n");
      for (const report::PublishedCase* c : missing) {
        fmt::print(out, "  {}: {}; needs {}\n", c->id, printed(*c), c->missing);
      }
    }
    fmt::print(out,
               "\n{} peak-memory cases: median |error| {:.1f}% (bound {:.0f}%), worst {:.1f}% (bound {:.0f}%); {} longest "
               "lengths: worst {:.1f}% (bound {:.0f}%); {} throughput cases: median |error| {:.1f}% (bound {:.0f}%); {} "
               "not expressible yet\n",
               summary.peaks, 100 * summary.median_abs_peak_error, 100 * bounds.median_peak_error,
               100 * summary.worst_abs_peak_error, 100 * bounds.worst_peak_error, summary.longest,
               100 * summary.worst_abs_longest_error, 100 * bounds.longest_error, summary.throughput,
               100 * summary.median_abs_tokens_per_s_error, 100 * bounds.median_tokens_per_s_error, summary.missing);
  }
  if (!problems.empty()) return Failure{ExitCode::mismatch, fmt::format("{}", fmt::join(problems, "; "))};
  return std::nullopt;
}

// Every measurement against the planner's prediction; exit 6 when a documented bound is exceeded.
std::optional<Failure> run_fidelity(const FidelityFlags& f, std::ostream& out) {
  if (f.published) return run_published(f, out);
  if (!f.cases.empty()) return usage("--case: published cases are read with --published");
  std::optional<Profile> profile;
  if (f.profile != "all") {
    Profile p = Profile::pytorch;
    if (auto failure = parse_choice("--profile", f.profile, p)) {
      return usage(fmt::format("--profile: expected one of {} or all, got '{}'", enum_choices<Profile>(), f.profile));
    }
    profile = p;
  }
  auto measured = measurements(f.measured, !f.no_builtin);
  if (auto* failure = std::get_if<Failure>(&measured)) return std::move(*failure);
  const report::Fidelity fid = report::evaluate_fidelity(std::get<report::MeasuredData>(measured), profile);
  const report::FidelityBounds bounds;
  const std::vector<std::string> problems = report::violations(fid, bounds);
  if (f.json) {
    auto rows = [](const std::vector<report::FidelityRow>& rs, bool peak) {
      nlohmann::json a = nlohmann::json::array();
      for (const report::FidelityRow& r : rs) {
        a.push_back({{"configuration", report::describe_measurement(r.measurement)},
                     {"origin", r.measurement.origin},
                     {"predicted", r.predicted},
                     {"measured", peak ? r.measurement.peak_allocated_bytes : r.measurement.longest_seq_len},
                     {"error", r.error}});
      }
      return a;
    };
    out << json_text({{"peaks", rows(fid.peaks, true)},
                      {"longest", rows(fid.longest, false)},
                      {"median_abs_peak_error", fid.median_abs_peak_error},
                      {"worst_abs_peak_error", fid.worst_abs_peak_error},
                      {"worst_abs_longest_error", fid.worst_abs_longest_error},
                      {"violations", problems}})
        << '\n';
  } else if (fid.peaks.empty() && fid.longest.empty()) {
    fmt::print(out, "no measurements{} (scenarios/measured/ and --measured files)\n",
               profile ? fmt::format(" of the {} profile", to_string(*profile)) : "");
  } else {
    fmt::print(out, "| configuration | predicted peak | measured peak | error |\n| --- | ---: | ---: | ---: |\n");
    for (const report::FidelityRow& r : fid.peaks) {
      fmt::print(out, "| {} | {} GiB | {} GiB | {:+.2f}% |\n", report::describe_measurement(r.measurement),
                 format_gib(r.predicted), format_gib(r.measurement.peak_allocated_bytes), 100 * r.error);
    }
    if (!fid.longest.empty()) {
      fmt::print(out, "\n| configuration | predicted longest | measured longest | error |\n| --- | ---: | ---: | ---: |\n");
      for (const report::FidelityRow& r : fid.longest) {
        fmt::print(out, "| {} | {} | {} | {:+.2f}% |\n", report::describe_measurement(r.measurement),
                   format_thousands(r.predicted), format_thousands(r.measurement.longest_seq_len), 100 * r.error);
      }
    }
    fmt::print(out, "\n{} peaks: median |error| {:.2f}% (bound {:.0f}%), worst {:.2f}% (bound {:.0f}%); {} longest: worst "
                    "{:.2f}% (bound {:.0f}%)\n",
               fid.peaks.size(), 100 * fid.median_abs_peak_error, 100 * bounds.median_peak_error,
               100 * fid.worst_abs_peak_error, 100 * bounds.worst_peak_error, fid.longest.size(),
               100 * fid.worst_abs_longest_error, 100 * bounds.longest_error);
  }
  if (!problems.empty()) return Failure{ExitCode::mismatch, fmt::format("{}", fmt::join(problems, "; "))};
  return std::nullopt;
}

// Rebuilds the step a plan file describes and compares the analysis with what the file predicted.
std::optional<Failure> run_show(const std::string& path, bool json, std::ostream& out) {
  auto file = load_plan_file(path);
  if (!file) return Failure{exit_code_of(file.error()), file.error().message};
  SearchOptions options;
  Evaluator evaluator(file->model, file->gpu, file->setup, options);
  const Evaluation e = evaluator.evaluate(file->plan, file->seq_len);
  const bool same = e.analysis.peak.allocated_bytes == file->predicted.peak_allocated_bytes &&
                    e.analysis.peak_live_bytes == file->predicted.peak_live_bytes && e.peak_at == file->predicted.peak_at;
  // Where a planned allocator would put every tensor: one arena, best fit.
  const Program program = build_program(file->model, file->setup, file->plan, file->seq_len);
  if (auto problem = check_schedule(program)) MSTPLAN_CHECK(false, "the builder made an invalid schedule: {}", *problem);
  const Placement placement = place(program, AllocatorModel::for_profile(file->setup.profile));
  if (json) {
    nlohmann::json j = {{"file", path},
                        {"model", model_json(file->model)},
                        {"gpu", gpu_json(file->gpu)},
                        {"setup", setup_json(file->setup)},
                        {"evaluation", evaluation_json(e, file->model)},
                        {"predicted_peak_bytes", file->predicted.peak_allocated_bytes},
                        {"matches_prediction", same},
                        {"arena_high_water_bytes", placement.high_water_bytes},
                        {"ops_executed", placement.flat.ops.size()}};
    out << json_text(j) << '\n';
  } else {
    fmt::print(out, "{}: {} on {}, {} tokens, batch {}\n", path, file->model.name, file->gpu.name,
               format_thousands(file->seq_len), file->setup.batch);
    fmt::print(out, "setup: {}\n", describe_setup(file->setup));
    fmt::print(out, "plan ({}): {}\n", file->predicted.method, describe_plan(file->plan, file->model, file->seq_len));
    fmt::print(out, "peak {} GiB (+ {} GiB reserve = {} GiB of {} GiB: {}) during {}\n",
               format_gib(e.analysis.peak.allocated_bytes), format_gib(file->gpu.reserve_bytes),
               format_gib(e.required_bytes), format_gib(file->gpu.capacity_bytes), e.fits ? "fits" : "does not fit",
               e.peak_at);
    fmt::print(out, "arena (best-fit placement of every tensor, in step order): {} GiB for a live peak of {} GiB "
                    "({:.1f}% fragmentation), {} kernels\n",
               format_gib(placement.high_water_bytes), format_gib(placement.live_peak_bytes),
               placement.live_peak_bytes > 0 ? 100.0 * static_cast<double>(placement.high_water_bytes - placement.live_peak_bytes) /
                                                   static_cast<double>(placement.live_peak_bytes)
                                             : 0.0,
               format_thousands(static_cast<std::int64_t>(placement.flat.ops.size())));
    fmt::print(out, "the file predicted {} bytes at {}: {}\n", format_thousands(file->predicted.peak_allocated_bytes),
               file->predicted.peak_at,
               same ? "the same" : fmt::format("now {} bytes (the planner changed since)",
                                               format_thousands(e.analysis.peak.allocated_bytes)));
  }
  return std::nullopt;
}

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

std::optional<Failure> run_gpus(const std::string& which, bool json, std::ostream& out) {
  if (!which.empty()) {
    auto gpu = resolve_gpu(which);
    if (!gpu) return Failure{exit_code_of(gpu.error()), gpu.error().message};
    if (json) {
      out << json_text(gpu_json(*gpu)) << '\n';
    } else {
      fmt::print(out, "# read from {}\n{}", gpu->source, gpu_to_yaml(*gpu));
    }
    return std::nullopt;
  }
  if (json) {
    nlohmann::json list = nlohmann::json::array();
    for (const GpuSpec& g : builtin_gpus()) list.push_back(gpu_json(g));
    out << json_text(list) << '\n';
    return std::nullopt;
  }
  fmt::print(out, "{:<9} {:>12} {:>10} {:>11} {:>10} {:>10} {:>10}  {}\n", "gpu", "capacity GiB", "reserve GiB",
             "bf16 TFLOP/s", "fp32 TF/s", "HBM GB/s", "link GB/s", "description");
  for (const GpuSpec& g : builtin_gpus()) {
    fmt::print(out, "{:<9} {:>12} {:>10} {:>11} {:>10} {:>10} {:>10}  {}\n", g.name, format_gib(g.capacity_bytes),
               format_gib(g.reserve_bytes), g.bf16_tflops, g.fp32_tflops, g.memory_bandwidth_gb_per_s,
               g.host_link_gb_per_s, g.description);
  }
  return std::nullopt;
}

std::optional<Failure> run_devices(bool json, std::ostream& out) {
  const runtime::DeviceProbe probe = runtime::probe_devices();
  if (probe.devices.empty()) return Failure{ExitCode::unavailable, fmt::format("no CUDA device: {}", probe.status)};
  if (json) {
    nlohmann::json j = {{"cuda_compiled", probe.cuda_compiled},
                        {"driver_version", probe.driver_version},
                        {"runtime_version", probe.runtime_version},
                        {"status", probe.status},
                        {"devices", nlohmann::json::array()}};
    for (const auto& d : probe.devices) {
      const GpuSpec* match = find_gpu_by_device_name(d.name);
      j["devices"].push_back({{"index", d.index},
                              {"name", d.name},
                              {"compute_capability", fmt::format("{}.{}", d.compute_major, d.compute_minor)},
                              {"multiprocessors", d.multiprocessors},
                              {"total_bytes", d.total_bytes},
                              {"free_bytes", d.free_bytes},
                              {"pci_bus_id", d.pci_bus_id},
                              {"catalog_gpu", match ? nlohmann::json(match->name) : nlohmann::json(nullptr)},
                              {"catalog_capacity_bytes", match ? nlohmann::json(match->capacity_bytes) : nlohmann::json(nullptr)}});
    }
    out << json_text(j) << '\n';
  } else {
    fmt::print(out, "CUDA runtime {} (built with), driver supports {}\n", runtime::cuda_version_string(probe.runtime_version),
               probe.driver_version > 0 ? runtime::cuda_version_string(probe.driver_version) : std::string("unknown"));
    if (!probe.status.empty()) fmt::print(out, "{}\n", probe.status);  // a device that failed its query
    for (const auto& d : probe.devices) {
      const GpuSpec* match = find_gpu_by_device_name(d.name);
      fmt::print(out, "device {}: {} (sm_{}{}, {} SMs, bus {})\n", d.index, d.name, d.compute_major, d.compute_minor,
                 d.multiprocessors, d.pci_bus_id);
      fmt::print(out, "  total {} bytes ({} GiB), free with this context {} GiB (so {} GiB held by contexts and other processes)\n",
                 format_thousands(d.total_bytes), format_gib(d.total_bytes), format_gib(d.free_bytes),
                 format_gib(d.total_bytes - d.free_bytes));
      if (match) {
        fmt::print(out, "  catalog {}: capacity {} bytes, so this device has {} bytes {} than the planner assumes\n",
                   match->name, format_thousands(match->capacity_bytes),
                   format_thousands(std::abs(d.total_bytes - match->capacity_bytes)),
                   d.total_bytes >= match->capacity_bytes ? "more" : "fewer");
      } else {
        fmt::print(out, "  not in the catalog: copy a spec (mst-plan gpus NAME) into a YAML file with capacity_bytes: {}\n",
                   d.total_bytes);
      }
    }
  }
  return std::nullopt;
}

constexpr const char* kFooter = R"(Examples:
  mst-plan --model llama3-8b --gpu A100-80G
  mst-plan --model llama3-70b --gpu H100-80G --precision mixed --json
  mst-plan --model path/to/config.json --gpu h200 --seq 128K --batch 2
  mst-plan --scenario scenarios/examples/llama3-8b-a100.yaml --optimizer adamw-8bit
  mst-plan models                    # the model catalog;  mst-plan models gemma2-9b  prints one spec
  mst-plan gpus                      # the GPU catalog
  mst-plan --model llama3-8b --gpu H100 --seq 64K --out plan.yaml   # fastest plan for 64K tokens
  mst-plan show plan.yaml            # rebuild a plan file's step and check its prediction
  mst-plan devices                   # the CUDA devices of this machine against the catalog
  mst-plan --model tiny-llama --gpu A100-80G --seq 256 --out tiny.yaml && mst-plan verify tiny.yaml
  mst-plan run tiny.yaml --steps 20  # execute it: loss per step, predicted against measured memory
  mst-plan report --model llama3-8b --gpu A100-80G --out my-report   # Markdown + SVG trade-off report
  mst-plan sweep reports/examples.yaml --out reports                 # many reports and an index
  mst-plan fidelity                  # measured steps (scenarios/measured/) against the prediction

Exit codes: 0 success, 1 output not written or internal error, 2 usage (bad flag or value), 3 bad
input (model, GPU, scenario or plan not found, unreadable, malformed or invalid), 4 unavailable (no
CUDA device, or a plan too large for this machine's memory), 5 nothing fits, so --out wrote no
plan, 6 run/verify found memory, loss or gradients beyond the documented tolerance, or fidelity
found prediction errors beyond its bounds. Formats of model, GPU, scenario, sweep and measurement
files: docs/specs.md.)";

}  // namespace

std::string version_string() {
  return fmt::format("mst-plan {} (commit {}, CUDA backend: {})", MSTPLAN_VERSION, MSTPLAN_GIT_COMMIT,
                     runtime::cuda_compiled() ? "compiled in" : "not compiled in");
}

int run_cli(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  CLI::App app{"mst-plan: the longest sequence you can train a model on a GPU, how, and how fast.\n"
               "Plans Mini-Sequence Transformer training (chunked MLP and LM head + recomputation) byte by byte.",
               "mst-plan"};
  app.footer(kFooter);
  app.get_formatter()->column_width(34);
  app.require_subcommand(0, 1);

  PlanFlags f;
  bool version = false;
  app.add_flag("--version", version, "Print the version and whether the CUDA backend is compiled in");
  auto option = [&app](Flag& flag, const char* names, const char* type, const std::string& help) {
    flag.option = app.add_option(names, flag.value, help)->type_name(type);
  };
  option(f.model, "--model,-m", "NAME|PATH",
         "Model: a catalog name (mst-plan models), a YAML spec, or a Hugging Face config.json or its folder; "
         "e.g. --model llama3-8b");
  option(f.gpu, "--gpu,-g", "NAME|PATH", "GPU: a catalog name or alias (mst-plan gpus) or a YAML spec; e.g. --gpu A100-80G");
  option(f.scenario, "--scenario,-s", "FILE",
         "Scenario YAML with the setup (and optionally model and GPU); flags override it; "
         "e.g. --scenario scenarios/examples/llama3-8b-a100.yaml");
  option(f.batch, "--batch,-b", "N", "Sequences per micro-batch (default 1); e.g. --batch 2");
  option(f.seq, "--seq", "N|search", "Sequence length in tokens, or 'search' for the maximum (default); e.g. --seq 128K");
  option(f.precision, "--precision", "bf16|mixed|fp32",
         "bf16: bf16 weights and optimizer state (default); mixed: fp32 master weights and state; "
         "fp32: everything fp32 (native profile); "
         "e.g. --precision mixed");
  option(f.optimizer, "--optimizer", "NAME",
         "adamw (default), adamw-8bit, sgd (no momentum), none (frozen weights); e.g. --optimizer adamw-8bit");
  bool in_backward = false;  // presence is read through the options
  bool not_in_backward = false;
  f.in_backward.option = app.add_flag("--optimizer-in-backward", in_backward,
                                      "Apply each parameter's update as soon as its gradient is complete (the default); "
                                      "e.g. --optimizer-in-backward");
  f.not_in_backward.option = app.add_flag(
      "--no-optimizer-in-backward", not_in_backward,
      "Keep every gradient until a separate optimizer step after backward; e.g. --no-optimizer-in-backward");
  option(f.grad_accum, "--grad-accum", "N", "Micro-batches accumulated per optimizer step (default 1); e.g. --grad-accum 4");
  option(f.attention, "--attention", "NAME",
         "flash (default, O(S) extra memory; pytorch profile: SDPA), eager (S x S scores), or flash-attn (pytorch "
         "profile: attn_implementation=flash_attention_2); e.g. --attention eager");
  option(f.framework, "--framework", "NAME",
         "pytorch profile: the modelling code, transformers-5 (default; 4.49 and later), transformers-4.46, "
         "transformers-4.44 (up to 4.45: fp32 logits from the model) or torchtune; e.g. --framework transformers-4.44");
  bool hold_outputs = false, expandable = false;
  f.hold_outputs.option = app.add_flag("--hold-outputs", hold_outputs,
                                       "pytorch profile: the loop keeps `outputs` (the logits) through backward into the "
                                       "next step, as `outputs = model(...); outputs.loss.backward()` does (the HF Trainer "
                                       "drops them); e.g. --hold-outputs");
  f.expandable_segments.option = app.add_flag("--expandable-segments", expandable,
                                              "pytorch profile: PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True; "
                                              "e.g. --expandable-segments");
  option(f.profile, "--profile", "native|pytorch",
         "Who executes the step: native (this project's runtime, default) or pytorch (transformers on "
         "autograd); e.g. --profile pytorch");
  option(f.method, "--method", "METHOD",
         "Only this method: vanilla, recompute, mst, mst-offload or auto (default: all, choosing auto's plan), or "
         "mst-reference (pytorch profile: the MST authors' code); e.g. --method mst");
  option(f.out, "--out,-o", "FILE", "Write the chosen plan as a plan file (read by `mst-plan show`); e.g. --out plan.yaml");
  app.add_flag("--json", f.json, "Print JSON instead of tables (also for the subcommands); e.g. --json | jq .model.parameters");

  std::string models_which;
  bool models_json = false;
  CLI::App* models = app.add_subcommand("models", "List the model catalog, or print one spec as YAML (a name or a file: "
                                                  "converts a config.json); e.g. mst-plan models llama3-8b");
  models->add_option("model", models_which, "A model name or file")->type_name("NAME|PATH");
  models->add_flag("--json", models_json, "Print JSON");

  std::string gpus_which;
  bool gpus_json = false;
  CLI::App* gpus = app.add_subcommand("gpus", "List the GPU catalog, or print one spec as YAML; e.g. mst-plan gpus h100");
  gpus->add_option("gpu", gpus_which, "A GPU name or file")->type_name("NAME|PATH");
  gpus->add_flag("--json", gpus_json, "Print JSON");

  std::string show_file;
  CLI::App* show = app.add_subcommand("show", "Rebuild the step of a plan file and check the prediction it carries; "
                                              "e.g. mst-plan show plan.yaml");
  show->add_option("plan", show_file, "A plan file written by --out")->type_name("FILE")->required();
  bool show_json = false;
  show->add_flag("--json", show_json, "Print JSON");

  RunCommand run_cmd, verify_cmd;
  verify_cmd.verify = true;
  CLI::App* run = app.add_subcommand(
      "run", "Execute a plan file with the bundled runtime and compare measured with predicted memory; "
             "e.g. mst-plan run plan.yaml --steps 3");
  CLI::App* verify = app.add_subcommand(
      "verify", "Run one step of a plan file and check memory, loss, every gradient and every updated parameter "
                "against a plain step (no chunks, no recompute); e.g. mst-plan verify plan.yaml");
  for (auto [sub, cmd] : {std::pair{run, &run_cmd}, std::pair{verify, &verify_cmd}}) {
    sub->add_option("plan", cmd->plan_file, "A plan file written by --out")->type_name("FILE")->required();
    sub->add_option("--backend", cmd->backend, "cpu (the reference kernels; default) or cuda")->type_name("NAME");
    sub->add_option("--seed", cmd->seed, "Seed of the synthetic weights and data (default 1)")->type_name("N");
    sub->add_option("--ignore-fraction", cmd->ignore_fraction,
                    "Share of labels set to -100 (ignored by the loss), 0 to 1 (default 0)")
        ->type_name("X")
        ->check(CLI::Range(0.0, 1.0));
    sub->add_flag("--json", cmd->json, "Print JSON");
  }
  run->add_option("--steps", run_cmd.steps, "Training steps to run (default 3)")->type_name("N")->check(CLI::Range(1, 1000000));
  run->add_flag("--memory-only", run_cmd.memory_only,
                "Allocate and free every tensor as the step does but run no kernel: whether a long plan fits, in "
                "seconds (no loss)");

  ReportFlags report_flags;
  CLI::App* report_cmd = app.add_subcommand(
      "report", "Write a trade-off report (Markdown, SVG figures through gnuplot, CSV/JSON data) for a model and a GPU; "
                "takes the planning flags; e.g. mst-plan report --model llama3-8b --gpu A100-80G --out reports/mine");
  report_cmd->fallthrough();  // the planning flags (--model, --gpu, --batch, ...) belong to the main command
  report_cmd->add_option("--out,-o", report_flags.out, "The folder to write (created; an earlier report there is replaced)")
      ->type_name("DIR");
  report_cmd->add_option("--measured", report_flags.measured,
                         "Measurement files to compare with, besides scenarios/measured/ (repeatable)")
      ->type_name("FILE");
  report_cmd->add_flag("--json", report_flags.json, "Print what was written as JSON");

  ReportFlags sweep_flags;
  CLI::App* sweep_cmd = app.add_subcommand(
      "sweep", "One report per scenario, in parallel, and an index with a summary table; FILEs are scenario files or "
               "sweep files (models x GPUs x setups); e.g. mst-plan sweep reports/examples.yaml --out reports");
  sweep_cmd->add_option("files", sweep_flags.files, "Scenario or sweep files")->type_name("FILE...")->required();
  sweep_cmd->add_option("--out,-o", sweep_flags.out, "The folder for the reports and index.md")->type_name("DIR");
  sweep_cmd->add_option("--jobs,-j", sweep_flags.jobs, "Reports built at once (default: one per hardware thread)")
      ->type_name("N")
      ->check(CLI::Range(1, 1024));
  sweep_cmd->add_option("--measured", sweep_flags.measured,
                        "Measurement files to compare with, besides scenarios/measured/ (repeatable)")
      ->type_name("FILE");

  FidelityFlags fidelity_flags;
  CLI::App* fidelity_cmd = app.add_subcommand(
      "fidelity", "Every measured step (scenarios/measured/, --measured) against the planner's prediction, with the "
                  "errors; exit 6 beyond the bounds (median 2%, worst 5%, longest 3%); e.g. mst-plan fidelity");
  fidelity_cmd->add_option("--measured", fidelity_flags.measured, "More measurement files (repeatable)")->type_name("FILE");
  fidelity_cmd->add_flag("--no-builtin", fidelity_flags.no_builtin, "Leave out scenarios/measured/");
  fidelity_cmd->add_option("--profile", fidelity_flags.profile, "pytorch (default), native or all")->type_name("NAME");
  fidelity_cmd->add_flag("--json", fidelity_flags.json, "Print JSON");
  fidelity_cmd->add_flag("--published", fidelity_flags.published,
                         "Published measurements (tests/data/published/) instead: peak memory, longest lengths and "
                         "tokens/s of papers and recipes; exit 6 beyond their bounds (peak median 3%, worst 8%, longest "
                         "10%, tokens/s median 15%)");
  fidelity_cmd->add_option("--case", fidelity_flags.cases, "More published case files, with --published (repeatable)")
      ->type_name("FILE");

  bool devices_json = false;
  CLI::App* devices = app.add_subcommand(
      "devices", "Probe this machine's CUDA devices and compare their memory with the catalog; e.g. mst-plan devices");
  devices->add_flag("--json", devices_json, "Print JSON");

  std::vector<const char*> argv{"mst-plan"};
  for (const std::string& a : args) argv.push_back(a.c_str());
  try {
    app.parse(static_cast<int>(argv.size()), argv.data());
  } catch (const CLI::CallForHelp&) {
    out << app.help();
    return 0;
  } catch (const CLI::CallForAllHelp&) {
    out << app.help("", CLI::AppFormatMode::All);
    return 0;
  } catch (const CLI::ParseError& e) {
    std::string message = e.what();
    fmt::print(err, "mst-plan: {} (see mst-plan --help)\n", message);
    return static_cast<int>(ExitCode::usage);
  }

  if (version) {
    out << version_string() << '\n';
    return 0;
  }
  std::optional<Failure> failure;
  CLI::App* subcommand = app.get_subcommands().empty() ? nullptr : app.get_subcommands().front();
  if (report_cmd->parsed()) {
    failure = run_report(f, report_flags, command_line(args), out);
  } else if (subcommand && !f.given_names().empty()) {
    failure = usage(fmt::format("{} applies to planning, not to 'mst-plan {}'", f.given_names().front(),
                                subcommand->get_name()));
  } else if (fidelity_cmd->parsed()) {
    fidelity_flags.json = fidelity_flags.json || f.json;
    failure = run_fidelity(fidelity_flags, out);
  } else if (sweep_cmd->parsed()) {
    failure = run_sweep_command(sweep_flags, command_line(args), out, err);
  } else if (models->parsed()) {
    failure = run_models(models_which, models_json || f.json, out);
  } else if (gpus->parsed()) {
    failure = run_gpus(gpus_which, gpus_json || f.json, out);
  } else if (devices->parsed()) {
    failure = run_devices(devices_json || f.json, out);
  } else if (show->parsed()) {
    failure = run_show(show_file, show_json || f.json, out);
  } else if (run->parsed() || verify->parsed()) {
    RunCommand& cmd = run->parsed() ? run_cmd : verify_cmd;
    cmd.json = cmd.json || f.json;
    const RunOutcome outcome = run_command(cmd, out);
    if (outcome.code != 0) failure = Failure{static_cast<ExitCode>(outcome.code), outcome.message};
  } else {
    failure = run_plan(f, out);
  }
  if (failure) {
    fmt::print(err, "mst-plan: {}\n", failure->message);
    return static_cast<int>(failure->code);
  }
  return 0;
}

}  // namespace mstplan::cli
