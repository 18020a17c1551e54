#pragma once
// Measured training steps (scenarios/measured/*.yaml, compiled into the binary, and files given
// with --measured): what ran and the peak it allocated, to hold predictions to.
//
// A measurement file (YAML; JSON is YAML too):
//
//   source: mst-plan run --backend cuda, scripts/gpu/on_gpu.sh   # who measured, and how (required)
//   environment: NVIDIA H100 80GB HBM3, driver 560.35, CUDA 13.0  # optional, free text
//   measurements:
//     - {model: llama3-8b, gpu: H100-80G, method: mst, seq_len: 16384, peak_allocated_bytes: 61203234816}
//
// Each measurement takes the scenario's setup fields (batch, precision, optimizer, ..., and the
// plan knobs, which refine the method's plan), plus:
//   model, gpu             catalog names or aliases (required)
//   layers                 the model cut to this many layers (optional; harnesses cut deep
//                          models so that long sequences fit)
//   method                 vanilla | recompute | mst | mst-offload (required; auto has no fixed plan)
//   seq_len                tokens per sequence (required)
//   peak_allocated_bytes   the device bytes allocated at the step's peak (required): the pool's
//                          used high-water mark, or torch.cuda.max_memory_allocated
//   peak_reserved_bytes    what the allocator held from the driver at most (optional)
//   phase_peak_allocated_bytes  {forward, loss, backward, optimizer} (optional)
//   step_seconds, loss     of the measured step (optional)
// and a `longest` list of bisections: the same fields without seq_len and the peaks, with
//   longest_seq_len        the longest multiple of `granularity` tokens whose step ran
//   granularity            the bisection's step in tokens
//
//   auto file = load_measurement_file("scenarios/measured/h100-native.yaml");
//   for (const Measurement& m : *file) fmt::print("{} {}\n", m.model, m.peak_allocated_bytes);
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "planner/error.h"
#include "planner/gpu_spec.h"
#include "planner/model_spec.h"
#include "planner/search.h"
#include "planner/setup.h"

namespace mstplan::report {

struct Measurement {
  std::string model;          ///< the model's name (a catalog name with aliases resolved, or a spec file's name)
  std::optional<std::int64_t> layers;  ///< the model cut to this many layers
  std::string gpu;            ///< the GPU's name (likewise)
  ModelSpec model_spec;       ///< as resolved when read (whole: measured_model() cuts it)
  GpuSpec gpu_spec;
  Method method = Method::vanilla;
  TrainingSetup setup;        ///< seq_len set for peaks, unset for longest-sequence bisections
  std::int64_t peak_allocated_bytes = 0;
  std::optional<std::int64_t> peak_reserved_bytes;
  std::optional<std::array<std::int64_t, kPhases>> phase_peak_bytes;  ///< allocated, per phase
  std::optional<double> step_seconds;
  std::optional<double> loss;
  std::int64_t longest_seq_len = 0;  ///< bisections only
  std::int64_t granularity = 0;      ///< bisections only
  std::string measured_by;    ///< the file's `source`
  std::string environment;    ///< the file's `environment`
  std::string origin;         ///< "file:line:column" of the entry, for messages and tables
};

/// A measurement file: peaks at given lengths, and longest lengths found by bisection.
struct MeasuredData {
  std::vector<Measurement> peaks;
  std::vector<Measurement> longest;
  MeasuredData& operator+=(const MeasuredData& other);
};

/// Parses a measurement file's text; `origin` (its path) prefixes messages and `origin` fields.
[[nodiscard]] Expected<MeasuredData> parse_measurements(const std::string& text, const std::string& origin);
[[nodiscard]] Expected<MeasuredData> load_measurement_file(const std::string& path);

/// scenarios/measured/*.yaml and *.json as compiled into the binary. An invalid built-in file
/// aborts (a bug).
[[nodiscard]] const MeasuredData& builtin_measurements();

/// The model a measurement ran: its spec, cut to `layers` when given.
[[nodiscard]] ModelSpec measured_model(const Measurement& m);

/// Whether `m` measured this model (whole, not cut) and GPU under this setup: every setup field
/// but the length and the plan knobs is the same.
[[nodiscard]] bool measures(const Measurement& m, const ModelSpec& model, const GpuSpec& gpu, const TrainingSetup& setup);

/// The plan the measurement ran: its method's plan with its knobs applied.
[[nodiscard]] Plan measured_plan(const Measurement& m, const ModelSpec& model);

}  // namespace mstplan::report
