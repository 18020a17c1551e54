#pragma once
// The built-in catalog (models/*.yaml, scenarios/gpus/*.yaml, scenarios/clusters/*.yaml, compiled
// into the binary) and the resolution of model, GPU and cluster arguments.
//
// A --model argument is a catalog name (case-insensitive), a path to a YAML spec, or a path to
// a Hugging Face config.json (or the folder holding it). A --gpu argument is a catalog name or
// alias (case-insensitive) or a path to a YAML spec; so is a cluster argument. An argument is a
// path when it contains a '/' or ends in .yaml, .yml or .json.
//
//   Expected<ModelSpec> model = resolve_model("llama3-8b");
//   Expected<GpuSpec> gpu = resolve_gpu("a100-80g");
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "planner/cluster_spec.h"
#include "planner/error.h"
#include "planner/gpu_spec.h"
#include "planner/model_spec.h"

namespace mstplan {

struct EmbeddedFile {
  std::string_view path;  ///< relative to the source tree: "models/llama3-8b.yaml"
  std::string_view text;
};

/// Every file compiled into the binary (generated at build time).
[[nodiscard]] std::span<const EmbeddedFile> builtin_files();

/// The built-in models, sorted by name. Parsed once; an invalid built-in file is a bug and aborts.
[[nodiscard]] const std::vector<ModelSpec>& builtin_models();
/// The built-in GPUs, in catalog order (sorted by name).
[[nodiscard]] const std::vector<GpuSpec>& builtin_gpus();

/// The built-in clusters (one node each), sorted by name.
[[nodiscard]] const std::vector<ClusterSpec>& builtin_clusters();

/// True when an argument names a file rather than a catalog entry.
[[nodiscard]] bool names_a_path(std::string_view argument);

[[nodiscard]] Expected<ModelSpec> resolve_model(const std::string& argument);
[[nodiscard]] Expected<GpuSpec> resolve_gpu(const std::string& argument);
/// A cluster, its `gpu` checked against the GPU catalog (an unknown one is refused naming the
/// file, the field and the value).
[[nodiscard]] Expected<ClusterSpec> resolve_cluster(const std::string& argument);

/// The cluster `ranks` data-parallel GPUs of `gpu` run on: `argument` (a name or file; its node
/// GPU must be `gpu`), or the first catalog cluster whose node has `gpu`. A one-node spec (every
/// catalog entry) is a node type: the result has ceil(ranks / gpus_per_node) nodes; a spec with
/// more nodes bounds the ranks. Ranks beyond one node fill whole nodes.
[[nodiscard]] Expected<ClusterSpec> cluster_for_ranks(const std::optional<std::string>& argument, const GpuSpec& gpu,
                                                      std::int64_t ranks);

/// The catalog GPU whose device_names contain `device_name` (as CUDA reports it), if any.
[[nodiscard]] const GpuSpec* find_gpu_by_device_name(std::string_view device_name);

}  // namespace mstplan
