#include "planner/program.h"

#include <fmt/format.h>

namespace mstplan {
namespace {

const char* pass_name(Pass pass) {
  switch (pass) {
    case Pass::forward: return "fwd";
    case Pass::recompute: return "recompute";
    case Pass::backward: return "bwd";
    case Pass::optimizer: return "opt";
  }
  return "";
}

std::string chunk_suffix(const Program& p, std::int32_t loop, std::int64_t iteration) {
  if (loop == kNone) return {};
  return fmt::format("[chunk {}]", p.loops[static_cast<std::size_t>(loop)].first_chunk + iteration);
}

}  // namespace

std::string tensor_name(const Program& p, TensorId id, std::int64_t iteration) {
  const Tensor& t = p.tensors[id];
  std::string name;
  if (t.param != kNone) {
    name = p.params[static_cast<std::size_t>(t.param)].name;
    if (*t.label != '\0') name += fmt::format(".{}", t.label);
  } else {
    if (t.layer != kNone) name = fmt::format("layer.{}.", t.layer);
    if (t.pass == Pass::recompute) name += "recompute.";
    name += t.label;
  }
  name += chunk_suffix(p, t.loop, iteration);
  if (t.device == Device::host) name += " (host)";
  return name;
}

std::string op_name(const Program& p, OpId id, std::int64_t iteration) {
  const Op& op = p.ops[id];
  std::string name;
  if (op.param != kNone) {
    name = fmt::format("{}.{}", p.params[static_cast<std::size_t>(op.param)].name, op.label);
  } else if (op.layer != kNone) {
    name = fmt::format("layer.{}.{}.{}", op.layer, pass_name(op.pass), op.label);
  } else if (op.kind == OpKind::begin || op.kind == OpKind::end) {
    name = op.label;
  } else {
    name = fmt::format("{}.{}", op.label, pass_name(op.pass));
  }
  return name + chunk_suffix(p, op.loop, iteration);
}

}  // namespace mstplan
