#include "planner/cost_model.h"

#include <algorithm>
#include <cmath>

#include "planner/critical_path.h"

namespace mstplan {
namespace {

// Bytes an op moves through device memory, one execution: its tensors once each (per-chunk
// instances for arrays; a full tensor read by a chunk op is counted in proportion to a chunk).
double op_bytes(const Program& p, const Op& op) {
  if (op.kind == OpKind::matmul) {
    const double out = p.outputs(op).empty() ? 2.0 : static_cast<double>(dtype_bytes(p.tensors[p.outputs(op)[0]].dtype));
    const double heads = std::max(op.flops_multiplier, 1.0);
    return heads * (2.0 * static_cast<double>(op.m * op.k + op.k * op.n) + out * static_cast<double>(op.m * op.n));
  }
  double share = 1.0;
  if (op.loop != kNone) {
    const Loop& loop = p.loops[static_cast<std::size_t>(op.loop)];
    share = static_cast<double>(loop.rows) / static_cast<double>(std::max<std::int64_t>(p.local_seq_len(), 1));
  }
  double bytes = 0;
  auto count = [&](TensorId t) {
    const Tensor& tensor = p.tensors[t];
    const bool whole = tensor.loop == kNone && op.loop != kNone && tensor.kind != TensorKind::weight;
    bytes += static_cast<double>(tensor.bytes) * (whole ? share : 1.0);
  };
  for (TensorId t : p.inputs(op)) count(t);
  for (TensorId t : p.outputs(op)) count(t);
  return bytes;
}

// Keys each query attends to, on average: causal, possibly within a sliding window.
double mean_keys(std::int64_t queries, std::int64_t window) {
  const auto s = static_cast<double>(queries);
  if (window > 0 && window < queries) {
    const auto w = static_cast<double>(window);
    return (s * w - w * w / 2.0) / s;
  }
  return (s + 1.0) / 2.0;
}

}  // namespace

double op_flops(const Program& p, OpId id) {
  const Op& op = p.ops[id];
  switch (op.kind) {
    case OpKind::matmul:
      return 2.0 * static_cast<double>(op.m) * static_cast<double>(op.n) * static_cast<double>(op.k) *
             std::max(op.flops_multiplier, 1.0);
    case OpKind::attention:
    case OpKind::attention_grad: {
      // Forward: QK^T and PV, 2 x 2 x keys x head_dim per query and head. Backward: 2.5 times
      // that (FlashAttention-2 recomputes P and runs four more GEMM-like passes).
      // Each of the n queries sees keys of k (the same with one rank per sequence; with context
      // parallelism the balanced share of the whole sequence's causal keys).
      const double forward = 4.0 * static_cast<double>(op.m) * static_cast<double>(op.n) * mean_keys(op.k, op.window) *
                             static_cast<double>(op.head_dim);
      return op.kind == OpKind::attention ? forward : 2.5 * forward;
    }
    default: return 0.0;
  }
}

static Collective collective_of(OpCode code) {
  switch (code) {
    case OpCode::all_gather: return Collective::all_gather;
    case OpCode::reduce_scatter: return Collective::reduce_scatter;
    case OpCode::all_reduce: return Collective::all_reduce;
    case OpCode::all_to_all: return Collective::all_to_all;
    default: break;
  }
  MSTPLAN_CHECK(false, "op code {} is not a collective", static_cast<int>(code));
  return Collective::all_reduce;
}

double op_seconds(const Program& p, OpId id, const GpuSpec& gpu, const CostOptions& o, const ClusterSpec* cluster) {
  const Op& op = p.ops[id];
  if (op.kind == OpKind::begin || op.kind == OpKind::end) return 0.0;
  if (op.kind == OpKind::collective) {
    MSTPLAN_CHECK(cluster != nullptr, "collective {} timed without a cluster", op_name(p, id));
    return collective_time(collective_of(op.code), op.n, op.m, *cluster, o.collectives).seconds + o.launch_seconds;
  }
  if (op.kind == OpKind::optimizer && op.inputs > 0 && p.tensors[p.inputs(op)[0]].device == Device::host) {
    // CPU Adam (Note [Offloaded optimizer]): the node's rate, shared by the ranks on it.
    const std::int64_t ranks = p.data_parallel_ranks * p.sequence_parallel;
    const std::int64_t on_node = cluster != nullptr ? std::min(ranks, cluster->gpus_per_node) : 1;
    return static_cast<double>(op.m) * static_cast<double>(on_node) / o.host_adam_params_per_s + o.launch_seconds;
  }
  const double bandwidth = gpu.memory_bandwidth_gb_per_s * 1e9 * o.memory_efficiency;
  const double bytes = op_bytes(p, op);
  if (op.kind == OpKind::copy_to_host || op.kind == OpKind::copy_to_device) {
    return bytes / (gpu.host_link_gb_per_s * 1e9 * o.host_link_efficiency) + o.launch_seconds;
  }
  // fp32 inputs (precision fp32) run at the fp32 peak: TF32 tensor cores are not assumed, since
  // they change the arithmetic the fp32 setup exists to keep.
  const bool fp32_inputs = op.inputs > 0 && p.tensors[p.inputs(op)[0]].dtype == DType::fp32;
  const double peak = (fp32_inputs ? gpu.fp32_tflops : gpu.bf16_tflops) * 1e12;
  double compute = 0.0;
  if (op.kind == OpKind::matmul) {
    const double smallest = static_cast<double>(std::min({op.m, op.n, op.k}));
    const double efficiency = o.gemm_efficiency * smallest / (smallest + o.gemm_half_dim);
    compute = op_flops(p, id) / (peak * efficiency);
  } else if (op.kind == OpKind::attention || op.kind == OpKind::attention_grad) {
    const double efficiency = gpu.attention_efficiency > 0 ? gpu.attention_efficiency : o.attention_efficiency;
    compute = op_flops(p, id) / (peak * efficiency);
  }
  return std::max(compute, bytes / bandwidth) + o.launch_seconds;
}

StepTime estimate_time(const Program& p, const GpuSpec& gpu, std::int64_t grad_accum, const CostOptions& o,
                       const ClusterSpec* cluster) {
  StepTime t;
  // The schedule as a DAG (critical_path.h): every op a task on the compute stream or, for
  // checkpoint copies, the copy stream, or for collectives the communication stream. A copy or
  // collective starts once the compute op before it (in program order) has finished; a compute
  // op reading a tensor a copy or collective wrote waits for it (Note [Overlapped collectives]).
  thread_local StreamSchedule schedule;
  thread_local std::vector<std::int64_t> copied_by;  // per tensor: the side-stream task writing it, or -1
  thread_local std::vector<TensorId> copied;         // the tensors with an entry there, to reset
  thread_local std::vector<std::uint32_t> after;
  schedule.clear();
  if (copied_by.size() < p.tensors.size()) copied_by.resize(p.tensors.size(), -1);
  std::int64_t last_compute = -1;
  double forward_flops = 0.0;
  thread_local std::vector<char> comm_written;  // per tensor: its side-stream writer is a collective
  if (comm_written.size() < p.tensors.size()) comm_written.resize(p.tensors.size(), 0);
  auto compute_task = [&](OpId j, double seconds, double flops, std::span<const std::uint32_t> waits) {
    last_compute = schedule.add(Stream::compute, seconds, waits);
    t.phase_seconds[static_cast<std::size_t>(p.ops[j].phase)] += seconds;
    t.flops += flops;
    if (p.ops[j].pass == Pass::forward) forward_flops += flops;
  };
  OpId i = 0;
  while (i < p.ops.size()) {
    const Op& op = p.ops[i];
    if (op.loop != kNone) {
      const Loop& loop = p.loops[static_cast<std::size_t>(op.loop)];
      const auto n = static_cast<double>(loop.iterations);
      for (OpId j = loop.first_op; j < loop.end_op; ++j) compute_task(j, n * op_seconds(p, j, gpu, o), n * op_flops(p, j), {});
      i = loop.end_op;
      continue;
    }
    const double seconds = op_seconds(p, i, gpu, o, cluster);
    after.clear();
    const bool copy = op.kind == OpKind::copy_to_host || op.kind == OpKind::copy_to_device;
    if (copy || op.kind == OpKind::collective) {
      if (last_compute >= 0) after.push_back(static_cast<std::uint32_t>(last_compute));
      const std::uint32_t task = schedule.add(copy ? Stream::copy : Stream::comm, seconds, after);
      for (TensorId out : p.outputs(op)) {
        copied_by[out] = task;
        comm_written[out] = copy ? 0 : 1;
        copied.push_back(out);
      }
      (copy ? t.copy_seconds : t.comm_seconds) += seconds;
    } else {
      // The op could start at `ready` but for the collectives it reads: the difference is
      // communication the overlap did not hide.
      double ready = schedule.stream_end(Stream::compute), comm_ready = 0.0;
      if (!copied.empty()) {  // until a first copy, no input can wait for one
        for (TensorId in : p.inputs(op)) {
          if (copied_by[in] < 0) continue;
          const auto task = static_cast<std::uint32_t>(copied_by[in]);
          after.push_back(task);
          double& bound = comm_written[in] != 0 ? comm_ready : ready;
          bound = std::max(bound, schedule.finish_seconds(task));
        }
      }
      t.exposed_comm_seconds += std::max(0.0, comm_ready - ready);
      compute_task(i, seconds, op_flops(p, i), after);
    }
    ++i;
  }
  for (TensorId c : copied) {
    copied_by[c] = -1;
    comm_written[c] = 0;
  }
  copied.clear();
  t.compute_seconds = schedule.stream_end(Stream::compute);  // including waits for prefetches
  t.step_seconds = schedule.seconds();
  t.model_flops = 3.0 * forward_flops;
  const double optimizer = t.phase_seconds[static_cast<std::size_t>(Phase::optimizer)];
  const double amortised =
      t.step_seconds - optimizer * (1.0 - 1.0 / static_cast<double>(std::max<std::int64_t>(grad_accum, 1)));
  const double tokens = static_cast<double>(p.batch * p.seq_len) * static_cast<double>(p.data_parallel_ranks);
  t.tokens_per_s = amortised > 0 ? tokens / amortised : 0.0;
  return t;
}

}  // namespace mstplan
