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
    if (op.kind == OpKind::copy_to_host || op.kind == OpKind::copy_to_device) {
      const auto in = p.inputs(op);
      const auto out = p.outputs(op);
      const Device to = op.kind == OpKind::copy_to_host ? Device::host : Device::device;
      if (op.loop != kNone || in.size() != 1 || out.size() != 1 || p.tensors[in[0]].device == to ||
          p.tensors[out[0]].device != to) {
        return fmt::format("op {} does not copy one tensor to the {} outside chunk loops", op_name(p, i),
                           to == Device::host ? "host" : "GPU");
      }
      const Tensor& a = p.tensors[in[0]];
      const Tensor& b = p.tensors[out[0]];
      if (a.dtype != b.dtype || a.bytes != b.bytes) {
        return fmt::format("op {} copies {} ({}, {} bytes) into {} ({}, {} bytes)", op_name(p, i),
                           tensor_name(p, in[0]), to_string(a.dtype), a.bytes, tensor_name(p, out[0]), to_string(b.dtype), b.bytes);
      }
    }
  }
  return std::nullopt;
}

}  // namespace mstplan
