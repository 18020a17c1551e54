// mst-plan sweep: one report per scenario, in parallel, and an index.
#include "cli/command.h"

#include <unistd.h>
#include <iostream>
#include <fmt/ostream.h>
#include "report/report_files.h"
#include "report/sweep.h"

namespace mstplan::cli {

namespace {

bool stderr_is_terminal(const std::ostream& err) {
  return err.rdbuf() == std::cerr.rdbuf() && ::isatty(STDERR_FILENO) == 1;
}

}  // namespace

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

}  // namespace mstplan::cli
