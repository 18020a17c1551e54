#pragma once
// A trade-off report's numbers for one model, GPU and setup: what MST and recomputation buy
// (the longest sequence per method), where the memory goes at each method's peak, the memory
// timeline of one step, the longest sequence against the chunk counts, tokens/s against length,
// and predicted against measured peaks. `write_report` (report_files.h) turns it into Markdown,
// CSV/JSON and gnuplot figures.
//
// Every number comes from the planner's own search and analysis (search.h), so the report's
// table says what `mst-plan --json` says for the same scenario.
//
//   Report r = build_report(*model, *gpu, setup, ReportOptions{});
//   fmt::print("{}\n", r.search.methods.front().at_max->seq_len);
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "planner/analysis.h"
#include "planner/search.h"
#include "report/fidelity.h"
#include "report/measured.h"

namespace mstplan::report {

/// What the report groups memory into (the planner's tensor kinds, folded): weights (and fp32
/// master weights), gradients, optimizer state, checkpoints (the inputs of recomputed layers),
/// saved activations (kept for backward), intermediates (transients, and the batch's token ids
/// and labels), workspace.
enum class MemoryGroup : std::uint8_t { weights, gradients, optimizer_state, checkpoints, saved, intermediates, workspace };
inline constexpr std::size_t kMemoryGroups = 7;
using GroupBytes = std::array<std::int64_t, kMemoryGroups>;

/// "weights", "gradients", "optimizer state", "checkpoints", "saved activations", "intermediates", "workspace".
[[nodiscard]] std::string_view group_name(MemoryGroup group);
/// The requested device bytes of a memory state by group.
[[nodiscard]] GroupBytes group_bytes(const MemoryState& state);

struct ReportOptions {
  SearchOptions search;
  /// The step whose timeline is drawn: this many tokens; nullopt: the setup's seq_len, else
  /// vanilla's longest (the longest that plain autograd fits), else auto's.
  std::optional<std::int64_t> timeline_seq_len;
  /// At most this many points per timeline; each point is the op with the most allocated bytes
  /// of its run of consecutive ops, so every local peak and the step's peak are kept.
  std::int64_t timeline_points = 1200;
  /// The chunk-count grid (MST's plan, only the counts varied).
  std::vector<std::int64_t> mlp_chunk_counts{1, 2, 4, 8, 16, 32, 64};
  std::vector<std::int64_t> lm_head_chunk_counts{1, 2, 4, 8, 16, 32, 64};
  /// Tokens/s at powers of two from this length up to each method's longest (and at it).
  std::int64_t throughput_min_seq_len = 1024;
  /// Measurements to compare with; the ones of this model, GPU and setup are used.
  std::vector<Measurement> measurements;
};

/// Live bytes by group after some op of the step.
struct TimelineSample {
  std::int64_t index = 0;  ///< the op's position in the step (0-based, loops unrolled)
  std::string op;          ///< its name
  GroupBytes bytes{};      ///< requested device bytes during it, by group
  std::int64_t allocated_bytes = 0;
};

struct TimelineSeries {
  std::string label;          ///< "vanilla", or "auto" for the best plan
  Evaluation evaluation;      ///< the plan at the timeline's length
  std::int64_t ops = 0;       ///< ops executed by the step
  std::int64_t peak_index = 0;  ///< the op at the allocated peak
  std::vector<TimelineSample> samples;  ///< at most ReportOptions::timeline_points, the peak among them
};

struct ChunkPoint {
  std::int64_t mlp_chunks = 1;
  std::int64_t lm_head_chunks = 1;
  std::optional<Evaluation> longest;  ///< nullopt: not even the granularity fits
};

struct ThroughputPoint {
  Method method = Method::vanilla;
  Evaluation evaluation;  ///< the method's plan (auto: its fastest fitting plan) at a length that fits
};

struct Report {
  ModelSpec model;
  GpuSpec gpu;
  TrainingSetup setup;
  SearchOptions search_options;
  bool static_fits = true;     ///< weights, gradients and optimizer state fit the GPU at all
  SearchResult search;         ///< every method, as `mst-plan` searches them
  std::int64_t timeline_seq_len = 0;
  bool timeline_requested = false;  ///< the length was asked for (else vanilla's or auto's longest)
  std::vector<TimelineSeries> timelines;  ///< vanilla, then the best plan (auto); empty when nothing fits
  Plan chunk_base_plan;        ///< the plan of the chunk grid (MST's, with the setup's knobs)
  std::vector<ChunkPoint> chunk_grid;     ///< MLP-major: every MLP count for the first LM-head count, ...
  std::vector<ThroughputPoint> throughput;
  std::vector<FidelityRow> measured;  ///< the measurements of this scenario against the prediction
  std::int64_t measurements_considered = 0;

  [[nodiscard]] const MethodResult* method(Method m) const;
};

/// Runs the search and every evaluation a report draws. Deterministic: the same inputs give the
/// same report.
[[nodiscard]] Report build_report(const ModelSpec& model, const GpuSpec& gpu, const TrainingSetup& setup,
                                  const ReportOptions& options);

}  // namespace mstplan::report
