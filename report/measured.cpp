#include "report/measured.h"

#include "planner/catalog.h"
#include "planner/spec_fields.h"
#include "planner/yaml_input.h"

namespace mstplan::report {
namespace {

// One entry of `measurements` (a peak) or of `longest` (a bisection).
Expected<Measurement> read_entry(FieldReader& e, const std::string& where, bool bisection) {
  Measurement m;
  const std::string model = e.required_string("model");
  m.layers = e.optional_int("layers");
  const std::string gpu = e.required_string("gpu");
  m.method = e.required_enum<Method>("method");
  read_setup_fields(e, m.setup);
  if (bisection) {
    m.longest_seq_len = e.required_int("longest_seq_len");
    m.granularity = e.required_int("granularity");
  } else {
    m.peak_allocated_bytes = e.required_int("peak_allocated_bytes");
    m.peak_reserved_bytes = e.optional_int("peak_reserved_bytes");
    if (auto phases = e.optional_map("phase_peak_allocated_bytes")) {
      std::array<std::int64_t, kPhases> bytes{};
      for (std::size_t p = 0; p < kPhases; ++p) {
        bytes[p] = phases->required_int(to_string(static_cast<Phase>(p)), IntRange::non_negative());
      }
      if (auto error = phases->finish()) return *error;
      m.phase_peak_bytes = bytes;
    }
    m.step_seconds = e.optional_number("step_seconds");
    m.loss = e.optional_number("loss");
  }
  if (auto error = e.finish()) return *error;
  if (m.method == Method::automatic) {
    return make_error(ErrorKind::invalid, "{}: field 'method': expected vanilla, recompute, mst or mst-offload, got "
                                          "'auto' (auto has no fixed plan; give the method and knobs that ran)",
                      where);
  }
  if (bisection && m.setup.seq_len) {
    return make_error(ErrorKind::invalid, "{}: field 'seq_len': a bisection has no seq_len (longest_seq_len says what fit)",
                      where);
  }
  if (!bisection && !m.setup.seq_len) {
    return make_error(ErrorKind::invalid, "{}: field 'seq_len': required (the measured length)", where);
  }
  if (m.peak_reserved_bytes && *m.peak_reserved_bytes < m.peak_allocated_bytes) {
    return make_error(ErrorKind::invalid, "{}: field 'peak_reserved_bytes': {} is below peak_allocated_bytes {}", where,
                      *m.peak_reserved_bytes, m.peak_allocated_bytes);
  }
  // Names resolve now, so that a typo is an error here and not a silent mismatch later.
  auto model_spec = resolve_model(model);
  if (!model_spec) return make_error(ErrorKind::invalid, "{}: field 'model': {}", where, model_spec.error().message);
  auto gpu_spec = resolve_gpu(gpu);
  if (!gpu_spec) return make_error(ErrorKind::invalid, "{}: field 'gpu': {}", where, gpu_spec.error().message);
  if (m.layers && *m.layers > model_spec->num_layers) {
    return make_error(ErrorKind::invalid, "{}: field 'layers': {} is more than {}'s {} layers", where, *m.layers,
                      model_spec->name, model_spec->num_layers);
  }
  m.model = model_spec->name;
  m.gpu = gpu_spec->name;
  m.model_spec = std::move(*model_spec);
  m.gpu_spec = std::move(*gpu_spec);
  if (auto error = check_one_gpu(m.setup, where, "measurement files")) return *error;
  if (auto error = check_setup_for_model(m.setup, measured_model(m), where)) return *error;
  return m;
}

}  // namespace

MeasuredData& MeasuredData::operator+=(const MeasuredData& other) {
  peaks.insert(peaks.end(), other.peaks.begin(), other.peaks.end());
  longest.insert(longest.end(), other.longest.begin(), other.longest.end());
  return *this;
}

Expected<MeasuredData> parse_measurements(const std::string& text, const std::string& origin) {
  auto node = load_yaml(text, origin, "measurement file");
  if (!node) return node.error();
  FieldReader r = FieldReader::root(*node, origin, "measurement file");
  const std::string measured_by = r.required_string("source");
  const std::string environment = r.optional_string("environment").value_or("");
  std::vector<YAML::Mark> peak_marks, longest_marks;
  std::vector<FieldReader> peaks = r.optional_map_list("measurements", &peak_marks);
  std::vector<FieldReader> longest = r.optional_map_list("longest", &longest_marks);
  if (auto error = r.finish()) return *error;
  if (peaks.empty() && longest.empty()) {
    return make_error(ErrorKind::invalid, "{}: field 'measurements': expected a non-empty list of measurements (or of "
                                          "'longest' bisections)",
                      origin);
  }
  MeasuredData out;
  for (bool bisection : {false, true}) {
    std::vector<FieldReader>& entries = bisection ? longest : peaks;
    const std::vector<YAML::Mark>& marks = bisection ? longest_marks : peak_marks;
    for (std::size_t i = 0; i < entries.size(); ++i) {
      const std::string location = yaml_location(origin, marks[i]);
      auto m = read_entry(entries[i], fmt::format("{}: {}[{}]", location, bisection ? "longest" : "measurements", i),
                          bisection);
      if (!m) return m.error();
      m->origin = location;
      m->measured_by = measured_by;
      m->environment = environment;
      (bisection ? out.longest : out.peaks).push_back(std::move(*m));
    }
  }
  return out;
}

Expected<MeasuredData> load_measurement_file(const std::string& path) { return parse_file(path, parse_measurements); }

const MeasuredData& builtin_measurements() {
  static const MeasuredData all = [] {
    MeasuredData out;
    for (const EmbeddedFile& file : builtin_files()) {
      if (!file.path.starts_with("scenarios/measured/")) continue;
      auto parsed = parse_measurements(std::string(file.text), std::string(file.path));
      MSTPLAN_CHECK(parsed.has_value(), "invalid built-in file: {}", parsed.error().message);
      out += *parsed;
    }
    return out;
  }();
  return all;
}

ModelSpec measured_model(const Measurement& m) {
  ModelSpec spec = m.model_spec;
  if (m.layers) spec.num_layers = *m.layers;
  return spec;
}

bool measures(const Measurement& m, const ModelSpec& model, const GpuSpec& gpu, const TrainingSetup& setup) {
  const TrainingSetup& s = m.setup;
  return m.model == model.name && (!m.layers || *m.layers == model.num_layers) && m.gpu == gpu.name &&
         s.seq_len.has_value() && s.batch == setup.batch && s.precision == setup.precision &&
         s.optimizer == setup.optimizer && s.optimizer_in_backward == setup.optimizer_in_backward &&
         s.grad_accum == setup.grad_accum && s.attention == setup.attention && s.profile == setup.profile;
}

Plan measured_plan(const Measurement& m, const ModelSpec& model) {
  return apply_knobs(method_plan(m.method, model), m.setup.knobs);
}

}  // namespace mstplan::report
