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

Lifetimes lifetimes(const Program& p) {
  Lifetimes lt;
  lifetimes(p, lt);
  return lt;
}

void lifetimes(const Program& p, Lifetimes& lt) {
  lt.instances.clear();
  lt.op.clear();
  lt.iteration.clear();
  thread_local std::vector<std::uint32_t> first;
  first.resize(p.tensors.size());
  for (TensorId t = 0; t < p.tensors.size(); ++t) {
    first[t] = static_cast<std::uint32_t>(lt.instances.size());
    const Tensor& tensor = p.tensors[t];
    const std::int64_t n = tensor.loop == kNone ? 1 : p.loops[static_cast<std::size_t>(tensor.loop)].iterations;
    for (std::int64_t i = 0; i < n; ++i) lt.instances.push_back({t, i});
  }
  lt.first_op.assign(lt.instances.size(), -1);
  lt.last_op.assign(lt.instances.size(), -1);
  auto touch = [&](std::uint32_t inst, std::int64_t flat_op) {
    if (lt.first_op[inst] < 0) lt.first_op[inst] = flat_op;
    lt.last_op[inst] = flat_op;
  };
  // The same walk as expand(), without materialising the ops.
  auto visit = [&](OpId i, std::int64_t iteration) {
    const Op& op = p.ops[i];
    const auto flat_op = static_cast<std::int64_t>(lt.op.size());
    lt.op.push_back(i);
    lt.iteration.push_back(iteration);
    for (std::span<const TensorId> list : {p.inputs(op), p.outputs(op)}) {
      for (TensorId t : list) {
        const Tensor& tensor = p.tensors[t];
        if (tensor.loop == kNone) {
          touch(first[t], flat_op);
        } else if (op.loop != kNone) {
          touch(first[t] + static_cast<std::uint32_t>(iteration), flat_op);
        } else {
          const std::int64_t n = p.loops[static_cast<std::size_t>(tensor.loop)].iterations;
          for (std::int64_t it = 0; it < n; ++it) touch(first[t] + static_cast<std::uint32_t>(it), flat_op);
        }
      }
    }
  };
  OpId i = 0;
  while (i < p.ops.size()) {
    const Op& op = p.ops[i];
    if (op.loop == kNone) {
      visit(i++, 0);
      continue;
    }
    const Loop& loop = p.loops[static_cast<std::size_t>(op.loop)];
    for (std::int64_t it = 0; it < loop.iterations; ++it) {
      for (OpId j = loop.first_op; j < loop.end_op; ++j) visit(j, it);
    }
    i = loop.end_op;
  }
}

}  // namespace mstplan
