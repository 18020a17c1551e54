#pragma once
// Time model: FLOPs and bytes of every op of a step program, a roofline per op on a GPU spec,
// and a two-stream schedule (compute, and a copy stream for checkpoint offload) that overlaps
// copies with compute where dependencies allow.
//
// Every efficiency factor below is a documented guess until measured data replaces it (the CUDA
// backend and the PyTorch harness will measure them; scenarios/measured/).
//
//   StepTime t = estimate_time(program, gpu);
//   fmt::print("{:.0f} tokens/s\n", t.tokens_per_s);
#include <array>
#include <cstdint>

#include "planner/gpu_spec.h"
#include "planner/program.h"

namespace mstplan {

struct CostOptions {
  /// Fraction of the dense bf16 peak a large GEMM reaches with cuBLAS. 0.70: typical of large
  /// bf16 GEMMs on A100 and H100 (NVIDIA's matmul performance guide shows 70-80% for large,
  /// well-aligned shapes). A guess until measured.
  double gemm_efficiency = 0.70;
  /// The smallest GEMM dimension at which efficiency is half of the above: efficiency scales as
  /// s / (s + this) with s = min(m, n, k). 256: small-dimension GEMMs leave tensor cores idle;
  /// MST's chunks keep full speed down to about d rows. A guess until measured.
  double gemm_half_dim = 256.0;
  /// Fraction of the dense bf16 peak FlashAttention-2 reaches: about 50-70% forward and 40-60%
  /// backward on A100 (Dao, FlashAttention-2, 2023). 0.5 for both. A guess until measured.
  double attention_efficiency = 0.50;
  /// Fraction of the memory bandwidth that memory-bound kernels reach. 0.80. A guess.
  double memory_efficiency = 0.80;
  /// Fraction of the host link a pinned-memory copy reaches. 0.80. A guess.
  double host_link_efficiency = 0.80;
  /// Fixed cost of one kernel launch, in seconds. 5 us. A guess.
  double launch_seconds = 5e-6;
};

struct StepTime {
  double step_seconds = 0;     ///< the step's wall time: compute and copies overlapped
  double compute_seconds = 0;  ///< the compute stream alone
  double copy_seconds = 0;     ///< the copy stream alone
  double tokens_per_s = 0;     ///< batch x seq / step (the optimizer amortised over micro-batches)
  double flops = 0;            ///< work of the step, recompute included
  double model_flops = 0;      ///< work of forward + backward without recompute (6 x params x tokens + attention)
  std::array<double, kPhases> phase_seconds{};
};

/// Seconds of one execution of op `id` on `gpu` (a loop op: one iteration).
[[nodiscard]] double op_seconds(const Program& program, OpId id, const GpuSpec& gpu, const CostOptions& options = {});

/// FLOPs of one execution of op `id`.
[[nodiscard]] double op_flops(const Program& program, OpId id);

[[nodiscard]] StepTime estimate_time(const Program& program, const GpuSpec& gpu, std::int64_t grad_accum = 1,
                                     const CostOptions& options = {});

}  // namespace mstplan
