#pragma once
// Holding a profile to measurements: the planner's prediction for every measured step (peak
// allocated bytes) and every measured bisection (longest sequence), the errors, and whether they
// stay within the documented bounds. `mst-plan fidelity` prints it; the CI test
// `Fidelity.PytorchProfileWithinTheDocumentedBounds` runs it on scenarios/measured/.
//
//   Fidelity f = evaluate_fidelity(builtin_measurements(), Profile::pytorch);
//   for (const std::string& v : violations(f, FidelityBounds{})) fmt::print("{}\n", v);
#include <optional>
#include <string>
#include <vector>

#include "report/measured.h"

namespace mstplan::report {

/// The targets (issue 7): median error of the peak at most 2%, worst case at most 5%, predicted
/// longest sequence within 3% of the measured one. Errors are relative to the measured value.
struct FidelityBounds {
  double median_peak_error = 0.02;
  double worst_peak_error = 0.05;
  double longest_error = 0.03;
};

struct FidelityRow {
  Measurement measurement;
  std::int64_t predicted = 0;  ///< peak allocated bytes, or the longest sequence in tokens
  double error = 0;            ///< (predicted - measured) / measured
};

struct Fidelity {
  std::vector<FidelityRow> peaks;
  std::vector<FidelityRow> longest;
  double median_abs_peak_error = 0;  ///< 0 without rows
  double worst_abs_peak_error = 0;
  double worst_abs_longest_error = 0;
};

/// The planner's peak for one measured step (its plan, length and setup on its GPU spec).
[[nodiscard]] FidelityRow predict_peak(const Measurement& m);

/// Predicts every measurement of `profile` (all profiles when nullopt) on its GPU spec.
[[nodiscard]] Fidelity evaluate_fidelity(const MeasuredData& data, std::optional<Profile> profile);

/// One line per bound that is exceeded, naming the worst measurement; empty when all hold.
[[nodiscard]] std::vector<std::string> violations(const Fidelity& fidelity, const FidelityBounds& bounds);

/// "llama3-8b/4L mst (tiled, recompute) S=16,384 b=1 bf16 flash": a measurement in one line.
[[nodiscard]] std::string describe_measurement(const Measurement& m);

}  // namespace mstplan::report
