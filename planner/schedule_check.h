#pragma once
// Checks that a step program's schedule is executable, in one pass over the ops in order: every
// tensor id exists and is written before it is read (so every dependency points forward: program
// order is a topological order of the op DAG, and no cycle can exist); arrays are written only
// inside their own loop and read only within loops over the same chunks, or whole outside loops;
// loops are contiguous runs of ops; an offload or prefetch, outside chunk loops, copies one tensor
// to the other device with its dtype and bytes unchanged. The builder's output always passes; a
// failure is a bug in it.
//
//   if (auto problem = check_schedule(program)) std::abort();
#include <optional>
#include <string>

#include "planner/program.h"

namespace mstplan {

/// nullopt when the schedule is valid, else what is wrong, naming the op and the tensor.
[[nodiscard]] std::optional<std::string> check_schedule(const Program& program);

}  // namespace mstplan
