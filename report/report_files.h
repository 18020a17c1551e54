#pragma once
// A report as files: report.md (the tables, the figures and how to read them), report.json (every
// number, with the search in the same form as `mst-plan --json`), data/*.csv (the data behind each
// figure) and figures/*.gp (gnuplot scripts that draw figures/*.svg from the CSV files).
//
// Files are staged in a temporary sibling folder, the figures drawn there, and the folder then
// swapped in: a failure leaves the output folder as it was.
//
//   std::vector<ReportFile> files = report_files(report, "mst-plan report --model llama3-8b --gpu A100-80G --out r");
//   auto written = write_report("r", files, find_gnuplot());
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "planner/error.h"
#include "report/report.h"

namespace mstplan::report {

struct ReportFile {
  std::string path;  ///< relative to the report's folder: "data/methods.csv"
  std::string text;
};

/// Every file of the report but the SVGs; `command` is the command line that regenerates it.
[[nodiscard]] std::vector<ReportFile> report_files(const Report& report, const std::string& command);

/// The gnuplot program: $MSTPLAN_GNUPLOT when set ("" or "none": none), else `gnuplot` on PATH;
/// nullopt when there is none.
[[nodiscard]] std::optional<std::filesystem::path> find_gnuplot();

struct WrittenReport {
  std::vector<std::string> figures;  ///< the SVGs drawn, relative to the folder
  /// Empty when the figures were drawn; otherwise why not and how to draw them.
  std::string figures_note;
};

/// The file in a report folder listing the files the report wrote (one relative path per line):
/// the next report into the folder replaces those and keeps everything else.
inline constexpr const char* kReportManifest = ".mst-plan-report";

/// Writes `files` into `dir` (created, with missing parents) and draws the figures with `gnuplot`
/// (none: the scripts are written and the note says how to run them). Refuses a `dir` that exists
/// and is neither empty nor an earlier report (a folder holding report.md), so no other work is
/// overwritten; into an earlier report it replaces the files that report wrote (kReportManifest)
/// and keeps the rest. A failing gnuplot script is an error (a bug) with gnuplot's message.

[[nodiscard]] Expected<WrittenReport> write_report(const std::filesystem::path& dir, const std::vector<ReportFile>& files,
                                                   const std::optional<std::filesystem::path>& gnuplot);

}  // namespace mstplan::report
