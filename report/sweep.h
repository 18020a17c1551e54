#pragma once
// Sweeps: many scenarios, one report each, and an index page with a summary table.
//
// Inputs are scenario files (which must name the model and the GPU) and sweep files:
//
//   title: Example reports                    # optional: the index's heading
//   scenarios:                                # explicit scenarios: a scenario's fields and a name
//     - {model: llama3-8b, gpu: A100-80G}
//     - {model: llama3-8b, gpu: H100-80G, name: llama3-8b-h100-b2, batch: 2}
//   models: [llama3-8b, gemma2-9b]            # and/or every model x GPU x setup
//   gpus: [A100-80G]
//   setups:                                   # optional (default: one setup with every default)
//     - {name: bf16}
//     - {name: mixed, precision: mixed}
//
// A file is a sweep file when it has any of these top-level fields. Each report goes to
// OUT/NAME/, NAME being the entry's `name` or "model-gpu[-setup name]" in lower case.
//
//   auto items = load_sweep_inputs({"reports/examples.yaml"});
//   auto outcome = run_sweep(*items, "reports", SweepOptions{});
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "planner/error.h"
#include "report/report.h"
#include "report/report_files.h"

namespace mstplan::report {

struct SweepItem {
  std::string name;    ///< its folder under the output folder
  ModelSpec model;
  GpuSpec gpu;
  TrainingSetup setup;
  std::string origin;  ///< "file" or "file:line:column", for messages
};

struct SweepInputs {
  std::string title;  ///< the first sweep file's title, else "mst-plan sweep"
  std::vector<SweepItem> items;
};

/// Reads every file, resolves every model and GPU and checks every setup before anything runs,
/// so a bad input writes nothing. Two entries with the same name are refused.
[[nodiscard]] Expected<SweepInputs> load_sweep_inputs(const std::vector<std::string>& files);

struct SweepProgress {
  std::int64_t done = 0;
  std::int64_t total = 0;
  const SweepItem* item = nullptr;  ///< the one that just finished
  bool ok = true;
  double seconds = 0;               ///< its wall time
};

struct SweepOptions {
  int jobs = 0;                  ///< reports built at once; 0: one per hardware thread
  ReportOptions report;          ///< timeline_seq_len is ignored: each scenario's own seq_len decides
  std::string command;           ///< the command line, for the reports and the index
  std::optional<std::filesystem::path> gnuplot;
  std::function<void(const SweepProgress&)> on_progress;  ///< called from one thread at a time
};

struct SweepResult {
  struct Row {
    const SweepItem* item = nullptr;
    std::optional<Error> error;  ///< why this report was not written
    std::array<std::int64_t, 5> max_seq_len{};  ///< per method in all_methods() order; 0: none fits
    double auto_tokens_per_s = 0;
    std::string auto_plan;
  };
  std::vector<Row> rows;  ///< in input order
  [[nodiscard]] std::int64_t failures() const;
};

/// Builds and writes every report (in parallel), then OUT/index.md and OUT/index.json.
/// Fails only when the index cannot be written; a report that fails is a row with an error.
[[nodiscard]] Expected<SweepResult> run_sweep(const SweepInputs& inputs, const std::filesystem::path& out,
                                              const SweepOptions& options);

/// One progress update: on a terminal a bar redrawn in place ("\r[#####.....] 2/6 name written
/// (3.1 s)"), otherwise a line ("sweep: 2/6 name written (3.1 s)\n").
[[nodiscard]] std::string format_progress(const SweepProgress& progress, bool terminal);

}  // namespace mstplan::report
