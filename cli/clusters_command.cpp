// mst-plan clusters [NAME|PATH]: the cluster catalog, or one spec as YAML or JSON.
#include "cli/command.h"

#include <fmt/ostream.h>
#include "planner/catalog.h"
#include "planner/json_output.h"
#include "planner/units.h"

namespace mstplan::cli {

std::optional<Failure> run_clusters(const std::string& which, bool json, std::ostream& out) {
  if (!which.empty()) {
    auto cluster = resolve_cluster(which);
    if (!cluster) return Failure{exit_code_of(cluster.error()), cluster.error().message};
    if (json) {
      out << json_text(cluster_json(*cluster)) << '\n';
    } else {
      fmt::print(out, "# read from {}\n{}", cluster->source, cluster_to_yaml(*cluster));
    }
    return std::nullopt;
  }
  if (json) {
    nlohmann::json list = nlohmann::json::array();
    for (const ClusterSpec& c : builtin_clusters()) list.push_back(cluster_json(c));
    out << json_text(list) << '\n';
    return std::nullopt;
  }
  // Links per GPU and per direction; host memory per node.
  fmt::print(out, "{:<14} {:<9} {:>8} {:>12} {:>12} {:>9}  {}\n", "cluster", "gpu", "per node", "NVLink GB/s",
             "network GB/s", "host GiB", "description");
  for (const ClusterSpec& c : builtin_clusters()) {
    fmt::print(out, "{:<14} {:<9} {:>8} {:>12} {:>12} {:>9}  {}\n", c.name, c.gpu, c.gpus_per_node,
               c.intra_node_gb_per_s, c.inter_node_gb_per_s, format_gib(c.host_memory_bytes), c.description);
  }
  return std::nullopt;
}

}  // namespace mstplan::cli
