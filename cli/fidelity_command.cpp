// mst-plan fidelity: measured steps, or published measurements (--published), against the prediction.
#include "cli/command.h"

#include <cmath>
#include <fmt/ostream.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include "planner/json_output.h"
#include "planner/units.h"
#include "report/fidelity.h"
#include "report/published.h"

namespace mstplan::cli {

namespace {

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
                      {"worst_abs_multi_gpu_longest_error", summary.worst_abs_multi_gpu_longest_error},
                      {"median_abs_tokens_per_s_error", summary.median_abs_tokens_per_s_error},
                      {"known_gaps", summary.known_gaps},
                      {"violations", problems}})
        << '\n';
  } else {
    fmt::print(out, "| case | configuration | published | predicted | error | what it teaches |\n"
                    "| --- | --- | ---: | ---: | ---: | --- |\n");
    for (const report::PublishedRow& r : rows) {
      fmt::print(out, "| {} | {} | {} | {} | {:+.2f}% | {} |\n", r.c.id, report::describe_measurement(*r.c.setup),
                 printed(r.c), figure(r.c.quantity, r.predicted), 100 * r.error, r.c.note);
    }
    bool gaps = false;
    for (const report::PublishedRow& r : rows) {
      if (r.c.known_gap.empty()) continue;
      if (!gaps) fmt::print(out, "\nknown gaps (held out of the bounds until closed):\n");
      gaps = true;
      fmt::print(out, "  {}: {:+.2f}%: {}\n", r.c.id, 100 * r.error, r.c.known_gap);
    }
    if (!missing.empty()) {
      fmt::print(out, "\nnot expressible yet:\n");
      for (const report::PublishedCase* c : missing) {
        fmt::print(out, "  {}: {}; needs {}\n", c->id, printed(*c), c->missing);
      }
    }
    fmt::print(out,
               "\n{} peak-memory cases: median |error| {:.1f}% (bound {:.0f}%), worst {:.1f}% (bound {:.0f}%); {} longest "
               "lengths on one GPU: worst {:.1f}% (bound {:.0f}%); {} on several: worst {:.1f}% (bound {:.0f}%); {} "
               "throughput cases: median |error| {:.1f}% (bound {:.0f}%); {} known gaps; {} not expressible yet\n",
               summary.peaks, 100 * summary.median_abs_peak_error, 100 * bounds.median_peak_error,
               100 * summary.worst_abs_peak_error, 100 * bounds.worst_peak_error, summary.longest,
               100 * summary.worst_abs_longest_error, 100 * bounds.longest_error, summary.multi_gpu_longest,
               100 * summary.worst_abs_multi_gpu_longest_error, 100 * bounds.multi_gpu_longest_error, summary.throughput,
               100 * summary.median_abs_tokens_per_s_error, 100 * bounds.median_tokens_per_s_error, summary.known_gaps,
               summary.missing);
  }
  if (!problems.empty()) return Failure{ExitCode::mismatch, fmt::format("{}", fmt::join(problems, "; "))};
  return std::nullopt;
}

}  // namespace

// Every measurement against the planner's prediction; exit 6 when a documented bound is exceeded.
std::optional<Failure> run_fidelity(const FidelityFlags& f, std::ostream& out) {
  if (f.published) return run_published(f, out);
  if (!f.cases.empty()) return usage("--case: published cases are read with --published");
  std::optional<Profile> profile;
  if (f.profile != "all") {
    Profile p = Profile::pytorch;
    if (auto failure = parse_choice("--profile", f.profile, p)) {
      return usage(fmt::format("--profile: expected one of {} or all, got '{}'", enum_choices<Profile>(), printable(f.profile)));
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

}  // namespace mstplan::cli
