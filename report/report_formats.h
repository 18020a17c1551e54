#pragma once
// The report's files, one output format per source file (report/, not installed); report_files.cpp
// assembles them and writes the folder.
//   report_csv.cpp       data/*.csv: the numbers behind each figure
//   report_gnuplot.cpp   figures/*.gp: the scripts that draw figures/*.svg from the CSV files
//   report_markdown.cpp  report.md: the tables, the figures and how to read them
//   report_json.cpp      report.json: every number, the search as `mst-plan --json` prints it
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "report/report.h"

namespace mstplan::report::detail {

// CSV, one file each: data/methods.csv, breakdown.csv, timeline-<label>.csv, chunks.csv,
// throughput.csv, pareto.csv, measured.csv.
[[nodiscard]] std::string methods_csv(const Report& r);
[[nodiscard]] std::string breakdown_csv(const Report& r);
[[nodiscard]] std::string timeline_csv(const TimelineSeries& t);
[[nodiscard]] std::string chunks_csv(const Report& r);
[[nodiscard]] std::string throughput_csv(const Report& r);
[[nodiscard]] std::string pareto_csv(const Report& r);
[[nodiscard]] std::string measured_csv(const Report& r);

// gnuplot scripts: figures/max-length.gp, breakdown.gp, timeline.gp, chunks.gp, throughput.gp,
// measured.gp, each reading the CSV files above.
[[nodiscard]] std::string max_length_gp(const Report& r);
[[nodiscard]] std::string breakdown_gp(const Report& r);
[[nodiscard]] std::string timeline_gp(const Report& r);
[[nodiscard]] std::string chunks_gp(const Report& r);
[[nodiscard]] std::string throughput_gp(const Report& r);
[[nodiscard]] std::string measured_gp(const Report& r);

/// report.md; `figures` are the SVGs it shows (relative to the folder), `command` regenerates it.
[[nodiscard]] std::string markdown(const Report& r, const std::string& command, const std::vector<std::string>& figures);

/// report.json.
[[nodiscard]] nlohmann::json report_json(const Report& r, const std::string& command);

}  // namespace mstplan::report::detail
