#include "planner/catalog.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <optional>

#include "planner/hf_config.h"
#include "planner/yaml_input.h"

namespace mstplan {
namespace {

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

template <typename Spec, typename Parse>
std::vector<Spec> parse_builtin(std::string_view folder, Parse parse) {
  std::vector<Spec> out;
  for (const EmbeddedFile& file : builtin_files()) {
    if (!file.path.starts_with(folder)) continue;
    auto spec = parse(std::string(file.text), "builtin:" + std::string(file.path));
    MSTPLAN_CHECK(spec.has_value(), "invalid built-in file: {}", spec.error().message);
    out.push_back(std::move(*spec));
  }
  std::sort(out.begin(), out.end(), [](const Spec& a, const Spec& b) { return a.name < b.name; });
  return out;
}

// The catalog file named after `argument` ("models/" + lower-case name + ".yaml"), parsed alone:
// a process that names one model or GPU need not parse the whole catalog.
template <typename Spec, typename Parse>
std::optional<Spec> parse_named(std::string_view folder, const std::string& argument, Parse parse) {
  std::string file(folder);
  for (char c : argument) file += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  file += ".yaml";
  for (const EmbeddedFile& f : builtin_files()) {
    if (f.path != file) continue;
    auto spec = parse(std::string(f.text), "builtin:" + std::string(f.path));
    MSTPLAN_CHECK(spec.has_value(), "invalid built-in file: {}", spec.error().message);
    if (iequals(spec->name, argument)) return std::move(*spec);
  }
  return std::nullopt;
}

}  // namespace

const std::vector<ModelSpec>& builtin_models() {
  static const std::vector<ModelSpec> models = parse_builtin<ModelSpec>("models/", parse_model_yaml);
  return models;
}

const std::vector<GpuSpec>& builtin_gpus() {
  static const std::vector<GpuSpec> gpus = parse_builtin<GpuSpec>("scenarios/gpus/", parse_gpu_yaml);
  return gpus;
}

const std::vector<ClusterSpec>& builtin_clusters() {
  static const std::vector<ClusterSpec> clusters =
      parse_builtin<ClusterSpec>("scenarios/clusters/", parse_cluster_yaml);
  return clusters;
}

bool names_a_path(std::string_view argument) {
  const std::filesystem::path p{std::string(argument)};
  const std::string ext = p.extension().string();
  return argument.find('/') != std::string_view::npos || ext == ".yaml" || ext == ".yml" || ext == ".json";
}

Expected<ModelSpec> resolve_model(const std::string& argument) {
  if (argument.empty()) return make_error(ErrorKind::usage, "--model: empty model name");
  if (names_a_path(argument)) {
    std::error_code ec;
    const std::filesystem::path path(argument);
    if (path.extension() == ".json" || std::filesystem::is_directory(path, ec)) return load_hf_config(argument);
    return load_model_file(argument);
  }
  if (auto named = parse_named<ModelSpec>("models/", argument, parse_model_yaml)) return std::move(*named);
  for (const ModelSpec& m : builtin_models()) {
    if (iequals(m.name, argument)) return m;
  }
  std::string known;
  for (const ModelSpec& m : builtin_models()) known += (known.empty() ? "" : ", ") + m.name;
  return make_error(ErrorKind::not_found, "unknown model '{}' (known models: {}; or give a path to a YAML spec "
                    "or a Hugging Face config.json)", printable(argument), known);
}

namespace {

// The catalog entry whose name or an alias is `argument`, case-insensitively.
template <typename Spec>
const Spec* find_by_name(const std::vector<Spec>& specs, const std::string& argument) {
  for (const Spec& spec : specs) {
    if (iequals(spec.name, argument)) return &spec;
    for (const std::string& alias : spec.aliases) {
      if (iequals(alias, argument)) return &spec;
    }
  }
  return nullptr;
}

}  // namespace

Expected<GpuSpec> resolve_gpu(const std::string& argument) {
  if (argument.empty()) return make_error(ErrorKind::usage, "--gpu: empty GPU name");
  if (names_a_path(argument)) return load_gpu_file(argument);
  if (auto named = parse_named<GpuSpec>("scenarios/gpus/", argument, parse_gpu_yaml)) return std::move(*named);
  if (const GpuSpec* g = find_by_name(builtin_gpus(), argument)) return *g;
  std::string known;
  for (const GpuSpec& g : builtin_gpus()) known += (known.empty() ? "" : ", ") + g.name;
  return make_error(ErrorKind::not_found, "unknown GPU '{}' (known GPUs: {}; or give a path to a YAML spec)",
                    printable(argument), known);
}

Expected<ClusterSpec> resolve_cluster(const std::string& argument) {
  if (argument.empty()) return make_error(ErrorKind::usage, "empty cluster name");
  std::optional<ClusterSpec> cluster;
  if (names_a_path(argument)) {
    auto loaded = load_cluster_file(argument);
    if (!loaded) return loaded.error();
    cluster = std::move(*loaded);
  } else {
    if (const ClusterSpec* found = find_by_name(builtin_clusters(), argument)) {
      cluster = *found;
    } else {
      std::string known;
      for (const ClusterSpec& c : builtin_clusters()) known += (known.empty() ? "" : ", ") + c.name;
      return make_error(ErrorKind::not_found, "unknown cluster '{}' (known clusters: {}; or give a path to a YAML spec)",
                        printable(argument), known);
    }
  }
  // The node's GPU must be a catalog entry: its memory and speed come from there.
  if (find_by_name(builtin_gpus(), cluster->gpu) == nullptr) {
    return make_error(ErrorKind::invalid, "{}: field 'gpu': unknown GPU '{}' (mst-plan gpus lists the catalog)",
                      cluster->source, printable(cluster->gpu));
  }
  return std::move(*cluster);
}

Expected<ClusterSpec> cluster_for_ranks(const std::optional<std::string>& argument, const GpuSpec& gpu,
                                        std::int64_t ranks) {
  std::optional<ClusterSpec> cluster;
  if (argument) {
    auto resolved = resolve_cluster(*argument);
    if (!resolved) return resolved.error();
    cluster = std::move(*resolved);
    const GpuSpec* node_gpu = find_by_name(builtin_gpus(), cluster->gpu);
    if (!iequals(node_gpu->name, gpu.name)) {
      return make_error(ErrorKind::invalid, "cluster {} has {} GPUs, not {}; give --gpu {} or another cluster",
                        cluster->name, node_gpu->name, gpu.name, node_gpu->name);
    }
  } else {
    for (const ClusterSpec& c : builtin_clusters()) {
      if (iequals(find_by_name(builtin_gpus(), c.gpu)->name, gpu.name)) {
        cluster = c;
        break;
      }
    }
    if (!cluster) {
      std::string known;
      for (const ClusterSpec& c : builtin_clusters()) known += (known.empty() ? "" : ", ") + fmt::format("{} ({})", c.name, c.gpu);
      return make_error(ErrorKind::not_found,
                        "--gpus {}: no catalog cluster has {} GPUs (clusters: {}); give --cluster with a YAML spec",
                        ranks, gpu.name, known);
    }
  }
  if (ranks > cluster->gpus_per_node && ranks % cluster->gpus_per_node != 0) {
    return make_error(ErrorKind::invalid, "--gpus {}: {} has {} GPUs per node; give at most {} or a multiple of {}",
                      ranks, cluster->name, cluster->gpus_per_node, cluster->gpus_per_node, cluster->gpus_per_node);
  }
  const std::int64_t nodes = (ranks + cluster->gpus_per_node - 1) / cluster->gpus_per_node;
  if (cluster->nodes == 1) {
    cluster->nodes = nodes;  // a node type: as many nodes as the ranks need
  } else if (nodes > cluster->nodes) {
    return make_error(ErrorKind::invalid, "--gpus {}: {} has {} GPUs ({} nodes of {})", ranks, cluster->name,
                      cluster->gpus(), cluster->nodes, cluster->gpus_per_node);
  }
  return std::move(*cluster);
}

const GpuSpec* find_gpu_by_device_name(std::string_view device_name) {
  for (const GpuSpec& g : builtin_gpus()) {
    for (const std::string& name : g.device_names) {
      if (iequals(name, device_name)) return &g;
    }
  }
  return nullptr;
}

}  // namespace mstplan
