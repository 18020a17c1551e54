#pragma once
// Machine-readable forms of the planner's objects, for `--json`. Byte quantities are integers
// named *_bytes; enums use the same names as the YAML files and the flags.
//
//   nlohmann::json out;
//   out["model"] = model_json(model);   // {"name": "llama3-8b", "parameters": 8030261248, ...}
#include <nlohmann/json.hpp>

#include "planner/cluster_spec.h"
#include "planner/gpu_spec.h"
#include "planner/model_spec.h"
#include "planner/setup.h"
#include "planner/static_memory.h"

namespace mstplan {

/// Indented JSON text; invalid UTF-8 in strings (a file name, say) becomes U+FFFD instead of an
/// exception.
[[nodiscard]] std::string json_text(const nlohmann::json& value);

[[nodiscard]] nlohmann::json model_json(const ModelSpec& model);
[[nodiscard]] nlohmann::json gpu_json(const GpuSpec& gpu);
[[nodiscard]] nlohmann::json cluster_json(const ClusterSpec& cluster);
[[nodiscard]] nlohmann::json setup_json(const TrainingSetup& setup);
/// Static terms with what is left of the GPU's usable bytes, and the fixes when they do not fit.
[[nodiscard]] nlohmann::json static_memory_json(const ModelSpec& model, const GpuSpec& gpu, const TrainingSetup& setup);

}  // namespace mstplan
