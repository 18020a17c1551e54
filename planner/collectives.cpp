#include "planner/collectives.h"

#include <algorithm>

#include "planner/error.h"

namespace mstplan {

CollectiveTime collective_time(Collective op, std::int64_t bytes, std::int64_t ranks, const ClusterSpec& cluster,
                               const CollectiveOptions& options) {
  MSTPLAN_CHECK(ranks >= 1 && ranks <= cluster.gpus(), "{} ranks on {} GPUs", ranks, cluster.gpus());
  MSTPLAN_CHECK(bytes >= 0 && options.bus_efficiency > 0 && options.bus_efficiency <= 1, "{} bytes at efficiency {}",
                bytes, options.bus_efficiency);
  CollectiveTime t;
  t.ranks_per_node = std::min(ranks, cluster.gpus_per_node);
  t.nodes = (ranks + t.ranks_per_node - 1) / t.ranks_per_node;
  if (ranks == 1 || bytes == 0) return t;
  const double b = static_cast<double>(bytes);
  const double r = static_cast<double>(t.ranks_per_node);
  const double k = static_cast<double>(t.nodes);
  const double n = static_cast<double>(ranks);
  switch (op) {
    case Collective::all_reduce:
      t.nvlink_bytes = 2 * (r - 1) / r * b;
      t.network_bytes = 2 * (k - 1) / k * b / r;
      break;
    case Collective::all_gather:
    case Collective::reduce_scatter:
      t.nvlink_bytes = (r - 1) / r * b;
      t.network_bytes = (k - 1) / k * b / r;
      break;
    case Collective::all_to_all:
      t.nvlink_bytes = (r - 1) / n * b;
      t.network_bytes = (n - r) / n * b;
      break;
    case Collective::send_recv:
      (t.nodes > 1 ? t.network_bytes : t.nvlink_bytes) = b;
      break;
  }
  const double nvlink_s = t.nvlink_bytes / (cluster.intra_node_gb_per_s * 1e9);
  const double network_s = t.network_bytes / (cluster.inter_node_gb_per_s * 1e9);
  t.seconds = std::max(nvlink_s, network_s) / options.bus_efficiency;
  return t;
}

}  // namespace mstplan
