// mst-plan clusters [NAME|PATH]: the cluster catalog, or one spec as YAML or JSON.
#include "cli/command.h"

#include <fmt/ostream.h>
#include "planner/catalog.h"
#include "planner/collectives.h"
#include "planner/json_output.h"
#include "planner/units.h"

namespace mstplan::cli {
namespace {

// What the collective model (planner/collectives.h) makes of the cluster's links: 1 GiB moved
// by each collective over one node, and over 2 and 4 nodes of this type.
void print_collective_times(const ClusterSpec& cluster, std::ostream& out) {
  constexpr std::int64_t kBytes = std::int64_t{1} << 30;
  const CollectiveOptions options;
  fmt::print(out, "# Collective times for 1 GiB (as nccl-tests sizes it) at {:.0f}% of the links (planner/collectives.h):\n",
             100 * options.bus_efficiency);
  fmt::print(out, "# {:>6} {:>6} {:>12} {:>15} {:>12} {:>12}\n", "GPUs", "nodes", "all-gather", "reduce-scatter",
             "all-reduce", "all-to-all");
  for (const std::int64_t nodes : {std::int64_t{1}, std::int64_t{2}, std::int64_t{4}}) {
    ClusterSpec scaled = cluster;
    scaled.nodes = nodes;
    const std::int64_t ranks = scaled.gpus();
    const auto ms = [&](Collective op) {
      return fmt::format("{:.2f} ms", 1e3 * collective_time(op, kBytes, ranks, scaled, options).seconds);
    };
    fmt::print(out, "# {:>6} {:>6} {:>12} {:>15} {:>12} {:>12}\n", ranks, nodes, ms(Collective::all_gather),
               ms(Collective::reduce_scatter), ms(Collective::all_reduce), ms(Collective::all_to_all));
  }
}

}  // namespace

std::optional<Failure> run_clusters(const std::string& which, bool json, std::ostream& out) {
  if (!which.empty()) {
    auto cluster = resolve_cluster(which);
    if (!cluster) return Failure{exit_code_of(cluster.error()), cluster.error().message};
    if (json) {
      out << json_text(cluster_json(*cluster)) << '\n';
    } else {
      fmt::print(out, "# read from {}\n{}", cluster->source, cluster_to_yaml(*cluster));
      print_collective_times(*cluster, out);
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
