#pragma once
// Time model: FLOPs and bytes of every op of a step program, a roofline per op on a GPU spec,
// and a two-stream schedule (compute, and a copy stream for checkpoint offload) that overlaps
// copies with compute where dependencies allow.
//
// Note [Efficiency factors]: each factor below says whether a published measurement derives it or
// it is an assumption, and what it is held to. The throughput cases of tests/data/published/ (the
// MST authors' notebook, torchtune's Llama 3.2 3B row, both on A100) are within 2% with these
// values (`mst-plan fidelity --published`); no published single-GPU case on H100 is expressible yet.
//
//   StepTime t = estimate_time(program, gpu);
//   fmt::print("{:.0f} tokens/s\n", t.tokens_per_s);
#include <array>
#include <cstdint>

#include "planner/cluster_spec.h"
#include "planner/collectives.h"
#include "planner/gpu_spec.h"
#include "planner/program.h"

namespace mstplan {

struct CostOptions {
  /// Fraction of the dense bf16 peak a large GEMM reaches with cuBLAS. 0.70, an assumption under a
  /// measured ceiling: the best-shape bf16 matmul reaches 86.9% of the peak on an A100 SXM and 80.3%
  /// on an H100 SXM (S. Bekman, ml-engineering, compute/accelerator/README.md, the "MAMF" table,
  /// commit 744d01e); a step's GEMMs are of fixed, smaller shapes and include the backward's
  /// transposed operands. Held to the A100 throughput cases above.
  double gemm_efficiency = 0.70;
  /// The smallest GEMM dimension at which efficiency is half of the above: efficiency scales as
  /// s / (s + this) with s = min(m, n, k). 256: an assumption (small-dimension GEMMs leave tensor
  /// cores idle; MST's chunks keep full speed down to about d rows).
  double gemm_half_dim = 256.0;
  /// Fraction of the dense bf16 peak the flash-attention kernels reach, forward and backward. 0.50,
  /// an assumption between published figures: FlashAttention-2 trains GPT models at up to 72% of the
  /// A100's peak end to end (Dao 2023, arXiv 2307.08691, Table 1, 225 TFLOP/s), and reaches only 35%
  /// of an H100's (Shah et al. 2024, FlashAttention-3, arXiv 2407.08608, abstract). Hopper GPU specs
  /// carry that 0.35 (GpuSpec::attention_efficiency), which replaces this default for them.
  double attention_efficiency = 0.50;
  /// Fraction of the memory bandwidth that memory-bound kernels reach. 0.80: an assumption.
  double memory_efficiency = 0.80;
  /// Fraction of the host link a pinned-memory copy reaches. 0.80: an assumption.
  double host_link_efficiency = 0.80;
  /// Fixed cost of one kernel launch, in seconds. 5 us: an assumption.
  double launch_seconds = 5e-6;
  /// Parameters DeepSpeed's CPU Adam updates per second on one node's CPUs, shared by the node's
  /// ranks (offload_optimizer). 1.41e9: an 11.6B-parameter GPT-2's optimizer step took 8.2 s
  /// (deepspeedai/DeepSpeed pull request 735, by a ZeRO-Offload author; the CPU is not named).
  double host_adam_params_per_s = 1.41e9;
  /// The collectives' link efficiency (Note [Collective time] in collectives.h).
  CollectiveOptions collectives;
};

struct StepTime {
  double step_seconds = 0;     ///< the step's wall time: compute and copies overlapped
  double compute_seconds = 0;  ///< the compute stream alone
  double copy_seconds = 0;     ///< the copy stream alone
  double comm_seconds = 0;     ///< the communication stream alone (collectives among ranks)
  /// Communication the compute stream waited for: what overlap did not hide (0 on one GPU).
  double exposed_comm_seconds = 0;
  /// batch x seq x data-parallel ranks / step (the optimizer amortised over micro-batches): all
  /// ranks together
  double tokens_per_s = 0;
  double flops = 0;            ///< work of the step, recompute included
  double model_flops = 0;      ///< work of forward + backward without recompute (6 x params x tokens + attention)
  std::array<double, kPhases> phase_seconds{};
};

/// Seconds of one execution of op `id` on `gpu` (a loop op: one iteration). A collective runs
/// over `cluster`'s links (an invariant: programs with collectives are timed with a cluster).
[[nodiscard]] double op_seconds(const Program& program, OpId id, const GpuSpec& gpu, const CostOptions& options = {},
                                const ClusterSpec* cluster = nullptr);

/// FLOPs of one execution of op `id`.
[[nodiscard]] double op_flops(const Program& program, OpId id);

/// The step's time. Note [Overlapped collectives]: a collective is a task on the communication
/// stream that starts once the compute op before it in program order has finished (what it
/// reduces is complete, or, for a weight all-gather issued a block ahead, the stream is free to
/// prefetch); a compute op reading what a collective wrote waits for it. The builder places
/// ZeRO-3's all-gathers one block ahead and the updates after a reduction one layer later (Note
/// [Sharded step]), so the overlap is what FSDP's prefetching and DeepSpeed's overlap_comm give:
/// communication slower than a layer's compute shows as exposed_comm_seconds. NCCL kernels also
/// take SMs from the compute kernels they overlap; that slowdown is not modelled.
[[nodiscard]] StepTime estimate_time(const Program& program, const GpuSpec& gpu, std::int64_t grad_accum = 1,
                                     const CostOptions& options = {}, const ClusterSpec* cluster = nullptr);

}  // namespace mstplan
