#include "planner/builder.h"

#include <array>

#include "planner/builder_internal.h"

// The core of the step builder: the walk and the primitives (builder_internal.h says how the
// profiles plug in). Note [Native step] (builder_native.cpp) and Note [PyTorch step]
// (builder_pytorch.cpp) list what each profile keeps, op by op.
//
// Note [Sharded step]
// -------------------
// With setup.parallel.gpus = N > 1 the program is one rank's step: N ranks run it at once, each
// on its own micro-batch (data parallelism), and a rank keeps ceil(numel / N) elements of what its
// ZeRO stage shards (Parallelism::shard_numel; FSDP2 pads each parameter's dim-0 shards, DeepSpeed
// its flat buffer, to equal sizes):
//
//   stage  weights           master, m, v   gradients                collectives per step
//   0      full              full           full, all-reduced        all-reduce of every gradient
//   1      full              shard          full, all-reduced        + all-gather of each updated weight
//   2      full              shard          reduce-scattered: shard  reduce-scatter; all-gather of weights
//   3      shard, gathered   shard          reduce-scattered: shard  all-gather fwd and bwd; reduce-scatter
//
// - ZeRO-3 gathers a block's weights (the embedding; a layer; the final norm with the LM head or
//   the tied embedding) in one all-gather into transient full copies, read by weight() until the
//   block is done, and one block ahead (FSDP2's forward and backward prefetch, DeepSpeed's
//   prefetch bucket): two blocks' weights are live at once. A recomputed layer's forward and its
//   backward share one gather (FSDP2 unshards once in the backward pre-hook); the embedding's
//   backward reads no weight.
// - A gradient is reduced as soon as backward completes it (DDP's and FSDP2's hooks, DeepSpeed's
//   overlap_comm); with ZeRO-2/3 the full gradient is then dead and the rank's shard lives (static
//   when persistent, else until the update). With the optimizer in backward the updates of
//   parameters whose reduction is in flight run after the next layer's backward, so compute does
//   not wait for the collective; the full gradients (ZeRO-0/1) live until then.
// - The pytorch profile models DDP (stage 0; with its buckets, a second copy of every gradient:
//   gradient_as_bucket_view=False, the default) and FSDP2 full shard (stage 3); DeepSpeed's stage
//   1/2 buffers are not modelled and refused. Not modelled either: NCCL's internal buffers (a few
//   MiB per communicator), FSDP2's flat reduce-scatter input, a copy of one layer's unsharded
//   gradients while it is reduced (436 MiB in bf16 for a llama3-8b layer), and DDP's skipping of
//   the all-reduce under no_sync (every micro-batch is reduced here, as ZeRO-2/3 do).
// Each collective's buffers are the program's tensors, so the analysis finds each rank's peak
// with no change; the cost model runs collectives on their own stream (Note [Overlapped
// collectives] in cost_model.h).
//
// Note [Ulysses step]
// -------------------
// With setup.parallel.sp = P > 1 (DeepSpeed-Ulysses, as ALST runs it on Hugging Face models:
// arXiv 2309.14509, 2506.13996), groups of P ranks share each sequence: a rank holds S / P
// consecutive positions (S_) of every head from the embedding to the loss, so the norms, the
// projections, the MLP (and its mini-sequences), the LM head and the loss run on T_ = B x S / P
// tokens. Attention needs every position: around it, one all-to-all turns q, k and v (after
// RoPE, which each rank applies at its own positions) from S / P positions of every head into
// all S positions of H / P query heads (heads_) and KV / P key/value heads, and one turns the
// output back; backward mirrors them (the output's gradient in, dq, dk, dv out). Each side has
// the same elements, B x S x heads x head_dim / P. What attention saves is the head-split copy
// (the sequence-split q, k, v die after the all-to-all; the all-to-all's autograd Function saves
// nothing); o_proj saves the output's sequence-split copy, so the output is kept twice. Attention
// costs B x H / P heads over S queries and keys. The labels are shifted before the sequence is
// split, so each rank's S / P positions all have one. P must divide the query heads; with fewer
// key/value heads than P (P a multiple of them), each rank gets one, k and v repeated to P heads
// before the all-to-all (a transient copy each; ALST section 3.2.1), their gradients summed
// after. ZeRO shards over all the ranks (DeepSpeed's data-parallel group for ZeRO spans the
// sequence-parallel ranks), and gradients are reduced over all of them; tokens/s counts gpus / P
// sequences per step. The loss's all-reduce over the group (a scalar) is not
// modelled. The all-to-alls sit on the critical path: compute waits for each (the cost model's
// rule that a compute op reading a collective's output waits for it).
//
// Note [Context-parallel step]
// ----------------------------
// With setup.parallel.cp = C > 1 (context parallelism as Llama 3 trained it, arXiv 2407.21783
// section 3.3.2, and as PyTorch's context_parallel runs it with its default all-gather rotation:
// keys and values all-gathered, then attention for the local queries), groups of C ranks share
// each sequence: a rank holds S / C consecutive positions (S_) from the embedding to the loss,
// as with Ulysses, but keeps every head. Before attention its k and v (after RoPE at its own
// positions) are all-gathered among the group into all S positions (attn.k.gathered,
// attn.v.gathered: transient, B x S x kv_heads x head_dim each; attention saves only the rank's
// own k, v), and attention runs its S_ queries against the S keys, the causal mask on global
// positions. Backward gathers them again, runs attention's backward into gradients for every
// key position (this rank's queries' share), and reduce-scatters those (summed) into the rank's
// dk, dv. The labels are shifted before the split, as with Ulysses. Not modelled: the ring
// rotation (pass-KV send/recv, PyTorch's "alltoall" rotate method, Ring Attention) and its
// double-buffered blocks, and load balancing's sharding into 2C chunks: the cost model counts
// each rank's attention as the balanced share (S_ queries over S / 2 keys on average, what the
// chunked sharding achieves), while a rank's memory is the same either way. ZeRO shards over
// all the ranks; tokens/s counts gpus / C sequences per step. Not with Ulysses (sp), the
// pytorch profile (torchtitan's step is not modelled), or eager attention.
//
// Note [Offloaded optimizer]
// --------------------------
// setup.offload_optimizer is DeepSpeed's ZeRO-Offload ("offload_optimizer": {"device": "cpu"},
// DeepSpeedCPUAdam; arXiv 2101.06840), on one GPU or with ZeRO-2/3 (each rank its partition):
//   - host memory, static: the fp32 master weights, AdamW's m and v in fp32 (whatever the
//     device's precision), and a copy of the rank's gradient shard in the gradients' dtype; the
//     device keeps only the weights (bf16; with ZeRO-3 their shards);
//   - backward: each gradient, once reduced (reduce-scatter into the rank's shard; on one GPU
//     the gradient itself), is copied to its host buffer on the copy stream, and the device copy
//     dies (no device gradients persist: persistent_gradients() is false);
//   - after backward, per parameter: CPU Adam updates the host state (OpKind::optimizer on host
//     tensors, timed at the host's Adam rate, CostOptions::host_adam_params_per_s, with the GPU
//     waiting: DeepSpeed's step is synchronous) and writes the new weights in the device dtype to
//     a host staging buffer, copied to the rank's weight shard (ZeRO-2: then all-gathered).
// Not modelled: DeepSpeed's pinned bounce buffers and the fp32 upcast of the gradient on the host
// (the host copy keeps the gradients' dtype), and overlapping CPU Adam with the next step.
// setup.offload_param adds ZeRO-Infinity's parameter offload ("offload_param": {"device": "cpu"},
// stage 3; arXiv 2104.07857): the rank's bf16 weight shard is static host memory too, and where
// ZeRO-3 gathers a block's weights (one block ahead, gather()), its host shards are first copied
// to the device (OpKind::copy_to_device on the copy stream, at the host link's rate): on one GPU
// straight into the weights the kernels read, with several ranks into device shards that the
// all-gather reads and that die with it. CPU Adam then writes the host weights in place (no
// upload after the step). DeepSpeed's parameter persistence threshold (small parameters kept on
// the device) and its prefetch bucket are not modelled.

namespace mstplan::detail {

std::vector<ChunkClass> chunk_classes(std::int64_t positions, std::int64_t chunks, bool split_first) {
  const std::int64_t base = positions / chunks;
  const std::int64_t longer = positions % chunks;
  std::vector<ChunkClass> out;
  if (longer > 0) out.push_back({base + 1, longer, 0});
  if (chunks - longer > 0 && base > 0) out.push_back({base, chunks - longer, longer});
  if (split_first && !out.empty() && out.front().iterations > 1) {
    ChunkClass rest = out.front();
    out.front().iterations = 1;
    rest.iterations -= 1;
    rest.first_chunk += 1;
    out.insert(out.begin() + 1, rest);
  }
  return out;
}

StepPolicy step_policy(const TrainingSetup& setup) {
  StepPolicy p;
  if (setup.profile == Profile::native) {
    p.residual = setup.precision == Precision::fp32 ? DType::fp32 : DType::bf16;
    return p;
  }
  const bool legacy = setup.framework == Framework::transformers_4_44 || setup.framework == Framework::torchtune;
  p.executable = false;
  p.token_ids = DType::int64;
  p.residual = parameter_storage(setup).autocast ? DType::fp32 : DType::bf16;
  p.split_first_chunk = true;
  p.adamw_temporaries = true;
  p.foreach_adamw = true;
  p.partial_grads = true;
  p.repeat_kv = legacy && setup.attention == AttentionKind::flash;
  p.fp32_output = legacy;
  p.shifted_loss_copy =
      setup.framework == Framework::transformers_4_44 || setup.framework == Framework::transformers_4_46;
  return p;
}

StepBuilder::StepBuilder(const ModelSpec& model, const TrainingSetup& setup, const Plan& plan, std::int64_t seq_len)
    : m_(model), s_(setup), plan_(plan), policy_(step_policy(setup)), B_(setup.batch),
      S_(seq_len / setup.parallel.sequence_group()), T_(setup.batch * S_), qd_(model.num_heads * model.head_dim),
      kvd_(model.num_kv_heads * model.head_dim), A_(seq_len), heads_(model.num_heads / setup.parallel.sp),
      queries_(setup.parallel.cp > 1 ? S_ : A_), labelled_(setup.parallel.sequence_group() > 1 ? S_ : S_ - 1),
      storage_(parameter_storage(setup)), act_(setup.precision == Precision::fp32 ? DType::fp32 : DType::bf16),
      trained_(setup.optimizer != OptimizerKind::none), par_(setup.parallel),
      persistent_grads_(persistent_gradients(setup)), base_storage_(base_storage(setup)) {}

TensorId StepBuilder::tensor(const char* label, TensorKind kind, DType dtype, std::int64_t elements, std::int32_t layer,
                         Pass pass, bool array, Device device) {
  Tensor t;
  t.label = label;
  t.kind = kind;
  t.dtype = dtype;
  t.device = device;
  t.pass = pass;
  t.layer = layer;
  t.loop = array ? loop_ : kNone;
  t.elements = elements;
  t.bytes = elements * dtype_bytes(dtype);
  p_.tensors.push_back(t);
  return static_cast<TensorId>(p_.tensors.size() - 1);
}

OpId StepBuilder::open_op(const char* label, OpCode code, OpKind kind, Phase phase, Pass pass, std::int32_t layer) {
  Op o;
  o.label = label;
  o.code = policy_.executable || op_kind(code) == OpKind::collective ? code : OpCode::autograd;
  o.kind = kind;
  o.phase = phase;
  o.pass = pass;
  o.layer = layer;
  o.loop = loop_;
  o.io_begin = static_cast<std::uint32_t>(p_.io.size());
  p_.ops.push_back(o);
  return static_cast<OpId>(p_.ops.size() - 1);
}

void StepBuilder::push_operands(OpId id, std::span<const TensorId> inputs, std::span<const TensorId> outputs) {
  Op& o = p_.ops[id];
  MSTPLAN_CHECK(id + 1 == p_.ops.size() && o.io_begin + o.inputs + o.outputs == p_.io.size(),
                "operands added to op {} after later ops", o.label);
  MSTPLAN_CHECK(inputs.empty() || o.outputs == 0, "inputs of op {} added after its outputs", o.label);
  append_operands(o, inputs, outputs);
}

void StepBuilder::append_operands(Op& o, std::span<const TensorId> inputs, std::span<const TensorId> outputs) {
  std::vector<TensorId>& io = p_.io;
  std::uint32_t added_inputs = 0, added_outputs = 0;  // counted locally: io's growth may not alias o
  for (TensorId t : inputs) {
    if (t == kNoTensor) continue;
    io.push_back(t);
    ++added_inputs;
  }
  for (TensorId t : outputs) {
    if (t == kNoTensor) continue;
    io.push_back(t);
    ++added_outputs;
  }
  o.inputs += added_inputs;
  o.outputs += added_outputs;
}

OpId StepBuilder::op(const char* label, OpCode code, Phase phase, Pass pass, std::int32_t layer,
                 std::initializer_list<TensorId> inputs, std::initializer_list<TensorId> outputs) {
  const OpId id = open_op(label, code, op_kind(code), phase, pass, layer);
  append_operands(p_.ops.back(), inputs, outputs);
  return id;
}

OpId StepBuilder::autograd_op(const char* label, OpKind kind, Phase phase, Pass pass, std::int32_t layer,
                          std::initializer_list<TensorId> inputs, std::initializer_list<TensorId> outputs) {
  const OpId id = open_op(label, OpCode::autograd, kind, phase, pass, layer);
  append_operands(p_.ops.back(), inputs, outputs);
  return id;
}

OpId StepBuilder::matmul(const char* label, OpCode code, Phase phase, Pass pass, std::int32_t layer,
                     std::initializer_list<TensorId> inputs, std::initializer_list<TensorId> outputs, std::int64_t m,
                     std::int64_t n, std::int64_t k) {
  MSTPLAN_CHECK(op_kind(code) == OpKind::matmul, "matmul {} with a code that is not a GEMM", label);
  const OpId id = op(label, code, phase, pass, layer, inputs, outputs);
  Op& o = p_.ops[id];
  o.m = m;
  o.n = n;
  o.k = k;
  return id;
}

// Note [LoRA step]
// ----------------
// With a LoRA adapter (setup.adapter) every base parameter is frozen (no gradient, no optimizer
// state: trains()) and each targeted linear y = x W^T of a decoder layer gains the adapter's
// branch, written once here for both profiles:
//   forward:  a = x A^T (r wide, kept for B's gradient), b = a B^T, y += s b (s = alpha / r);
//   backward: dys = s dy, da = dys B, dB = dys^T a, dA = da^T x, dx += da A (after the base's
//   dx = dy W).
// x is the linear's input, which the adapter keeps for dA where the frozen base alone would not;
// the analysis sees it read in backward and keeps it alive. The pytorch profile follows PEFT's
// LoRA Linear (peft/tuners/lora/layer.py, 0.13 to 0.17): x is cast to the adapters' dtype first
// (_cast_input_dtype: with PEFT's default fp32 adapters over a bf16 base, an fp32 copy of x per
// adapted linear, kept for dA), lora_dropout's mask and output are kept when dropout > 0, the
// branch's output is scaled into a new tensor and added (result + lora_B(...) * scaling), and the
// input gradient of the branch is a tensor of its own that autograd adds into dx. The native
// step adds the branch in place and accumulates dx with the GEMM.
// A quantized base (int8, nf4, fp4) is expanded to a bf16 transient before each GEMM that reads
// it, in forward and again in backward (bitsandbytes' MatMul4Bit and MatMul8bitLt dequantize the
// weight for the matmul and keep only the quantized one); its bytes are Note [Quantized base
// weights] in static_memory.h. Not modelled: LLM.int8's int8 copy of the input and its outlier
// columns (transients of the forward GEMM), and autograd skipping the first layer's input
// gradient when nothing before it trains.
TensorId StepBuilder::dense_weight(std::int32_t param, Phase phase, Pass pass, std::int32_t layer) {
  if (!quantized(param)) return weight(param);
  const ParamTensor& pt = p_.params[static_cast<std::size_t>(param)];
  const TensorId w = tensor("weight.dequantized", TensorKind::transient, DType::bf16, pt.numel(), layer, pass);
  p_.tensors[w].param = param;
  const OpId id = op("weight.dequantize", OpCode::dequantize, phase, pass, layer, {weight(param)}, {w});
  p_.ops[id].param = param;
  p_.ops[id].m = pt.numel();
  return w;
}

OpId StepBuilder::linear(const char* label, Phase phase, Pass pass, std::int32_t l, TensorId x, std::int32_t param,
                         TensorId y, std::int64_t rows, std::int64_t n, std::int64_t k, std::int32_t bias) {
  const TensorId ws = policy_.executable ? workspace_ : kNoTensor;
  const TensorId w = dense_weight(param, phase, pass, l);
  const OpId id = matmul(label, OpCode::linear, phase, pass, l, {x, w, weight_or_none(bias), ws}, {y}, rows, n, k);
  if (!adapted(param)) return id;
  const auto [pa, pb] = adapter_of_[static_cast<std::size_t>(param)];
  const std::int64_t r = s_.adapter.rank;
  const bool array = loop_ != kNone;  // kept per chunk when the linear runs in a chunk loop
  const DType out_dtype = p_.tensors[y].dtype;
  const DType dtype = storage_.weights;  // the adapters' dtype
  const TensorKind kept = pass == Pass::recompute && phase == Phase::backward ? TensorKind::transient : TensorKind::saved;
  TensorId xin = x, mask = kNoTensor;
  if (s_.profile == Profile::pytorch) {
    if (dtype != p_.tensors[x].dtype) {
      xin = tensor("lora.x.cast", kept, dtype, rows * k, l, pass, array);
      autograd_op("lora.x.cast", OpKind::elementwise, phase, pass, l, {x}, {xin});
    }
    if (s_.adapter.dropout > 0) {
      mask = tensor("lora.dropout.mask", kept, DType::int8, rows * k, l, pass, array);
      const TensorId dropped = tensor("lora.dropout", kept, dtype, rows * k, l, pass, array);
      autograd_op("lora.dropout", OpKind::elementwise, phase, pass, l, {xin}, {dropped, mask});
      xin = dropped;
    }
  }
  const TensorId a = tensor("lora.a", kept, dtype, rows * r, l, pass, array);
  matmul("lora.A", OpCode::linear, phase, pass, l, {xin, weight(pa), ws}, {a}, rows, r, k);
  const TensorId b = tensor("lora.b", TensorKind::transient, dtype, rows * n, l, pass, array);
  matmul("lora.B", OpCode::linear, phase, pass, l, {a, weight(pb), ws}, {b}, rows, n, r);
  if (s_.profile == Profile::pytorch) {
    // result + lora_B(...) * scaling: the scaled branch, then the sum (in the adapters' dtype),
    // cast back to the base's dtype when they differ; modelled as added into y.
    const TensorId scaled = tensor("lora.scaled", TensorKind::transient, dtype, rows * n, l, pass, array);
    autograd_op("lora.scale", OpKind::elementwise, phase, pass, l, {b}, {scaled});
    if (dtype != out_dtype) {
      const TensorId sum = tensor("lora.sum", TensorKind::transient, dtype, rows * n, l, pass, array);
      autograd_op("lora.add", OpKind::elementwise, phase, pass, l, {y, scaled}, {sum});
      autograd_op("lora.cast", OpKind::elementwise, phase, pass, l, {sum}, {y});
    } else {
      autograd_op("lora.add", OpKind::elementwise, phase, pass, l, {y, scaled}, {y});
    }
  } else {
    const OpId scaled = op("lora.scale", OpCode::scale, phase, pass, l, {b}, {b});
    p_.ops[scaled].scale = lora_scale();
    op("lora.add", OpCode::residual_add, phase, pass, l, {y, b}, {y});
  }
  adapter_state(param) = {chunk_key(), x, xin, a, kNoTensor, kNoTensor, mask};
  return id;
}

StepBuilder::AdapterForward& StepBuilder::adapter_state(std::int32_t param) {
  std::vector<AdapterForward>& kept_by = adapter_fwd_[static_cast<std::size_t>(param)];
  const std::int64_t key = chunk_key();
  const auto found =
      std::find_if(kept_by.begin(), kept_by.end(), [&](const AdapterForward& f) { return f.first_chunk == key; });
  if (found != kept_by.end()) return *found;
  kept_by.push_back({key});
  return kept_by.back();
}

void StepBuilder::adapter_dx(std::int32_t param, std::int32_t l, Pass pass, TensorId da, TensorId dx, std::int64_t rows,
                             std::int64_t k) {
  const std::int32_t pa = adapter_of_[static_cast<std::size_t>(param)].first;
  const TensorId ws = policy_.executable ? workspace_ : kNoTensor;
  if (s_.profile == Profile::pytorch) {
    // The branch's input gradient is its own tensor (in the adapters' dtype), which autograd adds
    // into dx.
    const TensorId dxa = tensor("lora.dx", TensorKind::transient, storage_.weights, rows * k, l, pass, loop_ != kNone);
    matmul("lora.A.dx", OpCode::linear_dx, Phase::backward, pass, l, {da, weight(pa), ws}, {dxa}, rows, k,
           s_.adapter.rank);
    // Through lora_dropout's mask (kNoTensor: none, or the branch re-run without it).
    autograd_op("lora.dx.add", OpKind::elementwise, Phase::backward, pass, l, {dx, dxa, adapter_state(param).mask},
                {dx});
  } else {
    matmul("lora.A.dx", OpCode::linear_dx, Phase::backward, pass, l, {da, weight(pa), ws}, {dx}, rows, k,
           s_.adapter.rank);
  }
}

OpId StepBuilder::linear_dx(const char* label, Phase phase, Pass pass, std::int32_t l, TensorId dy, std::int32_t param,
                            std::initializer_list<TensorId> outputs, std::int64_t rows, std::int64_t n,
                            std::int64_t k) {
  const TensorId ws = policy_.executable ? workspace_ : kNoTensor;
  const TensorId w = dense_weight(param, phase, pass, l);
  const OpId id = matmul(label, OpCode::linear_dx, phase, pass, l, {dy, w, ws}, outputs, rows, n, k);
  if (!adapted(param)) return id;
  // The branch's part of dx: now if linear_dw already formed da, else when it does.
  AdapterForward& st = adapter_state(param);
  const TensorId dx = *outputs.begin();
  if (st.da != kNoTensor) {
    const TensorId da = st.da;
    st.da = kNoTensor;
    adapter_dx(param, l, pass, da, dx, rows, n);  // dx is rows x n (the linear's input width)
  } else {
    st.dx = dx;
  }
  return id;
}

void StepBuilder::linear_dw(const char* label, Phase phase, Pass pass, std::int32_t l, TensorId dy, TensorId x,
                            std::int32_t param, std::int64_t m, std::int64_t n, std::int64_t k, bool in_place) {
  if (adapted(param)) {
    // The adapter's gradients from the branch's forward over this input: kept from the forward
    // when it ran on this very tensor, else (the input recomputed in backward) run again here.
    const auto [pa, pb] = adapter_of_[static_cast<std::size_t>(param)];
    const std::int64_t r = s_.adapter.rank;
    const DType dtype = storage_.weights;
    const TensorId ws = policy_.executable ? workspace_ : kNoTensor;
    AdapterForward st = adapter_state(param);
    TensorId xin = st.x, a = st.a;
    if (st.source != x || a == kNoTensor) {
      adapter_state(param).mask = kNoTensor;  // the input recomputed: the branch re-runs without dropout
      xin = x;
      if (s_.profile == Profile::pytorch && dtype != p_.tensors[x].dtype) {
        xin = tensor("lora.x.cast", TensorKind::transient, dtype, k * n, l, Pass::recompute, loop_ != kNone);
        autograd_op("lora.x.cast", OpKind::elementwise, phase, Pass::recompute, l, {x}, {xin});
      }
      a = tensor("lora.a", TensorKind::transient, dtype, k * r, l, Pass::recompute, loop_ != kNone);
      matmul("lora.A", OpCode::linear, phase, Pass::recompute, l, {xin, weight(pa), ws}, {a}, k, r, n);
    }
    // dy is k x m (rows x out), x is k x n (rows x in). The branch's output gradient is dy
    // scaled by alpha / r (autograd's mul backward: a new tensor in the adapters' dtype).
    const TensorId dys = tensor("lora.dy.scaled", TensorKind::transient,
                                s_.profile == Profile::pytorch ? dtype : p_.tensors[dy].dtype, k * m, l, pass,
                                loop_ != kNone);
    if (s_.profile == Profile::pytorch) {
      autograd_op("lora.scale.grad", OpKind::elementwise, phase, pass, l, {dy}, {dys});
    } else {
      const OpId scaled = op("lora.scale.grad", OpCode::scale, phase, pass, l, {dy}, {dys});
      p_.ops[scaled].scale = lora_scale();
    }
    const TensorId da = tensor("lora.da", TensorKind::transient, dtype, k * r, l, pass, loop_ != kNone);
    matmul("lora.B.dx", OpCode::linear_dx, phase, pass, l, {dys, weight(pb), ws}, {da}, k, r, m);
    {
      const auto [g, partial] = grad_outputs(pb, l);
      matmul("lora.B.dw", OpCode::linear_dw, phase, pass, l, {dys, a, ws}, {g, partial}, m, r, k);
    }
    {
      const auto [g, partial] = grad_outputs(pa, l);
      matmul("lora.A.dw", OpCode::linear_dw, phase, pass, l, {da, xin, ws}, {g, partial}, r, n, k);
    }
    AdapterForward& kept = adapter_state(param);
    if (kept.dx != kNoTensor) {
      const TensorId dx = kept.dx;
      kept.dx = kNoTensor;
      adapter_dx(param, l, pass, da, dx, k, n);
    } else {
      kept.da = da;
    }
  }
  if (!trains(param)) return;
  const auto [g, partial] = grad_outputs(param, l, in_place);
  const TensorId ws = policy_.executable ? workspace_ : kNoTensor;
  matmul(label, OpCode::linear_dw, phase, pass, l, {dy, x, ws}, {g, partial}, m, n, k);
}

std::pair<TensorId, TensorId> StepBuilder::grad_outputs(std::int32_t param, std::int32_t layer, bool in_place) {
  if (!trains(param)) return {kNoTensor, kNoTensor};
  const bool exists = has_grad(param) && !in_place && policy_.partial_grads;
  const TensorId g = grad(param, layer);
  if (!exists) return {g, kNoTensor};
  // A gradient already there: the new one is a separate tensor, added into .grad.
  const TensorId partial = tensor("weight.grad.partial", TensorKind::workspace, *storage_.gradients,
                                  p_.params[static_cast<std::size_t>(param)].numel(), layer, Pass::backward);
  return {g, partial};
}

OpId StepBuilder::eager_matmul(const char* label, OpCode code, Phase phase, Pass pass, std::int32_t l,
                           std::initializer_list<TensorId> inputs, std::initializer_list<TensorId> outputs,
                           std::int64_t m, std::int64_t n, std::int64_t k) {
  const OpId id = matmul(label, code, phase, pass, l, inputs, outputs, m, n, k);
  p_.ops[id].flops_multiplier = static_cast<double>(B_ * heads_);
  return id;
}

OpId StepBuilder::attention_op(OpCode code, Pass pass, std::int32_t l, std::initializer_list<TensorId> inputs,
                           std::initializer_list<TensorId> outputs) {
  MSTPLAN_CHECK(code == OpCode::attention || code == OpCode::attention_grad, "attention_op with another code");
  const bool forward = code == OpCode::attention;
  const OpId id = op(forward ? "attention" : "attention.grad", code, forward ? Phase::forward : Phase::backward, pass,
                     l, inputs, outputs);
  Op& o = p_.ops[id];
  o.m = B_ * heads_;
  o.n = queries_;
  o.k = A_;
  o.head_dim = m_.head_dim;
  o.window = window(l);
  return id;
}

OpId StepBuilder::loss_op(OpCode code, Pass pass, std::initializer_list<TensorId> inputs,
                      std::initializer_list<TensorId> outputs, std::int64_t rows) {
  const OpId id = op("lm_head.loss", code, Phase::loss, pass, kNone, inputs, outputs);
  p_.ops[id].m = rows;
  p_.ops[id].n = m_.vocab_size;
  return id;
}

void StepBuilder::begin_loop(ChunkedBlock block, const ChunkClass& c) {
  MSTPLAN_CHECK(loop_ == kNone, "nested loops");
  Loop l;
  l.first_op = static_cast<OpId>(p_.ops.size());
  l.iterations = c.iterations;
  l.first_chunk = c.first_chunk;
  l.rows = c.positions;
  l.block = block;
  p_.loops.push_back(l);
  loop_ = static_cast<std::int32_t>(p_.loops.size() - 1);
}

void StepBuilder::prealloc(const char* label, Phase phase, Pass pass, std::int32_t layer,
                       std::initializer_list<TensorId> tensors) {
  op(label, OpCode::zero, phase, pass, layer, {}, tensors);
}

void StepBuilder::set_output(std::int32_t l, TensorId out) {
  if (l + 1 < m_.num_layers) inputs_[static_cast<std::size_t>(l + 1)] = out;
  else final_hidden_ = out;
}

std::pair<TensorId, TensorId> StepBuilder::flash_backward_workspaces(std::int32_t l) {
  const TensorId acc = tensor("attn.dq_accum", TensorKind::workspace, DType::fp32, T_ * qd_, l, Pass::backward);
  if (ulysses()) p_.tensors[acc].split = Split::all_positions;  // attention's rows: all positions, the rank's heads
  const TensorId delta =
      tensor("attn.delta", TensorKind::workspace, DType::fp32, B_ * heads_ * queries_, l, Pass::backward);
  return {acc, delta};
}

TensorId StepBuilder::all_positions_tensor(const char* label, TensorKind kind, DType dtype, std::int64_t elements,
                                  std::int32_t layer, Pass pass) {
  MSTPLAN_CHECK(ulysses() || context(), "all-positions tensor {} with one rank per sequence", label);
  const TensorId t = tensor(label, kind, dtype, elements, layer, pass);
  p_.tensors[t].split = Split::all_positions;
  return t;
}

void StepBuilder::all_to_all(const char* label, Phase phase, Pass pass, std::int32_t l,
                             std::initializer_list<TensorId> inputs, std::initializer_list<TensorId> outputs) {
  MSTPLAN_CHECK(ulysses(), "all-to-all {} without sequence parallelism", label);
  const OpId id = op(label, OpCode::all_to_all, phase, pass, l, inputs, outputs);
  Op& o = p_.ops[id];
  std::int64_t in_bytes = 0, out_bytes = 0;
  for (TensorId t : p_.inputs(o)) in_bytes += p_.tensors[t].bytes;
  for (TensorId t : p_.outputs(o)) out_bytes += p_.tensors[t].bytes;
  MSTPLAN_CHECK(in_bytes == out_bytes, "all-to-all {} sends {} bytes and receives {}", label, in_bytes, out_bytes);
  o.m = par_.sp;
  o.n = in_bytes;  // one rank's send buffer (Note [Collective time])
}

std::tuple<TensorId, TensorId, TensorId> StepBuilder::qkv_to_heads(std::int32_t l, Pass pass, TensorKind kind,
                                                                   DType dtype, TensorId q, TensorId k, TensorId v) {
  for (TensorId t : {q, k, v}) p_.tensors[t].kind = TensorKind::transient;
  TensorId ks = k, vs = v;
  if (m_.num_kv_heads < par_.sp) {
    ks = tensor("attn.k.replicated", TensorKind::transient, dtype, kv_heads_elements(), l, pass);
    vs = tensor("attn.v.replicated", TensorKind::transient, dtype, kv_heads_elements(), l, pass);
    op("attn.kv.replicate", OpCode::repeat_kv, Phase::forward, pass, l, {k, v}, {ks, vs});
  }
  const TensorId qh = all_positions_tensor("attn.q.heads", kind, dtype, T_ * qd_, l, pass);
  const TensorId kh = all_positions_tensor("attn.k.heads", kind, dtype, kv_heads_elements(), l, pass);
  const TensorId vh = all_positions_tensor("attn.v.heads", kind, dtype, kv_heads_elements(), l, pass);
  all_to_all("attn.qkv.all_to_all", Phase::forward, pass, l, {q, ks, vs}, {qh, kh, vh});
  return {qh, kh, vh};
}

void StepBuilder::grads_to_sequence(std::int32_t l, DType dtype, std::array<TensorId, 3> heads,
                                    std::array<TensorId, 3> sequence) {
  TensorId dk = sequence[1], dv = sequence[2];
  const bool replicated = m_.num_kv_heads < par_.sp;
  if (replicated) {
    dk = tensor("attn.dk.replicated", TensorKind::transient, dtype, kv_heads_elements(), l, Pass::backward);
    dv = tensor("attn.dv.replicated", TensorKind::transient, dtype, kv_heads_elements(), l, Pass::backward);
  }
  all_to_all("attn.dqkv.all_to_all", Phase::backward, Pass::backward, l, {heads[0], heads[1], heads[2]},
             {sequence[0], dk, dv});
  if (replicated) {
    op("attn.kv.replicate.grad", OpCode::repeat_kv_grad, Phase::backward, Pass::backward, l, {dk, dv},
       {sequence[1], sequence[2]});
  }
}

std::pair<TensorId, TensorId> StepBuilder::gather_kv(std::int32_t l, Pass pass, TensorId k, TensorId v) {
  MSTPLAN_CHECK(context(), "gathered keys without context parallelism");
  const TensorId kg = all_positions_tensor("attn.k.gathered", TensorKind::transient, act_, B_ * A_ * kvd_, l, pass);
  const TensorId vg = all_positions_tensor("attn.v.gathered", TensorKind::transient, act_, B_ * A_ * kvd_, l, pass);
  const Phase phase = pass == Pass::backward ? Phase::backward : Phase::forward;
  const OpId id = op("attn.kv.all_gather", OpCode::all_gather, phase, pass, l, {k, v}, {kg, vg});
  p_.ops[id].m = par_.cp;
  p_.ops[id].n = p_.tensors[kg].bytes + p_.tensors[vg].bytes;  // the gathered buffers (Note [Collective time])
  return {kg, vg};
}

void StepBuilder::scatter_kv_grads(std::int32_t l, std::array<TensorId, 2> gathered, std::array<TensorId, 2> mine) {
  const OpId id = op("attn.dkv.reduce_scatter", OpCode::reduce_scatter, Phase::backward, Pass::backward, l,
                     {gathered[0], gathered[1]}, {mine[0], mine[1]});
  p_.ops[id].m = par_.cp;
  p_.ops[id].n = p_.tensors[gathered[0]].bytes + p_.tensors[gathered[1]].bytes;
}

void StepBuilder::end_loop() {
  p_.loops[static_cast<std::size_t>(loop_)].end_op = static_cast<OpId>(p_.ops.size());
  loop_ = kNone;
}

TensorId StepBuilder::grad(std::int32_t param, std::int32_t layer) {
  const auto i = static_cast<std::size_t>(param);
  if (!grad_created_[i]) {
    const ParamTensor& pt = p_.params[i];
    grads_[i] = tensor("grad", TensorKind::gradient, *storage_.gradients, pt.numel(), layer, Pass::backward);
    p_.tensors[grads_[i]].param = param;
    grad_created_[i] = true;
  }
  return grads_[i];
}

void StepBuilder::optimizer_op(std::int32_t param, Phase phase) {
  if (storage_.host_optimizer) {
    host_optimizer_op(param);
    return;
  }
  const auto i = static_cast<std::size_t>(param);
  const std::int32_t layer = p_.params[i].layer >= 0 ? static_cast<std::int32_t>(p_.params[i].layer) : kNone;
  const bool sgd = s_.optimizer == OptimizerKind::sgd;
  const TensorId g = par_.shards_gradients() ? grad_shards_[i] : grads_[i];
  MSTPLAN_CHECK(g != kNoTensor, "optimizer step for {} without a gradient", p_.params[i].name);
  const TensorId w = weights_[i];
  // (m, v), (m+v, master), (none, master) or none: kNoTensor operands are dropped.
  const TensorId first = states_.empty() ? kNoTensor : states_[2 * i];
  const TensorId second = states_.empty() || (first == kNoTensor && !storage_.master) ? kNoTensor : states_[2 * i + 1];
  const OpId id = op(sgd ? "sgd" : "adamw", sgd ? OpCode::sgd : OpCode::adamw, phase, Pass::optimizer, layer,
                     {g, w, first, second}, {w, first, second});
  p_.ops[id].param = param;
  const std::int64_t updated = par_.shards_optimizer() ? par_.shard_numel(p_.params[i].numel()) : p_.params[i].numel();
  p_.ops[id].m = updated;
  if (policy_.adamw_temporaries && s_.optimizer == OptimizerKind::adamw) {
    // torch's single-tensor AdamW (one hook per parameter): exp_avg_sq.sqrt() and its division by
    // the bias correction are two temporaries the size of the parameter (of its shard).
    const TensorId temp = tensor("adamw.denom", TensorKind::workspace, storage_.weights, 2 * updated, layer,
                                 Pass::optimizer);
    push_operands(id, {}, std::array{temp});
  }
  gather_updated(param, phase);
}

void StepBuilder::offload_grad(std::int32_t param, TensorId reduced) {
  const auto i = static_cast<std::size_t>(param);
  const std::int32_t layer = p_.params[i].layer >= 0 ? static_cast<std::int32_t>(p_.params[i].layer) : kNone;
  MSTPLAN_CHECK(p_.tensors[reduced].bytes == p_.tensors[host_grads_[i]].bytes, "gradient {} offloaded into {} bytes",
                p_.params[i].name, p_.tensors[host_grads_[i]].bytes);
  const OpId id = op("grad.offload", OpCode::offload, Phase::backward, Pass::backward, layer, {reduced}, {host_grads_[i]});
  p_.ops[id].param = param;
}

void StepBuilder::host_optimizer_op(std::int32_t param) {
  const auto i = static_cast<std::size_t>(param);
  const std::int32_t layer = p_.params[i].layer >= 0 ? static_cast<std::int32_t>(p_.params[i].layer) : kNone;
  const TensorId mv = states_[2 * i], master = states_[2 * i + 1];
  const std::int64_t updated = par_.shards_optimizer() ? par_.shard_numel(p_.params[i].numel()) : p_.params[i].numel();
  if (storage_.host_weights) {
    // offload_param: the weights are host memory, and CPU Adam writes them in place.
    const OpId id = op("adamw.host", OpCode::adamw, Phase::optimizer, Pass::optimizer, layer,
                       {host_grads_[i], master, mv}, {master, mv, weights_[i]});
    p_.ops[id].param = param;
    p_.ops[id].m = updated;
    return;
  }
  // CPU Adam writes the new weights in the device's dtype too, staged in host memory, then copied.
  const TensorId staged = tensor("weight.host", TensorKind::transient, storage_.weights, updated, layer, Pass::optimizer,
                                 false, Device::host);
  const OpId id = op("adamw.host", OpCode::adamw, Phase::optimizer, Pass::optimizer, layer, {host_grads_[i], master, mv},
                     {master, mv, staged});
  p_.ops[id].param = param;
  p_.ops[id].m = updated;
  // The rank's shard of the weights (ZeRO-3, one GPU: the whole device weight) comes back; with
  // ZeRO-1/2 its full weight is then all-gathered (gather_updated).
  TensorId target = weights_[i];
  if (p_.tensors[target].elements != updated) {
    target = tensor("weight.shard", TensorKind::transient, storage_.weights, updated, layer, Pass::optimizer);
  }
  const OpId up = op("weight.upload", OpCode::prefetch, Phase::optimizer, Pass::optimizer, layer, {staged}, {target});
  p_.ops[up].param = param;
  if (target != weights_[i]) {
    const OpId g = op("weight.all_gather", OpCode::all_gather, Phase::optimizer, Pass::optimizer, layer, {target},
                      {weights_[i]});
    p_.ops[g].param = param;
    p_.ops[g].m = par_.gpus;
    p_.ops[g].n = p_.tensors[weights_[i]].bytes;
  }
}

void StepBuilder::gather_updated(std::int32_t param, Phase phase) {
  if (!par_.shards_optimizer() || par_.shards_weights()) return;
  const auto i = static_cast<std::size_t>(param);
  const std::int32_t layer = p_.params[i].layer >= 0 ? static_cast<std::int32_t>(p_.params[i].layer) : kNone;
  const TensorId w = weights_[i];
  const OpId id = op("weight.all_gather", OpCode::all_gather, phase, Pass::optimizer, layer, {w}, {w});
  p_.ops[id].param = param;
  p_.ops[id].m = par_.gpus;
  p_.ops[id].n = p_.tensors[w].bytes;
}

void StepBuilder::gather(const std::vector<std::int32_t>& params, Pass pass, std::int32_t layer) {
  if (!gathers_weights() || params.empty()) return;
  const Phase phase = pass == Pass::forward ? Phase::forward : Phase::backward;
  std::vector<TensorId> shards, full;
  std::int64_t bytes = 0;
  for (std::int32_t param : params) {
    const auto i = static_cast<std::size_t>(param);
    if (gathered_[i] != kNoTensor) continue;  // still gathered (a tied embedding)
    gathered_[i] = tensor("gathered", TensorKind::transient, storage_.weights, p_.params[i].numel(), layer, pass);
    p_.tensors[gathered_[i]].param = param;
    shards.push_back(weights_[i]);
    full.push_back(gathered_[i]);
    bytes += p_.tensors[gathered_[i]].bytes;
  }
  if (full.empty()) return;
  if (storage_.host_weights) {
    // offload_param: the host shards are copied to the device first (on one GPU straight into
    // the weights the kernels read; with ZeRO-3 into device shards the all-gather then reads).
    std::vector<TensorId> device_shards = full;
    if (par_.shards_weights()) {
      for (std::size_t k = 0; k < shards.size(); ++k) {
        device_shards[k] = tensor("shard.device", TensorKind::transient, storage_.weights,
                                  p_.tensors[shards[k]].elements, layer, pass);
      }
    }
    for (std::size_t k = 0; k < shards.size(); ++k) {  // one copy per parameter
      const OpId up = open_op("weights.upload", OpCode::prefetch, OpKind::copy_to_device, phase, pass, layer);
      push_operands(up, std::span(&shards[k], 1), std::span(&device_shards[k], 1));
      p_.ops[up].param = p_.tensors[full[k]].param;
    }
    if (!par_.shards_weights()) return;
    shards = std::move(device_shards);
  }
  const OpId id = open_op("weights.all_gather", OpCode::all_gather, OpKind::collective, phase, pass, layer);
  push_operands(id, shards, full);
  p_.ops[id].m = par_.gpus;
  p_.ops[id].n = bytes;
}

void StepBuilder::release(const std::vector<std::int32_t>& params) {
  if (!gathers_weights()) return;
  for (std::int32_t param : params) gathered_[static_cast<std::size_t>(param)] = kNoTensor;
}

void StepBuilder::run_updates(std::vector<std::int32_t>& params) {
  for (std::int32_t param : params) optimizer_op(param, Phase::backward);
  params.clear();
}

void StepBuilder::grad_done(std::int32_t param) {
  if (adapted(param)) {
    const auto [pa, pb] = adapter_of_[static_cast<std::size_t>(param)];
    grad_done(pa);
    grad_done(pb);
  }
  if (!trains(param)) return;
  if (par_.gpus == 1) {
    if (storage_.host_optimizer) offload_grad(param, grads_[static_cast<std::size_t>(param)]);
    if (s_.optimizer_in_backward) optimizer_op(param, Phase::backward);
    return;
  }
  // The complete gradient is summed over the ranks: all-reduced in place (ZeRO-0/1), or
  // reduce-scattered into this rank's shard (ZeRO-2/3), after which the full one is dead.
  const auto i = static_cast<std::size_t>(param);
  const TensorId g = grads_[i];
  MSTPLAN_CHECK(g != kNoTensor, "gradient {} done before it was written", p_.params[i].name);
  const std::int32_t layer = p_.params[i].layer >= 0 ? static_cast<std::int32_t>(p_.params[i].layer) : kNone;
  OpId id = 0;
  if (par_.shards_gradients()) {
    if (grad_shards_[i] == kNoTensor) {
      grad_shards_[i] = tensor("grad.shard", TensorKind::gradient, *storage_.gradients,
                               par_.shard_numel(p_.params[i].numel()), layer, Pass::backward);
      p_.tensors[grad_shards_[i]].param = param;
    }
    id = op("grad.reduce_scatter", OpCode::reduce_scatter, Phase::backward, Pass::backward, layer, {g}, {grad_shards_[i]});
  } else {
    id = op("grad.all_reduce", OpCode::all_reduce, Phase::backward, Pass::backward, layer, {g}, {g});
  }
  p_.ops[id].param = param;
  p_.ops[id].m = par_.gpus;
  p_.ops[id].n = p_.tensors[g].bytes;
  if (storage_.host_optimizer) offload_grad(param, grad_shards_[i]);
  if (s_.optimizer_in_backward) queued_updates_.push_back(param);
}

// Static tensors: outputs of step.begin. Optimizer state is kept per parameter as two tensors
// (m and v; with mixed precision m and v together, then the fp32 master), so that per-parameter
// updates read exactly their own state.
void StepBuilder::static_tensors() {
  // The parameter list depends on the model only: kept per thread for the last model (a search
  // builds hundreds of programs of one model) and copied into the program's, whose strings a
  // recycled program already has room for.
  thread_local ModelSpec listed_model;
  thread_local std::vector<ParamTensor> listed;
  if (listed.empty() || !(listed_model == m_)) {
    listed = parameters(m_);
    listed_model = m_;
  }
  p_.params = listed;
  const std::size_t base_count = p_.params.size();
  if (s_.adapter.lora()) {
    thread_local ModelSpec adapted_model;
    thread_local AdapterSetup adapted_setup;
    thread_local std::vector<ParamTensor> adapters;
    if (adapters.empty() || !(adapted_model == m_) || !(adapted_setup == s_.adapter)) {
      adapters = adapter_parameters(m_, s_.adapter);
      adapted_model = m_;
      adapted_setup = s_.adapter;
    }
    first_adapter_ = static_cast<std::int32_t>(base_count);
    p_.params.insert(p_.params.end(), adapters.begin(), adapters.end());
  }
  const std::size_t n = p_.params.size();
  weights_.resize(n);
  grads_.assign(n, kNoTensor);
  grad_created_.assign(n, false);
  grad_shards_.assign(n, kNoTensor);
  host_grads_.assign(n, kNoTensor);
  gathered_.assign(n, kNoTensor);
  queued_updates_.clear();
  // What one rank keeps of a parameter's weight, and of its optimizer state and master copy.
  auto kept = [&](std::int64_t numel, bool sharded) { return sharded ? par_.shard_numel(numel) : numel; };
  const bool adam = storage_.adam_state.has_value();
  if (adam || storage_.master) states_.assign(2 * n, kNoTensor);
  const Device state_device = storage_.host_optimizer ? Device::host : Device::device;
  std::vector<TensorId> outs;
  for (std::size_t i = 0; i < n; ++i) {
    const ParamTensor& pt = p_.params[i];
    const auto layer = static_cast<std::int32_t>(pt.layer);
    const auto param = static_cast<std::int32_t>(i);
    const ParameterStorage& storage = i < base_count ? base_storage_ : storage_;
    weights_[i] = tensor(par_.shards_weights() ? "shard" : "", TensorKind::weight, storage.weights,
                         kept(pt.numel(), par_.shards_weights()), layer, Pass::forward, false,
                         storage.host_weights ? Device::host : Device::device);
    p_.tensors[weights_[i]].param = param;
    if (quantized(param)) {
      // The packed values and their scales (Note [Quantized base weights]), counted as bytes.
      Tensor& w = p_.tensors[weights_[i]];
      w.dtype = DType::int8;
      w.bytes = base_weight_bytes(pt, s_.adapter);
      w.elements = w.bytes;
    }
    outs.push_back(weights_[i]);
    if (!trains(param)) continue;
    if (adam) {
      // m and v, each adam_moment_bytes() (Note [Static bytes per parameter]).
      TensorId mv = tensor(storage_.master ? "adam_mv" : "adam_m", TensorKind::optimizer_state, DType::fp32, 0, layer,
                           Pass::forward, false, state_device);
      TensorId second = kNoTensor;
      const std::int64_t numel = kept(pt.numel(), par_.shards_optimizer());
      const std::int64_t state_bytes = adam_moment_bytes(numel, *storage_.adam_state);
      p_.tensors[mv].dtype = *storage_.adam_state;
      p_.tensors[mv].elements = numel;
      if (storage_.master) {
        p_.tensors[mv].bytes = 2 * state_bytes;
        second = tensor("master", TensorKind::master_weight, DType::fp32, numel, layer, Pass::forward, false,
                        state_device);
      } else {
        p_.tensors[mv].bytes = state_bytes;
        second = tensor("adam_v", TensorKind::optimizer_state, *storage_.adam_state, numel, layer, Pass::forward);
        p_.tensors[second].bytes = state_bytes;
      }
      p_.tensors[mv].param = param;
      p_.tensors[second].param = param;
      states_[2 * i] = mv;
      states_[2 * i + 1] = second;
      outs.push_back(mv);
      outs.push_back(second);
    } else if (storage_.master) {
      const TensorId master = tensor("master", TensorKind::master_weight, DType::fp32,
                                     kept(pt.numel(), par_.shards_optimizer()), layer, Pass::forward);
      p_.tensors[master].param = param;
      states_[2 * i + 1] = master;
      outs.push_back(master);
    }
    if (storage_.host_optimizer) {
      // The host's copy of the rank's gradient shard, in the gradients' dtype (CPU Adam reads it).
      host_grads_[i] = tensor("grad.host", TensorKind::gradient, *storage_.gradients,
                              kept(pt.numel(), par_.shards_gradients()), layer, Pass::forward, false, Device::host);
      p_.tensors[host_grads_[i]].param = param;
      outs.push_back(host_grads_[i]);
    }
    if (persistent_grads_ && par_.shards_gradients()) {
      grad_shards_[i] = tensor("grad.shard", TensorKind::gradient, *storage_.gradients, par_.shard_numel(pt.numel()),
                               layer, Pass::forward);
      p_.tensors[grad_shards_[i]].param = param;
      outs.push_back(grad_shards_[i]);
    } else if (persistent_grads_) {
      outs.push_back(grad(param, layer));
    }
  }
  if (s_.profile == Profile::pytorch && par_.gpus > 1 && par_.zero == ZeroStage::none && trained_) {
    // DDP's gradient buckets (gradient_as_bucket_view=False): a flat copy of every gradient.
    std::int64_t elements = 0;
    for (std::size_t j = 0; j < n; ++j) {
      if (trains(static_cast<std::int32_t>(j))) elements += p_.params[j].numel();
    }
    outs.push_back(tensor("ddp.buckets", TensorKind::workspace, *storage_.gradients, elements, kNone, Pass::forward));
  }
  tokens_ = tensor("tokens", TensorKind::data, policy_.token_ids, T_, kNone, Pass::forward);
  labels_ = tensor("labels", TensorKind::data, policy_.token_ids, T_, kNone, Pass::forward);
  workspace_ = tensor("gemm_workspace", TensorKind::workspace, DType::int8, kGemmWorkspaceBytes, kNone, Pass::forward);
  outs.push_back(tokens_);
  outs.push_back(labels_);
  outs.push_back(workspace_);
  static_outputs_ = std::move(outs);

  // Parameter indices per layer, in the order parameters() lists them.
  std::size_t i = 1;  // after embed.weight
  embed_param_ = 0;
  for (std::int64_t l = 0; l < m_.num_layers; ++l) {
    LayerParams lp{};
    auto next = [&]() { return static_cast<std::int32_t>(i++); };
    lp.attn_norm = next();
    if (m_.norm == NormKind::layernorm) next();
    lp.q = next();
    lp.k = next();
    lp.v = next();
    if (m_.qkv_bias) {
      lp.qb = next();
      lp.kb = next();
      lp.vb = next();
    }
    lp.o = next();
    if (m_.norms_per_layer == 4) {
      lp.attn_post_norm = next();
      if (m_.norm == NormKind::layernorm) next();
    }
    lp.mlp_norm = next();
    if (m_.norm == NormKind::layernorm) next();
    lp.gate = next();
    lp.up = next();
    lp.down = next();
    if (m_.norms_per_layer == 4) {
      lp.mlp_post_norm = next();
      if (m_.norm == NormKind::layernorm) next();
    }
    layer_params_.push_back(lp);
  }
  final_norm_param_ = static_cast<std::int32_t>(i);
  lm_head_param_ = m_.tied_embeddings ? embed_param_ : static_cast<std::int32_t>(base_count - 1);
  // Each adapted linear's A and B, in adapter_parameters()' order.
  adapter_of_.assign(n, {kNone, kNone});
  adapter_fwd_.resize(n);
  for (std::vector<AdapterForward>& kept_by : adapter_fwd_) kept_by.clear();
  if (first_adapter_ >= 0) {
    auto next = static_cast<std::int32_t>(first_adapter_);
    for (const LayerParams& lp : layer_params_) {
      const std::array<std::pair<LoraTarget, std::int32_t>, 7> linears = {{{LoraTarget::q, lp.q},
                                                                           {LoraTarget::k, lp.k},
                                                                           {LoraTarget::v, lp.v},
                                                                           {LoraTarget::o, lp.o},
                                                                           {LoraTarget::gate, lp.gate},
                                                                           {LoraTarget::up, lp.up},
                                                                           {LoraTarget::down, lp.down}}};
      for (const auto& [target, base] : linears) {
        if (!s_.adapter.adapts(target)) continue;
        adapter_of_[static_cast<std::size_t>(base)] = {next, next + 1};
        next += 2;
      }
    }
    MSTPLAN_CHECK(static_cast<std::size_t>(next) == n, "{} adapter parameters for {} slots", n - base_count,
                  next - first_adapter_);
  }
  layer_param_lists_.assign(static_cast<std::size_t>(m_.num_layers), {});
  for (std::size_t j = 0; j < n; ++j) {
    if (p_.params[j].layer >= 0) layer_param_lists_[static_cast<std::size_t>(p_.params[j].layer)].push_back(static_cast<std::int32_t>(j));
  }
  embed_params_ = {embed_param_};
  head_params_ = {final_norm_param_, lm_head_param_};
}
Program StepBuilder::build() {
  p_.batch = B_;
  p_.seq_len = A_;
  p_.profile = s_.profile;
  p_.data_parallel_ranks = par_.data_parallel();
  p_.sequence_parallel = par_.sequence_group();
  p_.mlp_chunks = chunk_count(plan_.mlp, S_);
  p_.lm_head_chunks = chunk_count(plan_.lm_head, labelled_);
  p_.tensors.reserve(static_cast<std::size_t>(m_.num_layers) * 64 + 4096);
  p_.ops.reserve(static_cast<std::size_t>(m_.num_layers) * 64 + 1024);
  const auto layers = static_cast<std::size_t>(m_.num_layers);
  inputs_.assign(layers, kNoTensor);
  host_copies_.assign(layers, kNoTensor);
  prefetched_.assign(layers, false);

  static_tensors();
  const OpId begin = open_op("step.begin", OpCode::begin, OpKind::begin, Phase::forward, Pass::forward, kNone);
  push_operands(begin, {}, static_outputs_);
  forward_begin();
  // ZeRO-3 gathers a block's weights one block ahead (FSDP's prefetch): while layer l runs,
  // layer l + 1's all-gather is in flight and both are live.
  const auto L = static_cast<std::int32_t>(m_.num_layers);
  gather(embed_params_, Pass::forward, kNone);
  embedding_forward();
  release(embed_params_);
  gather(layer_param_list(0), Pass::forward, 0);
  for (std::int32_t l = 0; l < L; ++l) {
    if (l + 1 < L) gather(layer_param_list(l + 1), Pass::forward, l + 1);
    else gather(head_params_, Pass::forward, kNone);
    layer_forward(l, Pass::forward);
    release(layer_param_list(l));
    if (offloaded(l)) offload(l);
  }
  lm_head();
  release(head_params_);
  gather(layer_param_list(L - 1), Pass::backward, L - 1);
  for (std::int32_t l = L - 1; l >= 0; --l) {
    // Offloaded checkpoints come back one layer ahead, so the copy overlaps this layer's work.
    if (offloaded(l) && !prefetched_[static_cast<std::size_t>(l)]) prefetch(l);
    if (l > 0 && offloaded(l - 1)) prefetch(l - 1);
    if (l > 0) gather(layer_param_list(l - 1), Pass::backward, l - 1);
    // Updates whose gradients were reduced before this layer run after it (several ranks).
    std::vector<std::int32_t> ready = std::move(queued_updates_);
    queued_updates_.clear();
    if (recomputed(l)) layer_forward(l, Pass::recompute);
    layer_backward(l);
    release(layer_param_list(l));
    run_updates(ready);
  }
  embedding_backward(upstream_);
  run_updates(queued_updates_);
  if (trained_ && !s_.optimizer_in_backward) optimizer_end();

  const OpId end = open_op("step.end", OpCode::end, OpKind::end, Phase::optimizer, Pass::optimizer, kNone);
  push_operands(end, static_outputs_, {});
  push_operands(end, std::array{loss_}, {});
  push_operands(end, held_, {});
  p_.tokens = tokens_;
  p_.labels = labels_;
  p_.loss = loss_;
  p_.gemm_workspace = workspace_;
  return std::move(p_);
}

void StepBuilder::offload(std::int32_t l) {
  // The checkpoint goes to host memory once the layer is done with it.
  const TensorId h = inputs_[static_cast<std::size_t>(l)];
  const TensorId host = tensor("input", TensorKind::checkpoint, policy_.residual, T_ * m_.hidden_size, l, Pass::forward,
                               false, Device::host);
  op("offload", OpCode::offload, Phase::forward, Pass::forward, l, {h}, {host});
  host_copies_[static_cast<std::size_t>(l)] = host;
}

void StepBuilder::prefetch(std::int32_t l) {
  const TensorId dev =
      tensor("input", TensorKind::checkpoint, policy_.residual, T_ * m_.hidden_size, l, Pass::backward);
  op("prefetch", OpCode::prefetch, Phase::backward, Pass::backward, l, {host_copies_[static_cast<std::size_t>(l)]},
     {dev});
  inputs_[static_cast<std::size_t>(l)] = dev;
  prefetched_[static_cast<std::size_t>(l)] = true;
}

void StepBuilder::optimizer_end() {
  const std::size_t first = first_adapter_ < 0 ? 0 : static_cast<std::size_t>(first_adapter_);  // the trained
  if (!policy_.foreach_adamw || s_.optimizer != OptimizerKind::adamw || storage_.host_optimizer) {
    for (std::size_t i = first; i < p_.params.size(); ++i) optimizer_op(static_cast<std::int32_t>(i), Phase::optimizer);
    return;
  }
  // torch.optim.AdamW, foreach: one pass over all parameters with one temporary list the size of
  // all parameters (exp_avg_sq_sqrt, in the parameters' dtype).
  std::int64_t elements = 0;
  for (std::size_t i = first; i < p_.params.size(); ++i) {
    const std::int64_t numel = p_.params[i].numel();
    elements += par_.shards_optimizer() ? par_.shard_numel(numel) : numel;
  }
  const TensorId temp = tensor("adamw.exp_avg_sq_sqrt", TensorKind::workspace, storage_.weights, elements, kNone,
                               Pass::optimizer);
  std::vector<TensorId> ins, outs;
  for (std::size_t i = first; i < p_.params.size(); ++i) {
    ins.push_back(par_.shards_gradients() ? grad_shards_[i] : grads_[i]);
    ins.push_back(weights_[i]);
    outs.push_back(weights_[i]);
    for (TensorId st : {states_[2 * i], states_[2 * i + 1]}) {
      if (st == kNoTensor) continue;
      ins.push_back(st);
      outs.push_back(st);
    }
  }
  outs.push_back(temp);
  const OpId id = open_op("adamw.foreach", OpCode::adamw, OpKind::optimizer, Phase::optimizer, Pass::optimizer, kNone);
  push_operands(id, ins, outs);
  p_.ops[id].m = elements;
  // zero_grad(set_to_none=True) then drops the gradients: they are not read after this op.
}

}  // namespace mstplan::detail

namespace mstplan {

Program build_program(const ModelSpec& model, const TrainingSetup& setup, const Plan& plan, std::int64_t seq_len) {
  return build_program(model, setup, plan, seq_len, Program{});
}

Program build_program(const ModelSpec& model, const TrainingSetup& setup, const Plan& plan, std::int64_t seq_len,
                      Program&& recycled) {
  MSTPLAN_CHECK(seq_len >= 2, "a step needs at least 2 positions, got {}", seq_len);
  const Parallelism& par = setup.parallel;
  MSTPLAN_CHECK(par.sp >= 1 && par.gpus % par.sp == 0 && seq_len % par.sp == 0 && model.num_heads % par.sp == 0 &&
                    (model.num_kv_heads % par.sp == 0 || par.sp % model.num_kv_heads == 0),
                "sequence parallelism {} over {} GPUs, {} positions, {} and {} heads", par.sp, par.gpus, seq_len,
                model.num_heads, model.num_kv_heads);
  MSTPLAN_CHECK(par.cp == 1 || (par.cp > 1 && par.sp == 1 && par.gpus % par.cp == 0 && seq_len % par.cp == 0 &&
                                setup.profile == Profile::native && setup.attention != AttentionKind::eager),
                "context parallelism {} over {} GPUs (sp {}), {} positions, profile {}, attention {}", par.cp, par.gpus,
                par.sp, seq_len, to_string(setup.profile), to_string(setup.attention));
  MSTPLAN_CHECK(!check_offload_optimizer(setup, "").has_value(), "optimizer offload with {} GPUs, ZeRO-{}", par.gpus,
                to_string(par.zero));
  MSTPLAN_CHECK(!check_model_relations(model).has_value(), "invalid model spec {}", model.name);
  MSTPLAN_CHECK(!check_adapter(setup, "").has_value(), "adapter setup the planner refuses: {}",
                check_adapter(setup, "")->message);
  MSTPLAN_CHECK(setup.precision != Precision::fp32 || setup.profile == Profile::native,
                "precision fp32 is modelled for the native profile only");
  return setup.profile == Profile::pytorch ? detail::build_pytorch(model, setup, plan, seq_len, std::move(recycled))
                                           : detail::build_native(model, setup, plan, seq_len, std::move(recycled));
}

}  // namespace mstplan
