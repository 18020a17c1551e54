#pragma once
// Time of one collective over a group of GPUs of a cluster: the communication model the
// multi-GPU layouts (ZeRO all-gathers and reduce-scatters, Ulysses all-to-alls, ring attention's
// send/recv) are costed with.
//
// Note [Collective time]
// ----------------------
// A group of n ranks is taken as consecutive GPUs: r = min(n, gpus_per_node) per node on
// k = ceil(n / r) nodes. A collective moves, per GPU, bytes over NVLink (inside a node) and
// bytes over the GPU's own network adapter (between nodes), B being the size nccl-tests
// reports (all-reduce: the buffer; all-gather: the gathered output; reduce-scatter: the full
// input; all-to-all: one rank's send buffer; send/recv: the message):
//
//   collective       NVLink bytes per GPU      network bytes per GPU
//   all-reduce       2 (r-1)/r B               2 (k-1)/k B/r     (reduce-scatter in the node, all-
//                                                                 reduce of the shards across nodes
//                                                                 on each GPU's rail, all-gather)
//   all-gather,      (r-1)/r B                 (k-1)/k B/r
//   reduce-scatter
//   all-to-all       (r-1)/n B                 (n-r)/n B
//   send/recv        B (k = 1)                 B (k > 1: the ring's slowest hop crosses nodes)
//
// NCCL pipelines the two phases over its channels, so the time is the slower phase, at the
// links' bandwidth times `bus_efficiency`. Inside one node the all-reduce's bus bandwidth is then
// the NVLink bandwidth, as nccl-tests defines busbw (algbw x 2(n-1)/n; NVIDIA/nccl-tests,
// doc/PERFORMANCE.md). Latency is not modelled: the model is for bandwidth-bound messages (the
// per-layer collectives of 7B and larger models are hundreds of MiB); below about 256 MiB across
// nodes it is optimistic (below).
//
// Held to published nccl-tests runs (tests/unit/collectives_test.cpp):
//   all_reduce_perf, 16 x H100 on 2 GCP A3 Mega nodes (NVLink 4: 450 GB/s; 8 x 200 Gb/s NICs:
//   25 GB/s per GPU), out of place (lessizzmore/create-a3mega-ztan-fork, ztan-NCCL-test-result,
//   commit 02dd8f4): 8 GiB 47.5 ms measured, 47.7 ms modelled (the point bus_efficiency is derived
//   from); 1 GiB 6.76 ms against 5.97 (the model 12% short); 256 MiB 2.36 ms against 1.49 (37% short).
//   sendrecv_perf, 8 x A100 SXM in one node (NVLink 3: 300 GB/s), 1 GiB (li-plus/playground,
//   cuda/nccl.md): 5.50 ms (195 GB/s) measured, 3.98 ms (270 GB/s) modelled (28% short: point-to-
//   point NVLink copies reach less of the link than the collectives' rings).
//
//   CollectiveTime t = collective_time(Collective::all_gather, 1 << 30, 8, cluster);
//   t.seconds;  t.network_bytes == 0;   // one node: NVLink only
#include <cstdint>

#include "planner/cluster_spec.h"
#include "planner/enum_names.h"

namespace mstplan {

enum class Collective : std::uint8_t { all_gather, reduce_scatter, all_reduce, all_to_all, send_recv };

template <>
struct EnumNames<Collective> {
  static constexpr std::array<std::pair<Collective, std::string_view>, 5> table{
      {{Collective::all_gather, "all-gather"},
       {Collective::reduce_scatter, "reduce-scatter"},
       {Collective::all_reduce, "all-reduce"},
       {Collective::all_to_all, "all-to-all"},
       {Collective::send_recv, "send-recv"}}};
};

struct CollectiveOptions {
  /// Fraction of the links' bandwidth a large collective reaches. 0.90, derived from the 8 GiB
  /// all-reduce over 16 H100 of the Note above (42.9 ms at the full links, 47.5 ms measured).
  double bus_efficiency = 0.90;
};

struct CollectiveTime {
  double seconds = 0;
  double nvlink_bytes = 0;   ///< bytes each GPU sends over NVLink
  double network_bytes = 0;  ///< bytes each GPU sends over its network adapter
  std::int64_t ranks_per_node = 0;
  std::int64_t nodes = 0;
};

/// The time of `op` on `bytes` (the Note's B) over `ranks` consecutive GPUs of `cluster`; one
/// rank, or no bytes, take no time. Aborts when the group is larger than the cluster.
[[nodiscard]] CollectiveTime collective_time(Collective op, std::int64_t bytes, std::int64_t ranks,
                                             const ClusterSpec& cluster, const CollectiveOptions& options = {});

}  // namespace mstplan
