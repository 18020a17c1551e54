#pragma once
// The step program: the ordered ops of one training step over named tensors. The planner reads
// it (analysis.h: liveness, peak, placement; cost_model.h: time) and the runtime executes it.
//
// Tensors have a kind (weight, gradient, ..., transient), a dtype, a device and a size. Static
// tensors (weights, optimizer state, persistent gradients, input data, the GEMM workspace) are
// outputs of the first op, `step.begin`, and inputs of the last, `step.end`, so they live through
// the whole step. Every other tensor is allocated by the first op that writes it and freed after
// the last op that reads or writes it. Writing may accumulate: the first write of a tensor
// instance overwrites it, later writes add to it (gradients summed over chunks, say), so an
// accumulator appears among an op's outputs only.
//
// Mini-sequence chunk loops are kept compact: a `Loop` is a run of ops executed `iterations`
// times. A tensor written inside a loop whose `loop` field names it is an array: one instance
// per iteration. Ops read the instance of the same iteration, also from a later loop over the
// same chunks (the backward loop reads what the forward loop saved, chunk by chunk); read after
// the loops, an array is read whole. A tensor that is not an array but is written inside a loop
// (a full-sequence output written slice by slice, a gradient accumulated over chunks) is allocated
// at the loop's first iteration. Chunks of unequal length are two loops: the longer chunks, then
// the shorter ones. `expand()` (expand.h) unrolls all of it into one op per executed kernel.
//
//   Program p = build_program(model, setup, Plan::mst_reference(model), 65536);
//   for (const Op& op : p.ops) fmt::print("{}\n", op_name(p, op, 0));
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "planner/dtype.h"
#include "planner/enum_names.h"
#include "planner/model_spec.h"
#include "planner/plan.h"
#include "planner/setup.h"

namespace mstplan {

using TensorId = std::uint32_t;
using OpId = std::uint32_t;
inline constexpr std::int32_t kNone = -1;
inline constexpr TensorId kNoTensor = ~TensorId{0};

enum class TensorKind : std::uint8_t {
  weight,           ///< parameters the kernels read
  master_weight,    ///< fp32 master copy of the parameters (mixed precision)
  gradient,         ///< gradients of parameters
  optimizer_state,  ///< AdamW moments (and 8-bit scales)
  data,             ///< input tokens and labels
  checkpoint,       ///< layer inputs kept for recomputation
  saved,            ///< activations saved for the backward pass
  transient,        ///< intermediates freed within a few ops (activation gradients included)
  workspace,        ///< scratch memory of kernels and libraries
};
inline constexpr std::size_t kTensorKinds = 9;

enum class Phase : std::uint8_t { forward, loss, backward, optimizer };
inline constexpr std::size_t kPhases = 4;

/// Which pass over a layer an op or tensor belongs to (names say "fwd", "recompute", "bwd").
enum class Pass : std::uint8_t { forward, recompute, backward, optimizer };

enum class Device : std::uint8_t { device, host };

/// What an op does, for the cost model and the runtime's dispatch.
enum class OpKind : std::uint8_t {
  begin,            ///< step start: creates the static tensors
  end,              ///< step end: the last reader of the static tensors
  embedding,        ///< gather rows of the embedding matrix
  embedding_grad,   ///< scatter-add rows into the embedding gradient
  norm,             ///< RMSNorm / LayerNorm forward
  norm_grad,        ///< its backward (input gradient and weight gradient)
  matmul,           ///< GEMM: (m x k) . (k x n), bf16 in, fp32 accumulate
  elementwise,      ///< memory-bound pointwise work (activation, residual, RoPE, casts, softcap)
  attention,        ///< flash attention forward
  attention_grad,   ///< flash attention backward
  softmax,          ///< eager attention's softmax (and its backward)
  loss,             ///< cross-entropy over a chunk of logits (and its gradient)
  optimizer,        ///< AdamW / SGD update of one parameter
  copy_to_host,     ///< checkpoint offload, on the copy stream
  copy_to_device,   ///< checkpoint prefetch, on the copy stream
};

template <>
struct EnumNames<TensorKind> {
  static constexpr std::array<std::pair<TensorKind, std::string_view>, kTensorKinds> table{
      {{TensorKind::weight, "weight"},
       {TensorKind::master_weight, "master weight"},
       {TensorKind::gradient, "gradient"},
       {TensorKind::optimizer_state, "optimizer state"},
       {TensorKind::data, "data"},
       {TensorKind::checkpoint, "checkpoint"},
       {TensorKind::saved, "saved"},
       {TensorKind::transient, "transient"},
       {TensorKind::workspace, "workspace"}}};
};
template <>
struct EnumNames<Phase> {
  static constexpr std::array<std::pair<Phase, std::string_view>, kPhases> table{
      {{Phase::forward, "forward"}, {Phase::loss, "loss"}, {Phase::backward, "backward"}, {Phase::optimizer, "optimizer"}}};
};
template <>
struct EnumNames<Device> {
  static constexpr std::array<std::pair<Device, std::string_view>, 2> table{
      {{Device::device, "device"}, {Device::host, "host"}}};
};

struct Tensor {
  const char* label = "";     ///< "mlp.up", "attn.lse", "weight", "grad": a string literal
  TensorKind kind = TensorKind::transient;
  DType dtype = DType::bf16;
  Device device = Device::device;
  Pass pass = Pass::forward;  ///< recomputed copies say "recompute" in their names
  std::int32_t layer = kNone;
  std::int32_t param = kNone;  ///< index into Program::params for weights, gradients, states
  std::int32_t loop = kNone;   ///< an array with one instance per iteration of this loop
  std::int64_t elements = 0;   ///< per instance
  std::int64_t bytes = 0;      ///< per instance (elements x dtype size, plus any scales)
};

struct Op {
  const char* label = "";  ///< "mlp.down", "mlp.down.dx", "attention": a string literal
  OpKind kind = OpKind::elementwise;
  Phase phase = Phase::forward;
  Pass pass = Pass::forward;
  std::int32_t layer = kNone;
  std::int32_t loop = kNone;   ///< runs once per iteration of this loop
  std::int32_t param = kNone;  ///< optimizer ops: the parameter they update
  std::uint32_t io_begin = 0;  ///< Program::io[io_begin, +inputs) are inputs, then outputs
  std::uint32_t inputs = 0;
  std::uint32_t outputs = 0;
  // Sizes for the cost model: matmul (m x k).(k x n); attention: m = batch x heads, n = query
  // rows, k = key rows (per chunk), window = sliding window or 0; elementwise: none (bytes come
  // from the tensors).
  std::int64_t m = 0, n = 0, k = 0;
  std::int64_t head_dim = 0;
  std::int64_t window = 0;
  double flops_multiplier = 1.0;  ///< attention: causal half or full; optimizer: flops per element
};

struct Loop {
  OpId first_op = 0;             ///< body: ops [first_op, end_op)
  OpId end_op = 0;
  std::int64_t iterations = 1;
  std::int64_t first_chunk = 0;  ///< chunk index of iteration 0, for names
  std::int64_t rows = 0;         ///< positions per chunk in this loop (times the batch: tokens)
  const char* block = "";        ///< "mlp" or "lm_head"
};

struct Program {
  std::vector<ParamTensor> params;
  std::vector<Tensor> tensors;
  std::vector<Op> ops;
  std::vector<Loop> loops;
  std::vector<TensorId> io;

  // What it was built from.
  std::int64_t batch = 1;
  std::int64_t seq_len = 0;
  std::int64_t mlp_chunks = 1;      ///< resolved mini-sequence counts
  std::int64_t lm_head_chunks = 1;
  Profile profile = Profile::native;

  [[nodiscard]] std::span<const TensorId> inputs(const Op& op) const { return {io.data() + op.io_begin, op.inputs}; }
  [[nodiscard]] std::span<const TensorId> outputs(const Op& op) const {
    return {io.data() + op.io_begin + op.inputs, op.outputs};
  }
};

/// "layer.7.mlp.up[chunk 3]", "layer.7.recompute.attn.q", "lm_head.weight.grad". `iteration`
/// picks the chunk of an array tensor; it is ignored for other tensors.
[[nodiscard]] std::string tensor_name(const Program& program, TensorId id, std::int64_t iteration = 0);
/// "layer.0.bwd.mlp.down.dx[chunk 0]", "lm_head.fwd.logits[chunk 31]", "step.begin".
[[nodiscard]] std::string op_name(const Program& program, OpId id, std::int64_t iteration = 0);

}  // namespace mstplan
