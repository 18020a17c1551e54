#pragma once
// Running a plan file on a backend and checking it: predicted against measured memory, and (for
// `verify`) the loss, every gradient and every updated parameter against a reference step of the
// same model, setup, weights and data with no chunking and no recompute.
//
// Memory tolerance: the runtime executes the program the planner analysed, with an allocator
// that rounds as the planner's native allocator model does (256 bytes), so live and allocated
// bytes must agree to the byte, in total, per phase and per layer (`tolerance_bytes` = 0). A
// difference is a bug in the analysis or in the executor, never noise. On a GPU the device
// pool's high-water marks are compared too, within kPoolTolerance.
//
// Numerical tolerances (norm-wise relative error ||x - ref|| / ||ref|| per tensor):
//  - loss: 1e-5 (fp32 sums of the same terms in another order);
//  - fp32 storage: 1e-5 for every gradient and parameter;
//  - bf16 storage: activation gradients of a chunk are computed row by row exactly as without
//    chunks (same kernels, same inputs), and recomputation repeats the same arithmetic, so only
//    weight gradients accumulated over M mini-sequences differ: each of the M - 1 additions in
//    bf16 storage rounds once (unit roundoff 2^-9), so the bound is (M - 1) x 2^-8 (twice the
//    roundoff, for the partial sums' own rounding), plus 1e-5. Updated bf16 parameters of such
//    weights may then round to the neighbouring bf16 value: one bf16 step is at most 2^-7 of a
//    value, so 2^-7 plus 1e-5 (AdamW's first steps hardly depend on the gradient's size, so the
//    update itself adds nothing larger). Master weights (mixed) are fp32: 1e-5.
//
//   auto cpu = make_cpu_backend();
//   Expected<RunReport> r = run_plan(plan_file, *cpu, RunOptions{}, 3);
#include <cstdint>
#include <string>
#include <vector>

#include "planner/plan_io.h"
#include "runtime/executor.h"

namespace mstplan {

struct MemoryRow {
  std::string what;  ///< "device peak allocated", "phase backward", "layer 3", ...
  std::int64_t predicted_bytes = 0;
  std::int64_t measured_bytes = 0;
  std::int64_t tolerance_bytes = 0;  ///< 0 for the allocator's own counts
  [[nodiscard]] bool ok() const {
    const std::int64_t d = measured_bytes - predicted_bytes;
    return (d < 0 ? -d : d) <= tolerance_bytes;
  }
};

/// The device pool's high-water marks (CUDA) against the predicted peak: the pool serves the
/// allocator's 256-byte-rounded requests, so used bytes should equal the prediction; the pool's
/// own granularity and fragmentation may add to it. Tolerance: 2% of the prediction (the
/// project's target for predicted against measured device peak).
inline constexpr double kPoolTolerance = 0.02;

struct RunReport {
  std::string backend;
  std::vector<double> losses;          ///< one per step
  std::vector<MemoryRow> memory;       ///< the first step
  std::string predicted_peak_at, measured_peak_at;
  std::optional<DeviceMemoryReport> device;  ///< the first step's device figures (CUDA)
  std::int64_t tolerance_bytes = 0;
  bool memory_ok = true;               ///< every row of every step within the tolerance
  double seconds_per_step = 0;         ///< wall clock, this machine
};

struct TensorCheck {
  std::string name;
  double error = 0;  ///< ||x - ref|| / ||ref|| (absolute when ref is 0)
  double tolerance = 0;
  bool ok = true;
};

struct VerifyReport {
  RunReport run;
  double loss = 0, reference_loss = 0;
  TensorCheck loss_check;
  std::vector<TensorCheck> gradients;   ///< one per parameter
  std::vector<TensorCheck> parameters;  ///< after the update
  bool ok = true;                       ///< memory, loss, gradients and parameters
};

/// Refuses plans whose predicted bytes exceed what this machine can give the CPU backend, for
/// `processes` ranks of the plan running on it at once (mpirun's ranks on this node).
[[nodiscard]] std::optional<Error> check_fits_host(const PlanFile& plan, const std::string& origin,
                                                   std::int64_t processes = 1);

[[nodiscard]] Expected<RunReport> run_plan(const PlanFile& plan, Backend& backend, const RunOptions& options,
                                           std::int64_t steps);
/// One step of the plan and one of the plain step; needs a trained setup (an optimizer).
[[nodiscard]] Expected<VerifyReport> verify_plan(const PlanFile& plan, Backend& backend, const RunOptions& options);

/// ||a - b|| / ||b|| (or ||a - b|| when b is 0).
[[nodiscard]] double relative_error(const std::vector<float>& a, const std::vector<float>& b);

}  // namespace mstplan
