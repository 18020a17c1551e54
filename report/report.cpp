#include "report/report.h"

#include <algorithm>

#include "planner/builder.h"
#include "planner/static_memory.h"

namespace mstplan::report {
namespace {

TimelineSeries make_timeline(std::string label, Evaluation evaluation, const ModelSpec& model, const TrainingSetup& setup,
                             std::int64_t max_points) {
  TimelineSeries series;
  series.label = std::move(label);
  const Program program = build_program(model, setup, evaluation.plan, evaluation.seq_len);
  const std::vector<TimelinePoint> points = timeline(program, AllocatorModel::for_profile(setup.profile));
  MSTPLAN_CHECK(!points.empty(), "a step without ops");
  series.ops = static_cast<std::int64_t>(points.size());
  // The peak: the first op where the allocated bytes are the analysis's peak.
  const auto peak = std::find_if(points.begin(), points.end(), [&](const TimelinePoint& p) {
    return p.during.allocated_bytes == evaluation.analysis.peak.allocated_bytes;
  });
  MSTPLAN_CHECK(peak != points.end(), "the timeline of {} never reaches the analysed peak of {} bytes", series.label,
                evaluation.analysis.peak.allocated_bytes);
  series.peak_index = peak - points.begin();
  const std::int64_t n = series.ops;
  const std::int64_t per_bucket = (n + max_points - 1) / std::max<std::int64_t>(max_points, 1);
  for (std::int64_t begin = 0; begin < n; begin += per_bucket) {
    const std::int64_t end = std::min(n, begin + per_bucket);
    // The first largest of the run: in the peak's run that is the peak itself (its first occurrence).
    std::int64_t best = begin;
    for (std::int64_t i = begin + 1; i < end; ++i) {
      if (points[i].during.allocated_bytes > points[best].during.allocated_bytes) best = i;
    }
    const TimelinePoint& p = points[best];
    series.samples.push_back(TimelineSample{best, op_name(program, p.op, p.iteration), group_bytes(p.during),
                                            p.during.allocated_bytes});
  }
  series.evaluation = std::move(evaluation);
  return series;
}

// 1024, 2048, ... below `longest`, then `longest`.
std::vector<std::int64_t> throughput_lengths(std::int64_t from, std::int64_t longest) {
  std::vector<std::int64_t> out;
  for (std::int64_t s = std::max<std::int64_t>(from, 1); s < longest; s *= 2) out.push_back(s);
  out.push_back(longest);
  return out;
}

}  // namespace

std::string_view group_name(MemoryGroup group) {
  switch (group) {
    case MemoryGroup::weights: return "weights";
    case MemoryGroup::gradients: return "gradients";
    case MemoryGroup::optimizer_state: return "optimizer state";
    case MemoryGroup::checkpoints: return "checkpoints";
    case MemoryGroup::saved: return "saved activations";
    case MemoryGroup::intermediates: return "intermediates";
    case MemoryGroup::workspace: return "workspace";
  }
  return "?";
}

GroupBytes group_bytes(const MemoryState& state) {
  GroupBytes g{};
  auto add = [&](MemoryGroup group, TensorKind kind) {
    g[static_cast<std::size_t>(group)] += state.by_kind[static_cast<std::size_t>(kind)];
  };
  add(MemoryGroup::weights, TensorKind::weight);
  add(MemoryGroup::weights, TensorKind::master_weight);
  add(MemoryGroup::gradients, TensorKind::gradient);
  add(MemoryGroup::optimizer_state, TensorKind::optimizer_state);
  add(MemoryGroup::checkpoints, TensorKind::checkpoint);
  add(MemoryGroup::saved, TensorKind::saved);
  add(MemoryGroup::intermediates, TensorKind::transient);
  add(MemoryGroup::intermediates, TensorKind::data);
  add(MemoryGroup::workspace, TensorKind::workspace);
  return g;
}

const MethodResult* Report::method(Method m) const {
  for (const MethodResult& r : search.methods) {
    if (r.method == m) return &r;
  }
  return nullptr;
}

Report build_report(const ModelSpec& model, const GpuSpec& gpu, const TrainingSetup& setup, const ReportOptions& options) {
  Report r;
  r.model = model;
  r.gpu = gpu;
  r.setup = setup;
  r.search_options = options.search;
  r.static_fits = static_memory(model, setup).total_bytes() <= gpu.usable_bytes();
  r.search = search(model, gpu, setup, all_methods(), options.search);
  Evaluator evaluator(model, gpu, setup, options.search);

  // 3. The timeline: plain autograd against the best plan, at one length.
  const MethodResult* vanilla = r.method(Method::vanilla);
  const MethodResult* best = r.method(Method::automatic);
  std::optional<std::int64_t> length = options.timeline_seq_len ? options.timeline_seq_len : setup.seq_len;
  if (!length && vanilla->at_max) length = vanilla->at_max->seq_len;
  if (!length && best->at_max) length = best->at_max->seq_len;
  if (length && best->at_max) {
    r.timeline_seq_len = *length;
    r.timeline_requested = options.timeline_seq_len || setup.seq_len;
    r.timelines.push_back(make_timeline("vanilla", evaluator.evaluate(Plan::vanilla(), *length), model, setup,
                                        options.timeline_points));
    // At a requested length, auto's fastest plan that fits it; otherwise auto's longest-reaching plan.
    std::optional<Evaluation> chosen;
    if (r.timeline_requested) chosen = fastest_fitting(evaluator, model, setup, *length);
    if (!chosen) chosen = evaluator.evaluate(best->at_max->plan, *length);
    r.timelines.push_back(make_timeline("auto", std::move(*chosen), model, setup, options.timeline_points));
  }

  // 4. The longest sequence against the chunk counts, on MST's plan.
  r.chunk_base_plan = apply_knobs(Plan::mst_reference(model), setup.knobs);
  if (r.static_fits) {
    for (std::int64_t head : options.lm_head_chunk_counts) {
      for (std::int64_t mlp : options.mlp_chunk_counts) {
        Plan p = r.chunk_base_plan;
        p.mlp = ChunkSetting{mlp, {}};
        p.lm_head = ChunkSetting{head, {}};
        r.chunk_grid.push_back(ChunkPoint{mlp, head, evaluator.longest(p)});
      }
    }
  }

  // 5. Tokens/s against the length, per method up to its longest.
  for (const MethodResult& m : r.search.methods) {
    if (!m.at_max) continue;
    for (std::int64_t s : throughput_lengths(options.throughput_min_seq_len, m.at_max->seq_len)) {
      if (s == m.at_max->seq_len) {
        r.throughput.push_back(ThroughputPoint{m.method, *m.at_max});
        continue;
      }
      std::optional<Evaluation> e;
      if (m.method == Method::automatic) {
        e = fastest_fitting(evaluator, model, setup, s);
      } else {
        e = evaluator.evaluate(method_plan(m.method, model), s);
      }
      if (e && e->fits) r.throughput.push_back(ThroughputPoint{m.method, std::move(*e)});
    }
  }

  // 6. Measured peaks of this scenario against the prediction.
  for (const Measurement& m : options.measurements) {
    if (measures(m, model, gpu, setup)) r.measured.push_back(predict_peak(m));
  }
  r.measurements_considered = static_cast<std::int64_t>(options.measurements.size());
  return r;
}

}  // namespace mstplan::report
