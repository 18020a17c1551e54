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
//   const Program p = build_program(model, setup, Plan::mst_reference(model), 65536);
//   for (OpId i = 0; i < p.ops.size(); ++i) fmt::print("{} {}\n", op_name(p, i), to_string(p.ops[i].kind));
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

/// Which part of a sequence a rank's activation holds (Notes [Ulysses step] and [Context-parallel
/// step] in builder.cpp): its local_seq_len() positions (of every head), or all seq_len positions:
/// between Ulysses' all-to-alls those of its share of the heads, with context parallelism the
/// gathered keys and values (and their gradients) of every head. With one rank per sequence
/// every tensor is `sequence`.
enum class Split : std::uint8_t { sequence, all_positions };

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
  collective,       ///< NCCL collective among data-parallel ranks, on the communication stream
};

template <>
struct EnumNames<OpKind> {
  static constexpr std::array<std::pair<OpKind, std::string_view>, 16> table{
      {{OpKind::begin, "begin"},
       {OpKind::end, "end"},
       {OpKind::embedding, "embedding"},
       {OpKind::embedding_grad, "embedding backward"},
       {OpKind::norm, "norm"},
       {OpKind::norm_grad, "norm backward"},
       {OpKind::matmul, "matmul"},
       {OpKind::elementwise, "elementwise"},
       {OpKind::attention, "attention"},
       {OpKind::attention_grad, "attention backward"},
       {OpKind::softmax, "softmax"},
       {OpKind::loss, "loss"},
       {OpKind::optimizer, "optimizer"},
       {OpKind::copy_to_host, "copy to host"},
       {OpKind::copy_to_device, "copy to device"},
       {OpKind::collective, "collective"}}};
};

/// What an op computes: the contract between the builders and the runtime, which dispatches on
/// it with a switch the compiler checks. Inputs and outputs are positional, in the order each
/// code lists ("{x, W, [bias], ws} -> {y}": bracketed operands are optional). An output the op
/// allocates is written first (overwritten); one already live is accumulated into, except where
/// the code says "in place". Every code has one cost class (op_kind()).
enum class OpCode : std::uint8_t {
  begin,             ///< {} -> {static tensors}
  end,               ///< {static tensors, loss, [held]} -> {}
  embedding,         ///< {tokens, W} -> {h}
  embedding_grad,    ///< {dh, tokens} -> {dW}
  norm,              ///< {x, w} -> {y, rstd}
  norm_grad,         ///< {dy, x, rstd, w, [residual gradient]} -> {dx, [dw]}
  norm_apply,        ///< {x, rstd, w} -> {y}: a norm's output again from its kept statistic
  linear,            ///< {x, W, [bias], ws} -> {y = x W^T + bias}
  linear_dx,         ///< {dy, W, ws} -> {dx = dy W}
  linear_dw,         ///< {dy, x, ws} -> {dW = dy^T x}
  bias_grad,         ///< {dq, dk, dv} -> {dbq, dbk, dbv}: column sums
  attention,         ///< {q, k, v} -> {o, lse}: flash attention
  attention_grad,    ///< {q, k, v, o, lse, do} -> {dq, dk, dv, dq accumulator, delta}
  eager_scores,      ///< {q, k} -> {scores}: per head q k^T
  eager_pv,          ///< {probs, v} -> {o}
  eager_dprobs,      ///< {do, v} -> {dprobs}
  eager_dv,          ///< {probs, do} -> {dv}
  eager_dq,          ///< {dscores, k} -> {dq}
  eager_dk,          ///< {dscores, q} -> {dk}
  softmax,           ///< {scores} -> {probs}: scaled, causal, soft-capped, windowed
  softmax_grad,      ///< {probs, dprobs} -> {dscores}
  rope,              ///< {q, k} -> {q, k}: rotary embedding, in place
  rope_grad,         ///< {dq, dk} -> {dq, dk}: its inverse, in place
  residual_add,      ///< {a, b} -> {a + b}
  scale,             ///< {x} -> {Op::scale x}: a LoRA branch's alpha / r (in place or into a copy)
  gated_act,         ///< {gate, up} -> {act(gate) * up}: the model's SwiGLU or GeGLU
  gated_act_grad,    ///< {dact, gate, up} -> {dgate, dup}
  softcap,           ///< {logits} -> {logits}: cap tanh(x / cap), in place
  loss,              ///< {logits, labels} -> {loss, lse}: cross-entropy, loss accumulated
  loss_with_grad,    ///< {logits, labels} -> {loss, dlogits}: the gradient formed in forward
  loss_grad,         ///< {logits, lse, labels, loss} -> {dlogits}
  zero,              ///< {} -> {accumulators}: allocated and zeroed before a chunk loop
  adamw,             ///< {g, w, m, v | m+v, [master]} -> {w, states}: one parameter
  sgd,               ///< {g, w, [master]} -> {w, [master]}
  offload,           ///< {x} -> {host copy}: on the copy stream
  prefetch,          ///< {host copy} -> {x}: on the copy stream
  // Collectives among the ranks (Notes [Sharded step] and [Ulysses step] in builder.cpp); Op::m is the
  // group's ranks, Op::n the bytes nccl-tests would report (collectives.h). They keep their code
  // in both profiles.
  all_gather,        ///< {shards...} -> {full tensors...}, or {w} -> {w}: a full tensor refilled in place
  reduce_scatter,    ///< {full gradient} -> {its shard}: summed over the ranks (accumulated if live)
  all_reduce,        ///< {g} -> {g}: summed over the ranks, in place
  all_to_all,        ///< {sequence-split tensors...} -> {head-split tensors...}, or back (Ulysses)
  /// Ulysses with fewer key/value heads than ranks: each key/value head repeated to sp / kv
  /// heads (repeat_interleave, DeepSpeed's kv replication) and, in backward, the repeats summed.
  repeat_kv,         ///< {k, v} -> {k repeated, v repeated}
  repeat_kv_grad,    ///< {dk repeated, dv repeated} -> {dk, dv}
  /// A quantized base weight (LoRA over an int8 or 4-bit base, Note [LoRA step] in builder.cpp)
  /// expanded to bf16 for one GEMM, as bitsandbytes does in forward and again in backward.
  dequantize,        ///< {quantized W} -> {W in bf16}
  autograd,          ///< pytorch profile: a PyTorch op, modelled for its memory and time only
};

/// The cost class of a code (autograd ops carry theirs in Op::kind).
[[nodiscard]] constexpr OpKind op_kind(OpCode code) {
  switch (code) {
    case OpCode::begin: return OpKind::begin;
    case OpCode::end: return OpKind::end;
    case OpCode::embedding: return OpKind::embedding;
    case OpCode::embedding_grad: return OpKind::embedding_grad;
    case OpCode::norm: return OpKind::norm;
    case OpCode::norm_grad: return OpKind::norm_grad;
    case OpCode::linear:
    case OpCode::linear_dx:
    case OpCode::linear_dw:
    case OpCode::eager_scores:
    case OpCode::eager_pv:
    case OpCode::eager_dprobs:
    case OpCode::eager_dv:
    case OpCode::eager_dq:
    case OpCode::eager_dk: return OpKind::matmul;
    case OpCode::attention: return OpKind::attention;
    case OpCode::attention_grad: return OpKind::attention_grad;
    case OpCode::softmax:
    case OpCode::softmax_grad: return OpKind::softmax;
    case OpCode::loss:
    case OpCode::loss_with_grad:
    case OpCode::loss_grad: return OpKind::loss;
    case OpCode::adamw:
    case OpCode::sgd: return OpKind::optimizer;
    case OpCode::offload: return OpKind::copy_to_host;
    case OpCode::prefetch: return OpKind::copy_to_device;
    case OpCode::all_gather:
    case OpCode::reduce_scatter:
    case OpCode::all_reduce:
    case OpCode::all_to_all: return OpKind::collective;
    case OpCode::norm_apply:
    case OpCode::bias_grad:
    case OpCode::rope:
    case OpCode::rope_grad:
    case OpCode::residual_add:
    case OpCode::scale:
    case OpCode::gated_act:
    case OpCode::gated_act_grad:
    case OpCode::softcap:
    case OpCode::repeat_kv:
    case OpCode::repeat_kv_grad:
    case OpCode::dequantize:
    case OpCode::zero:
    case OpCode::autograd: return OpKind::elementwise;
  }
  return OpKind::elementwise;
}

/// The blocks MST splits into mini-sequences: a Loop runs one of them chunk by chunk.
enum class ChunkedBlock : std::uint8_t { mlp, lm_head };

template <>
struct EnumNames<ChunkedBlock> {
  static constexpr std::array<std::pair<ChunkedBlock, std::string_view>, 2> table{
      {{ChunkedBlock::mlp, "mlp"}, {ChunkedBlock::lm_head, "lm_head"}}};
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
  Split split = Split::sequence;  ///< activations: the positions and heads a rank holds (Ulysses, context parallelism)
};

struct Op {
  const char* label = "";  ///< "mlp.down", "mlp.down.dx", "attention": a string literal, for names
  OpCode code = OpCode::autograd;  ///< what it computes (the runtime's dispatch)
  OpKind kind = OpKind::elementwise;  ///< its cost class: op_kind(code), or an autograd op's own
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
  double scale = 1.0;             ///< OpCode::scale: the factor
};

struct Loop {
  OpId first_op = 0;             ///< body: ops [first_op, end_op)
  OpId end_op = 0;
  std::int64_t iterations = 1;
  std::int64_t first_chunk = 0;  ///< chunk index of iteration 0, for names
  std::int64_t rows = 0;         ///< positions per chunk in this loop (times the batch: tokens)
  ChunkedBlock block = ChunkedBlock::mlp;
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
  std::int64_t data_parallel_ranks = 1;  ///< rank groups running this program, each on its own micro-batch
  /// Ranks sharing each sequence (Ulysses or context parallelism: sp x cp): the program holds
  /// seq_len / sequence_parallel positions of it outside attention.
  std::int64_t sequence_parallel = 1;
  [[nodiscard]] std::int64_t local_seq_len() const { return seq_len / sequence_parallel; }

  // Tensors with a role in the step (kNoTensor where the program has none).
  TensorId tokens = kNoTensor;          ///< input ids
  TensorId labels = kNoTensor;          ///< target ids (position s predicts the token at s + 1)
  TensorId loss = kNoTensor;            ///< the summed loss (fp32 scalar)
  TensorId gemm_workspace = kNoTensor;  ///< the GEMM library's workspace

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
