#include "planner/expand.h"

namespace mstplan {

FlatProgram expand(const Program& p) {
  FlatProgram flat;
  // First instance index of each tensor; arrays occupy one index per iteration.
  std::vector<std::uint32_t> first(p.tensors.size());
  for (TensorId t = 0; t < p.tensors.size(); ++t) {
    first[t] = static_cast<std::uint32_t>(flat.instances.size());
    const Tensor& tensor = p.tensors[t];
    const std::int64_t n = tensor.loop == kNone ? 1 : p.loops[static_cast<std::size_t>(tensor.loop)].iterations;
    for (std::int64_t i = 0; i < n; ++i) flat.instances.push_back({t, i});
  }
  auto add = [&](std::vector<std::uint32_t>& into, TensorId t, const Op& op, std::int64_t iteration) {
    const Tensor& tensor = p.tensors[t];
    if (tensor.loop == kNone) {
      into.push_back(first[t]);
    } else if (op.loop != kNone) {
      into.push_back(first[t] + static_cast<std::uint32_t>(iteration));
    } else {
      const std::int64_t n = p.loops[static_cast<std::size_t>(tensor.loop)].iterations;
      for (std::int64_t i = 0; i < n; ++i) into.push_back(first[t] + static_cast<std::uint32_t>(i));
    }
  };
  auto emit = [&](OpId i, std::int64_t iteration) {
    const Op& op = p.ops[i];
    FlatOp f;
    f.op = i;
    f.iteration = iteration;
    for (TensorId t : p.inputs(op)) add(f.inputs, t, op, iteration);
    for (TensorId t : p.outputs(op)) add(f.outputs, t, op, iteration);
    flat.ops.push_back(std::move(f));
  };
  OpId i = 0;
  while (i < p.ops.size()) {
    const Op& op = p.ops[i];
    if (op.loop == kNone) {
      emit(i++, 0);
      continue;
    }
    const Loop& loop = p.loops[static_cast<std::size_t>(op.loop)];
    for (std::int64_t it = 0; it < loop.iterations; ++it) {
      for (OpId j = loop.first_op; j < loop.end_op; ++j) emit(j, it);
    }
    i = loop.end_op;
  }
  return flat;
}

}  // namespace mstplan
