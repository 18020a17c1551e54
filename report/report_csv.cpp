// The report's data/*.csv: the numbers behind each figure, one row per point.
#include "report/report_formats.h"

#include <fmt/format.h>
#include "planner/units.h"

namespace mstplan::report::detail {

static std::string csv_text(std::string_view text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

std::string methods_csv(const Report& r) {
  const MethodResult* vanilla = r.method(Method::vanilla);
  const MethodResult* recompute = r.method(Method::recompute);
  std::string out = "method,max_seq_len,vs_vanilla,vs_recompute,peak_bytes,tokens_per_s,peak_at,plan\n";
  for (const MethodResult& m : r.search.methods) {
    if (!m.at_max) {
      out += fmt::format("{},0,NaN,NaN,NaN,NaN,,\n", to_string(m.method));
      continue;
    }
    auto x = [&](const MethodResult* base) {
      return base && base->at_max ? fmt::format("{:.4f}", static_cast<double>(m.at_max->seq_len) /
                                                             static_cast<double>(base->at_max->seq_len))
                                  : std::string("NaN");
    };
    out += fmt::format("{},{},{},{},{},{:.1f},{},{}\n", to_string(m.method), m.at_max->seq_len, x(vanilla), x(recompute),
                       m.at_max->analysis.peak.allocated_bytes, m.at_max->time.tokens_per_s, csv_text(m.at_max->peak_at),
                       csv_text(describe_plan(m.at_max->plan, r.model, m.at_max->positions)));
  }
  return out;
}

static std::string group_header() {
  std::string out;
  for (std::size_t g = 0; g < kMemoryGroups; ++g) {
    std::string name(group_name(static_cast<MemoryGroup>(g)));
    std::replace(name.begin(), name.end(), ' ', '_');
    out += "," + name + "_bytes";
  }
  return out;
}

std::string breakdown_csv(const Report& r) {
  std::string out = "method,seq_len" + group_header() + ",peak_bytes,peak_at\n";
  for (const MethodResult& m : r.search.methods) {
    if (!m.at_max) continue;
    out += fmt::format("{},{}", to_string(m.method), m.at_max->seq_len);
    for (std::int64_t b : group_bytes(m.at_max->analysis.peak)) out += fmt::format(",{}", b);
    out += fmt::format(",{},{}\n", m.at_max->analysis.peak.allocated_bytes, csv_text(m.at_max->peak_at));
  }
  return out;
}

std::string timeline_csv(const TimelineSeries& t) {
  std::string out = "op_index" + group_header() + ",allocated_bytes,op\n";
  for (const TimelineSample& s : t.samples) {
    out += fmt::format("{}", s.index);
    for (std::int64_t b : s.bytes) out += fmt::format(",{}", b);
    out += fmt::format(",{},{}\n", s.allocated_bytes, csv_text(s.op));
  }
  return out;
}

std::string chunks_csv(const Report& r) {
  std::string out = "mlp_chunks,lm_head_chunks,max_seq_len,tokens_per_s,peak_at\n";
  for (const ChunkPoint& c : r.chunk_grid) {
    if (c.longest) {
      out += fmt::format("{},{},{},{:.1f},{}\n", c.mlp_chunks, c.lm_head_chunks, c.longest->seq_len,
                         c.longest->time.tokens_per_s, csv_text(c.longest->peak_at));
    } else {
      out += fmt::format("{},{},NaN,NaN,\n", c.mlp_chunks, c.lm_head_chunks);
    }
  }
  return out;
}

std::string throughput_csv(const Report& r) {
  std::string out = "method,seq_len,tokens_per_s,peak_bytes,plan\n";
  for (const ThroughputPoint& p : r.throughput) {
    out += fmt::format("{},{},{:.1f},{},{}\n", to_string(p.method), p.evaluation.seq_len, p.evaluation.time.tokens_per_s,
                       p.evaluation.analysis.peak.allocated_bytes,
                       csv_text(describe_plan(p.evaluation.plan, r.model, p.evaluation.positions)));
  }
  return out;
}

std::string pareto_csv(const Report& r) {
  std::string out = "max_seq_len,tokens_per_s,plan\n";
  for (const Evaluation& e : r.search.pareto) {
    out += fmt::format("{},{:.1f},{}\n", e.seq_len, e.time.tokens_per_s, csv_text(describe_plan(e.plan, r.model, e.positions)));
  }
  return out;
}

std::string measured_csv(const Report& r) {
  std::string out = "seq_len,measured_bytes,predicted_bytes,error,method,origin,measured_by\n";
  for (const FidelityRow& m : r.measured) {
    out += fmt::format("{},{},{},{:.5f},{},{},{}\n", *m.measurement.setup.seq_len, m.measurement.peak_allocated_bytes,
                       m.predicted, m.error, to_string(m.measurement.method),
                       csv_text(m.measurement.origin), csv_text(m.measurement.measured_by));
  }
  return out;
}

}  // namespace mstplan::report::detail
