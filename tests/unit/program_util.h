// Helpers for tests that read a built step program: its ops of one code, a layer's saved bytes.
#pragma once

#include <cstdint>
#include <vector>

#include "planner/program.h"

namespace mstplan::test {

inline std::vector<const Op*> ops_with(const Program& p, OpCode code) {
  std::vector<const Op*> out;
  for (const Op& op : p.ops) {
    if (op.code == code) out.push_back(&op);
  }
  return out;
}

/// The bytes of the tensors layer `layer` saves for backward.
inline std::int64_t saved_bytes_of_layer(const Program& p, std::int32_t layer) {
  std::int64_t bytes = 0;
  for (const Tensor& t : p.tensors) bytes += t.kind == TensorKind::saved && t.layer == layer ? t.bytes : 0;
  return bytes;
}

}  // namespace mstplan::test
