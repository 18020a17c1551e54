#include "planner/liveness.h"

#include "planner/error.h"

namespace mstplan {

void tensor_spans(const Program& p, TensorSpans& out) {
  const std::size_t n = p.tensors.size();
  out.first_write.assign(n, -1);
  out.last_touch.assign(n, -1);
  for (OpId i = 0; i < p.ops.size(); ++i) {
    const Op& op = p.ops[i];
    const auto at = static_cast<std::int64_t>(i);
    for (TensorId t : p.inputs(op)) out.last_touch[t] = at;
    for (TensorId t : p.outputs(op)) {
      if (out.first_write[t] < 0) out.first_write[t] = at;
      out.last_touch[t] = at;
    }
  }
}

Lifetimes lifetimes(const Program& p) {
  Lifetimes lt;
  lifetimes(p, lt);
  return lt;
}

void lifetimes(const Program& p, Lifetimes& lt) {
  // The flat ops, in expand()'s order, and where each program op's iteration 0 lands among them:
  // iteration k of an op in a loop is `base + k * body` (the body runs whole, iteration by iteration).
  lt.op.clear();
  lt.iteration.clear();
  thread_local std::vector<std::int64_t> base;
  base.assign(p.ops.size(), 0);
  OpId i = 0;
  while (i < p.ops.size()) {
    const Op& op = p.ops[i];
    if (op.loop == kNone) {
      base[i] = static_cast<std::int64_t>(lt.op.size());
      lt.op.push_back(i++);
      lt.iteration.push_back(0);
      continue;
    }
    const Loop& loop = p.loops[static_cast<std::size_t>(op.loop)];
    for (OpId j = loop.first_op; j < loop.end_op; ++j) base[j] = static_cast<std::int64_t>(lt.op.size() + (j - loop.first_op));
    for (std::int64_t it = 0; it < loop.iterations; ++it) {
      for (OpId j = loop.first_op; j < loop.end_op; ++j) {
        lt.op.push_back(j);
        lt.iteration.push_back(it);
      }
    }
    i = loop.end_op;
  }
  auto loop_of = [&](std::int64_t op) -> const Loop* {
    const std::int32_t l = p.ops[static_cast<std::size_t>(op)].loop;
    return l == kNone ? nullptr : &p.loops[static_cast<std::size_t>(l)];
  };
  auto flat = [&](std::int64_t op, std::int64_t iteration) {
    const Loop* loop = loop_of(op);
    return loop == nullptr ? base[static_cast<std::size_t>(op)]
                           : base[static_cast<std::size_t>(op)] + iteration * (loop->end_op - loop->first_op);
  };

  thread_local TensorSpans spans;
  tensor_spans(p, spans);
  lt.instances.clear();
  lt.first_op.clear();
  lt.last_op.clear();
  for (TensorId t = 0; t < p.tensors.size(); ++t) {
    const Tensor& tensor = p.tensors[t];
    const std::int64_t first = spans.first_write[t];
    const std::int64_t last = spans.last_touch[t];
    if (tensor.loop == kNone) {
      lt.instances.push_back({t, 0});
      const Loop* last_loop = first < 0 ? nullptr : loop_of(last);
      lt.first_op.push_back(first < 0 ? -1 : flat(first, 0));
      lt.last_op.push_back(first < 0 ? -1 : flat(last, last_loop == nullptr ? 0 : last_loop->iterations - 1));
      continue;
    }
    const std::int64_t n = p.loops[static_cast<std::size_t>(tensor.loop)].iterations;
    for (const std::int64_t op : {first, last}) {
      const Loop* loop = op < 0 ? nullptr : loop_of(op);
      MSTPLAN_CHECK(loop == nullptr || loop->iterations == n, "{} is an array of {} iterations touched in a loop of {}",
                    tensor_name(p, t), n, loop == nullptr ? 0 : loop->iterations);
    }
    for (std::int64_t k = 0; k < n; ++k) {
      lt.instances.push_back({t, k});
      lt.first_op.push_back(first < 0 ? -1 : flat(first, k));
      lt.last_op.push_back(first < 0 ? -1 : flat(last, k));
    }
  }
}

}  // namespace mstplan
