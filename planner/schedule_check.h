#pragma once
// Checks that a step program's schedule is executable: the ops form a DAG (Boost.Graph) whose
// edges, from the op that last wrote a tensor to each op that reads it, all point forward in the
// schedule; every tensor is written before it is read; arrays are read only within loops of
// as many iterations as the loop that wrote them, or whole after them; loops are contiguous runs
// of ops. The builder's output always passes; a failure is a bug in the builder.
//
//   if (auto problem = check_schedule(program)) std::abort();
#include <optional>
#include <string>

#include "planner/program.h"

namespace mstplan {

/// nullopt when the schedule is valid, else what is wrong, naming the op and the tensor.
[[nodiscard]] std::optional<std::string> check_schedule(const Program& program);

}  // namespace mstplan
