#pragma once
// Unrolls a step program's loops into one op per executed kernel, with every tensor instance
// spelled out: what the runtime walks, and what tests use to check the analysis against a plain
// liveness oracle. When each instance lives: liveness.h.
//
//   FlatProgram flat = expand(program);
//   for (const FlatOp& op : flat.ops) run(op);   // op.inputs / op.outputs index flat.instances
#include <cstdint>
#include <vector>

#include "planner/program.h"

namespace mstplan {

/// One instance of a tensor: the tensor, and the loop iteration that produced it (0 otherwise).
struct TensorInstance {
  TensorId tensor = 0;
  std::int64_t iteration = 0;
};

struct FlatOp {
  OpId op = 0;
  std::int64_t iteration = 0;
  std::vector<std::uint32_t> inputs;   ///< indices into FlatProgram::instances
  std::vector<std::uint32_t> outputs;
};

struct FlatProgram {
  std::vector<TensorInstance> instances;
  std::vector<FlatOp> ops;
};

/// The program unrolled. An array read inside a loop is the instance of the same iteration;
/// read outside loops, it is every instance.
[[nodiscard]] FlatProgram expand(const Program& program);

}  // namespace mstplan
