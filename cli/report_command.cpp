// mst-plan report: a trade-off report for a model and a GPU, and the measurements reports compare with.
#include "cli/command.h"

#include <fmt/ostream.h>
#include <nlohmann/json.hpp>

#include "planner/json_output.h"
#include "planner/units.h"
#include "report/report.h"
#include "report/report_files.h"

namespace mstplan::cli {

// The built-in measurements and the files given with --measured.
std::variant<report::MeasuredData, Failure> measurements(const std::vector<std::string>& files, bool builtin) {
  report::MeasuredData all;
  if (builtin) all = report::builtin_measurements();
  for (const std::string& file : files) {
    auto loaded = report::load_measurement_file(file);
    if (!loaded) return Failure{exit_code_of(loaded.error()), loaded.error().message};
    all += *loaded;
  }
  return all;
}

std::optional<Failure> run_report(const PlanFlags& f, const ReportFlags& r, const std::string& command, std::ostream& out) {
  if (f.method.given()) return usage("--method: a report covers every method; leave it out");
  if (r.out.empty()) return usage("report: --out DIR is required (the folder the report is written to)");
  auto resolved = resolve_inputs(f);
  if (auto* failure = std::get_if<Failure>(&resolved)) return std::move(*failure);
  const PlanInputs& inputs = std::get<PlanInputs>(resolved);
  if (inputs.fewest_gpus) return usage("--gpus auto: the main command finds the count; give the report --gpus N");
  auto measured = measurements(r.measured);
  if (auto* failure = std::get_if<Failure>(&measured)) return std::move(*failure);
  report::ReportOptions options;
  options.search.cluster = inputs.cluster;
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

}  // namespace mstplan::cli
