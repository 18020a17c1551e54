#pragma once
// `mst-plan run PLAN.yaml` and `mst-plan verify PLAN.yaml`: execute a plan file with the
// bundled runtime and compare what happened with what the planner predicted (and, for verify,
// with a plain step of the same model).
#include <cstdint>
#include <optional>
#include <ostream>
#include <string>

namespace mstplan::cli {

struct RunCommand {
  std::string plan_file;
  std::string backend = "cpu";
  std::int64_t steps = 3;
  std::uint64_t seed = 1;
  double ignore_fraction = 0.0;
  bool json = false;
  bool verify = false;  ///< verify: one step, plus the reference step
  bool memory_only = false;  ///< run: allocate and free as the step does, skip the kernels
};

/// Exit code and message (empty on success); the report goes to `out`.
struct RunOutcome {
  int code = 0;
  std::string message;
};
[[nodiscard]] RunOutcome run_command(const RunCommand& command, std::ostream& out);

}  // namespace mstplan::cli
