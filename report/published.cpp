#include "report/published.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include <fmt/format.h>

#include "planner/builder.h"
#include "planner/caching_allocator.h"
#include "planner/catalog.h"
#include "planner/spec_fields.h"
#include "planner/yaml_input.h"
#include "report/fidelity.h"

namespace mstplan::report {
namespace {

struct Unit {
  std::string_view name;
  PublishedQuantity quantity;
  double scale;
};
constexpr Unit kUnits[] = {
    {"tokens", PublishedQuantity::longest_seq_len, 1},
    {"K tokens", PublishedQuantity::longest_seq_len, 1000},
    {"Ki tokens", PublishedQuantity::longest_seq_len, 1024},
    {"bytes", PublishedQuantity::peak_memory, 1},
    {"MB", PublishedQuantity::peak_memory, 1e6},
    {"MiB", PublishedQuantity::peak_memory, 1024.0 * 1024},
    {"GB", PublishedQuantity::peak_memory, 1e9},
    {"GiB", PublishedQuantity::peak_memory, 1024.0 * 1024 * 1024},
    {"tokens/s", PublishedQuantity::tokens_per_s, 1},
};

std::string unit_names(PublishedQuantity q) {
  std::vector<std::string> names;
  for (const Unit& u : kUnits) {
    if (u.quantity == q) names.emplace_back(u.name);
  }
  return fmt::format("{}", fmt::join(names, ", "));
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// The planner's figure for one case, in tokens, bytes or tokens/s.
double predict(const PublishedCase& c) {
  const Measurement& m = *c.setup;
  const ModelSpec model = measured_model(m);
  const Plan plan = measured_plan(m, model);
  SearchOptions options;
  if (m.setup.parallel.gpus > 1) {
    // The catalog's node of the GPU (parse_published_case checked the count fits it).
    auto cluster = cluster_for_ranks(std::nullopt, m.gpu_spec, m.setup.parallel.gpus);
    MSTPLAN_CHECK(cluster.has_value(), "published case {}: {}", c.id, cluster.error().message);
    options.cluster = std::move(*cluster);
  }
  if (c.quantity == PublishedQuantity::longest_seq_len) {
    options.granularity = m.granularity > 0 ? m.granularity : 64;
    Evaluator evaluator(model, m.gpu_spec, m.setup, options);
    const std::optional<Evaluation> e = evaluator.longest(plan);
    return e ? static_cast<double>(e->seq_len) : 0.0;
  }
  Evaluator evaluator(model, m.gpu_spec, m.setup, options);
  const Evaluation e = evaluator.evaluate(plan, *m.setup.seq_len);
  if (c.quantity == PublishedQuantity::tokens_per_s) return e.time.tokens_per_s;
  std::int64_t bytes = e.analysis.peak.allocated_bytes;
  if (c.counter != MemoryCounter::allocated && m.setup.profile == Profile::pytorch) {
    // What the caching allocator holds on this device: the simulation with its usable bytes.
    const Program p = build_program(model, m.setup, plan, *m.setup.seq_len);
    CachingAllocatorOptions pool;
    pool.capacity_bytes = m.gpu_spec.usable_bytes();
    pool.expandable_segments = m.setup.expandable_segments;
    pool.overcommit = true;
    bytes = simulate_caching_allocator(p, pool).peak_reserved_bytes;
  } else if (m.setup.profile == Profile::pytorch) {
    // torch.cuda.max_memory_allocated counts whole blocks, some larger than their request.
    const Program p = build_program(model, m.setup, plan, *m.setup.seq_len);
    CachingAllocatorOptions pool;
    pool.expandable_segments = m.setup.expandable_segments;
    bytes = simulate_caching_allocator(p, pool).peak_allocated_bytes;
  }
  if (c.counter == MemoryCounter::device) bytes += m.gpu_spec.reserve_bytes;
  return static_cast<double>(bytes);
}

}  // namespace

Expected<PublishedCase> parse_published_case(const std::string& text, const std::string& origin) {
  auto node = load_yaml(text, origin, "published case");
  if (!node) return node.error();
  FieldReader r = FieldReader::root(*node, origin, "published case");
  PublishedCase c;
  c.id = std::filesystem::path(origin).stem().string();
  c.origin = origin;
  c.source = r.required_string("source");
  c.url = r.required_string("url");
  c.hardware = r.required_string("hardware");
  c.note = r.required_string("note");
  c.missing = r.optional_string("missing").value_or("");
  c.known_gap = r.optional_string("known_gap").value_or("");
  c.quantity = r.required_enum<PublishedQuantity>("quantity");
  std::optional<FieldReader> published = r.optional_map("published");
  if (!published) r.fail("published", "required: {value, unit} as the source prints it");
  std::optional<FieldReader> setup = r.optional_map("setup");
  if (r.ok() && published) {
    c.value = published->required_number("value");
    c.unit = published->required_string("unit");
    c.failed = published->optional_number("failed");
    c.derived = published->optional_string("derived").value_or("");
    c.counter = published->optional_enum<MemoryCounter>("counter").value_or(MemoryCounter::allocated);
    if (published->ok()) {
      const Unit* unit = nullptr;
      for (const Unit& u : kUnits) {
        if (u.name == c.unit && u.quantity == c.quantity) unit = &u;
      }
      if (!unit) {
        published->fail("unit", fmt::format("expected one of {} for {}, got '{}'", unit_names(c.quantity),
                                            to_string(c.quantity), c.unit));
      } else {
        c.scale = unit->scale;
      }
      if (c.failed && c.quantity != PublishedQuantity::longest_seq_len) {
        published->fail("failed", "only a longest length has a failed length");
      } else if (c.failed && *c.failed <= c.value) {
        published->fail("failed", fmt::format("{} is not above the value {}", *c.failed, c.value));
      }
    }
    if (auto error = published->finish()) return *error;
  }
  if (r.ok()) {
    if (!setup && c.missing.empty()) r.fail("setup", "required (what ran), unless `missing` says why it cannot be given");
    if (setup) {
      Measurement m;
      const std::string model = setup->required_string("model");
      m.layers = setup->optional_int("layers");
      const std::string gpu = setup->required_string("gpu");
      m.method = setup->required_enum<Method>("method");
      read_setup_fields(*setup, m.setup);
      if (c.quantity == PublishedQuantity::longest_seq_len) {
        m.granularity = setup->optional_int("granularity").value_or(64);
        if (m.setup.seq_len) setup->fail("seq_len", "a longest length has no seq_len (the published value is one)");
      } else if (!m.setup.seq_len) {
        setup->fail("seq_len", "required (the length that ran)");
      }
      if (m.method == Method::automatic) setup->fail("method", "auto has no fixed plan; give the method and knobs that ran");
      if (auto error = setup->finish()) return *error;
      auto model_spec = resolve_model(model);
      if (!model_spec) return make_error(ErrorKind::invalid, "{}: field 'setup.model': {}", origin, model_spec.error().message);
      auto gpu_spec = resolve_gpu(gpu);
      if (!gpu_spec) return make_error(ErrorKind::invalid, "{}: field 'setup.gpu': {}", origin, gpu_spec.error().message);
      m.model = model_spec->name;
      m.gpu = gpu_spec->name;
      m.model_spec = std::move(*model_spec);
      m.gpu_spec = std::move(*gpu_spec);
      m.origin = origin;
      m.measured_by = c.source;
      if (m.setup.parallel.gpus > 1) {
        auto cluster = cluster_for_ranks(std::nullopt, m.gpu_spec, m.setup.parallel.gpus);
        if (!cluster) {
          return make_error(ErrorKind::invalid, "{}: field 'setup.gpus': {}", origin, cluster.error().message);
        }
      }
      if (auto error = check_setup_for_model(m.setup, measured_model(m), origin)) return *error;
      if (c.missing.empty()) c.setup = std::move(m);
    }
  }
  if (auto error = r.finish()) return *error;
  return c;
}

Expected<PublishedCase> load_published_case(const std::string& path) { return parse_file(path, parse_published_case); }

const std::vector<PublishedCase>& builtin_published_cases() {
  static const std::vector<PublishedCase> all = [] {
    std::vector<PublishedCase> out;
    for (const EmbeddedFile& file : builtin_files()) {
      if (!file.path.starts_with("tests/data/published/") || !file.path.ends_with(".yaml")) continue;
      auto parsed = parse_published_case(std::string(file.text), std::string(file.path));
      MSTPLAN_CHECK(parsed.has_value(), "invalid built-in file: {}", parsed.error().message);
      out.push_back(std::move(*parsed));
    }
    std::sort(out.begin(), out.end(), [](const PublishedCase& a, const PublishedCase& b) { return a.id < b.id; });
    return out;
  }();
  return all;
}

std::vector<PublishedRow> predict_published(const std::vector<PublishedCase>& cases) {
  std::vector<PublishedRow> rows;
  for (const PublishedCase& c : cases) {
    if (!c.setup) continue;
    PublishedRow row{c, c.value * c.scale, predict(c), 0};
    if (c.failed && row.predicted >= row.published && row.predicted < *c.failed * c.scale) {
      row.error = 0;  // inside [ran, failed): the published runs cannot tell it apart
    } else if (c.failed && row.predicted >= *c.failed * c.scale) {
      row.error = (row.predicted - *c.failed * c.scale) / (*c.failed * c.scale);
    } else {
      row.error = (row.predicted - row.published) / row.published;
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

bool is_multi_gpu(const PublishedRow& r) { return r.c.setup && r.c.setup->setup.parallel.gpus > 1; }

PublishedSummary summarize(const std::vector<PublishedRow>& rows, std::size_t missing) {
  PublishedSummary s;
  s.missing = missing;
  std::vector<double> peaks, speeds;
  for (const PublishedRow& r : rows) {
    const double e = std::abs(r.error);
    if (!r.c.known_gap.empty()) {
      ++s.known_gaps;
      continue;
    }
    switch (r.c.quantity) {
      case PublishedQuantity::peak_memory:
        ++s.peaks;
        peaks.push_back(e);
        s.worst_abs_peak_error = std::max(s.worst_abs_peak_error, e);
        break;
      case PublishedQuantity::longest_seq_len:
        if (is_multi_gpu(r)) {
          ++s.multi_gpu_longest;
          s.worst_abs_multi_gpu_longest_error = std::max(s.worst_abs_multi_gpu_longest_error, e);
        } else {
          ++s.longest;
          s.worst_abs_longest_error = std::max(s.worst_abs_longest_error, e);
        }
        break;
      case PublishedQuantity::tokens_per_s:
        ++s.throughput;
        speeds.push_back(e);
        break;
    }
  }
  s.median_abs_peak_error = median(peaks);
  s.median_abs_tokens_per_s_error = median(speeds);
  return s;
}

std::vector<std::string> violations(const PublishedSummary& s, const std::vector<PublishedRow>& rows,
                                    const PublishedBounds& b) {
  auto worst = [&](PublishedQuantity q, bool multi_gpu = false) {
    const PublishedRow* w = nullptr;
    for (const PublishedRow& r : rows) {
      if (!r.c.known_gap.empty()) continue;
      if (q == PublishedQuantity::longest_seq_len && is_multi_gpu(r) != multi_gpu) continue;
      if (r.c.quantity == q && (!w || std::abs(r.error) > std::abs(w->error))) w = &r;
    }
    return w;
  };
  std::vector<std::string> out;
  if (s.median_abs_peak_error > b.median_peak_error) {
    out.push_back(fmt::format("median peak-memory error {:.2f}% over {} cases exceeds {:.1f}%", 100 * s.median_abs_peak_error,
                              s.peaks, 100 * b.median_peak_error));
  }
  if (s.worst_abs_peak_error > b.worst_peak_error) {
    const PublishedRow* w = worst(PublishedQuantity::peak_memory);
    out.push_back(fmt::format("worst peak-memory error {:+.2f}% exceeds {:.1f}%: {} ({})", 100 * w->error,
                              100 * b.worst_peak_error, w->c.id, w->c.origin));
  }
  if (s.worst_abs_longest_error > b.longest_error) {
    const PublishedRow* w = worst(PublishedQuantity::longest_seq_len);
    out.push_back(fmt::format("longest-sequence error {:+.2f}% exceeds {:.1f}%: {} ({})", 100 * w->error,
                              100 * b.longest_error, w->c.id, w->c.origin));
  }
  if (s.worst_abs_multi_gpu_longest_error > b.multi_gpu_longest_error) {
    const PublishedRow* w = worst(PublishedQuantity::longest_seq_len, true);
    out.push_back(fmt::format("multi-GPU longest-sequence error {:+.2f}% exceeds {:.1f}%: {} ({})", 100 * w->error,
                              100 * b.multi_gpu_longest_error, w->c.id, w->c.origin));
  }
  // A known gap that closed must lose its label, so the bound holds it again.
  for (const PublishedRow& r : rows) {
    if (r.c.known_gap.empty()) continue;
    const double bound = r.c.quantity == PublishedQuantity::peak_memory   ? b.worst_peak_error
                         : r.c.quantity == PublishedQuantity::tokens_per_s ? b.median_tokens_per_s_error
                         : is_multi_gpu(r)                                 ? b.multi_gpu_longest_error
                                                                           : b.longest_error;
    if (std::abs(r.error) <= bound) {
      out.push_back(fmt::format("{} ({}) is marked known_gap but its error {:+.2f}% is within {:.1f}%: remove the field",
                                r.c.id, r.c.origin, 100 * r.error, 100 * bound));
    }
  }
  if (s.median_abs_tokens_per_s_error > b.median_tokens_per_s_error) {
    out.push_back(fmt::format("median tokens/s error {:.2f}% over {} cases exceeds {:.1f}%",
                              100 * s.median_abs_tokens_per_s_error, s.throughput, 100 * b.median_tokens_per_s_error));
  }
  return out;
}

}  // namespace mstplan::report
