#include "planner/schedule_check.h"

#include <fmt/format.h>

namespace mstplan {

std::optional<std::string> check_schedule(const Program& p) {
  std::vector<std::int64_t> last_writer(p.tensors.size(), -1);

  for (std::size_t l = 0; l < p.loops.size(); ++l) {
    const Loop& loop = p.loops[l];
    if (loop.first_op >= loop.end_op || loop.iterations < 1) return fmt::format("loop {} is empty", l);
    for (OpId i = loop.first_op; i < loop.end_op; ++i) {
      if (p.ops[i].loop != static_cast<std::int32_t>(l)) {
        return fmt::format("op {} sits inside loop {} but is not part of it", op_name(p, i), l);
      }
    }
  }
  for (OpId i = 0; i < p.ops.size(); ++i) {
    const Op& op = p.ops[i];
    for (TensorId t : p.inputs(op)) {
      if (t >= p.tensors.size()) return fmt::format("op {} reads tensor id {}, which does not exist", op_name(p, i), t);
      const Tensor& tensor = p.tensors[t];
      if (last_writer[t] < 0) {
        return fmt::format("op {} reads {} before any op writes it", op_name(p, i), tensor_name(p, t));
      }
      if (tensor.loop != kNone && op.loop != kNone && op.loop != tensor.loop) {
        const auto& writer_loop = p.loops[static_cast<std::size_t>(tensor.loop)];
        const auto& reader_loop = p.loops[static_cast<std::size_t>(op.loop)];
        if (writer_loop.iterations != reader_loop.iterations || writer_loop.first_chunk != reader_loop.first_chunk) {
          return fmt::format("op {} reads the chunks of {} in a loop over other chunks", op_name(p, i),
                             tensor_name(p, t));
        }
      }
    }
    for (TensorId t : p.outputs(op)) {
      if (t >= p.tensors.size()) return fmt::format("op {} writes tensor id {}, which does not exist", op_name(p, i), t);
      if (p.tensors[t].loop != kNone && op.loop != p.tensors[t].loop) {
        return fmt::format("op {} writes the chunk array {} outside its loop", op_name(p, i), tensor_name(p, t));
      }
      last_writer[t] = i;
    }
  }
  return std::nullopt;
}

}  // namespace mstplan
