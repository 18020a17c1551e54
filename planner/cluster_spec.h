#pragma once
// Cluster specs: the machines a multi-GPU plan runs on, one node type and how many nodes.
//
// A spec comes from scenarios/clusters/*.yaml (built into the binary; names and aliases match
// case-insensitively, `mst-plan clusters` lists them) or from a custom YAML file in the same
// format (docs/specs.md). Bandwidths are per GPU and per direction, as a collective's bus
// bandwidth is counted (NCCL's busbw): the intra-node link is NVLink through NVSwitch, the
// inter-node link each GPU's own network adapter.
//
//   Expected<ClusterSpec> c = resolve_cluster("DGX-H100");
//   c->gpus() == 8;   c->link_gb_per_s(16) == c->inter_node_gb_per_s;   // two nodes: the network
#include <cstdint>
#include <string>
#include <vector>

#include "planner/error.h"

namespace mstplan {

struct ClusterSpec {
  std::string name;                  ///< catalog name, "DGX-H100"
  std::string description;           ///< "NVIDIA DGX H100: 8 x H100 SXM5 80 GB, NVLink 4, ..."
  std::vector<std::string> aliases;  ///< other names accepted
  std::string gpu;                   ///< the GPU of every node: a GPU catalog name (mst-plan gpus)
  std::int64_t gpus_per_node = 0;
  std::int64_t nodes = 1;             ///< nodes of the cluster (a catalog entry describes one)
  double intra_node_gb_per_s = 0;     ///< GPU to GPU in a node, per GPU, one direction, 1e9 bytes/s
  double inter_node_gb_per_s = 0;     ///< GPU to a GPU of another node, per GPU, one direction
  std::int64_t host_memory_bytes = 0; ///< CPU memory per node (optimizer and parameter offload)

  std::string source;  ///< where it was read from, for messages; not part of the cluster

  [[nodiscard]] std::int64_t gpus() const { return gpus_per_node * nodes; }
  /// The per-GPU bandwidth a collective over `ranks` consecutive GPUs runs at: the intra-node
  /// link while the group fits in one node, else the network (the slowest link of the ring).
  [[nodiscard]] double link_gb_per_s(std::int64_t ranks) const {
    return ranks <= gpus_per_node ? intra_node_gb_per_s : inter_node_gb_per_s;
  }
  bool operator==(const ClusterSpec&) const = default;
};

/// Reads a cluster spec from YAML text; `origin` names the file in messages. The GPU name is
/// checked by resolve_cluster() (the catalog), not here.
[[nodiscard]] Expected<ClusterSpec> parse_cluster_yaml(const std::string& text, const std::string& origin);
/// Reads a cluster spec YAML file.
[[nodiscard]] Expected<ClusterSpec> load_cluster_file(const std::string& path);
/// The spec as YAML; parse_cluster_yaml(cluster_to_yaml(c)) == c (but source).
[[nodiscard]] std::string cluster_to_yaml(const ClusterSpec& cluster);

}  // namespace mstplan
