#include "report/measured.h"

#include "planner/catalog.h"
#include "planner/spec_fields.h"
#include "planner/yaml_input.h"

namespace mstplan::report {

Expected<std::vector<Measurement>> parse_measurements(const std::string& text, const std::string& origin) {
  auto node = load_yaml(text, origin, "measurement file");
  if (!node) return node.error();
  FieldReader r = FieldReader::root(*node, origin, "measurement file");
  const std::string measured_by = r.required_string("source");
  const std::string environment = r.optional_string("environment").value_or("");
  std::vector<YAML::Mark> marks;
  std::vector<FieldReader> entries = r.optional_map_list("measurements", &marks);
  if (auto error = r.finish()) return *error;
  if (entries.empty()) {
    return make_error(ErrorKind::invalid, "{}: field 'measurements': expected a non-empty list of measurements", origin);
  }
  std::vector<Measurement> out;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    FieldReader& e = entries[i];
    Measurement m;
    m.origin = yaml_location(origin, marks[i]);
    m.measured_by = measured_by;
    m.environment = environment;
    const std::string model = e.required_string("model");
    const std::string gpu = e.required_string("gpu");
    m.method = e.required_enum<Method>("method");
    read_setup_fields(e, m.setup);
    m.peak_allocated_bytes = e.required_int("peak_allocated_bytes");
    m.peak_reserved_bytes = e.optional_int("peak_reserved_bytes");
    m.step_seconds = e.optional_number("step_seconds");
    if (auto error = e.finish()) return *error;
    const std::string where = fmt::format("{}: measurements[{}]", m.origin, i);
    if (m.method == Method::automatic) {
      return make_error(ErrorKind::invalid, "{}: field 'method': expected vanilla, recompute, mst or mst-offload, got "
                                            "'auto' (auto has no fixed plan; give the method and knobs that ran)",
                        where);
    }
    if (!m.setup.seq_len) return make_error(ErrorKind::invalid, "{}: field 'seq_len': required (the measured length)", where);
    if (m.peak_reserved_bytes && *m.peak_reserved_bytes < m.peak_allocated_bytes) {
      return make_error(ErrorKind::invalid, "{}: field 'peak_reserved_bytes': {} is below peak_allocated_bytes {}", where,
                        *m.peak_reserved_bytes, m.peak_allocated_bytes);
    }
    // Names resolve now, so that a typo is an error here and not a silent mismatch later.
    auto model_spec = resolve_model(model);
    if (!model_spec) return make_error(ErrorKind::invalid, "{}: field 'model': {}", where, model_spec.error().message);
    auto gpu_spec = resolve_gpu(gpu);
    if (!gpu_spec) return make_error(ErrorKind::invalid, "{}: field 'gpu': {}", where, gpu_spec.error().message);
    if (auto error = check_setup_for_model(m.setup, *model_spec, where)) return *error;
    m.model = model_spec->name;
    m.gpu = gpu_spec->name;
    out.push_back(std::move(m));
  }
  return out;
}

Expected<std::vector<Measurement>> load_measurement_file(const std::string& path) {
  return parse_file(path, parse_measurements);
}

const std::vector<Measurement>& builtin_measurements() {
  static const std::vector<Measurement> all = [] {
    std::vector<Measurement> out;
    for (const EmbeddedFile& file : builtin_files()) {
      if (!file.path.starts_with("scenarios/measured/")) continue;
      auto parsed = parse_measurements(std::string(file.text), std::string(file.path));
      MSTPLAN_CHECK(parsed.has_value(), "invalid built-in file: {}", parsed.error().message);
      out.insert(out.end(), parsed->begin(), parsed->end());
    }
    return out;
  }();
  return all;
}

bool measures(const Measurement& m, const ModelSpec& model, const GpuSpec& gpu, const TrainingSetup& setup) {
  const TrainingSetup& s = m.setup;
  return m.model == model.name && m.gpu == gpu.name && s.batch == setup.batch && s.precision == setup.precision &&
         s.optimizer == setup.optimizer && s.optimizer_in_backward == setup.optimizer_in_backward &&
         s.grad_accum == setup.grad_accum && s.attention == setup.attention && s.profile == setup.profile;
}

Plan measured_plan(const Measurement& m, const ModelSpec& model) {
  return apply_knobs(method_plan(m.method, model), m.setup.knobs);
}

}  // namespace mstplan::report
