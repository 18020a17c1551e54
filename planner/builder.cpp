#include "planner/builder.h"

#include <algorithm>
#include <cmath>

#include "planner/builder_internal.h"

// Note [Native step]
// ------------------
// What this project's runtime allocates and keeps, op by op (T = batch x seq tokens, d hidden,
// qd = heads x head_dim, kvd = kv_heads x head_dim, I intermediate, V vocabulary, R = tokens of a
// chunk; activations bf16, statistics fp32):
//   embedding          tokens -> h0 (T x d)                        keeps tokens (data)
//   attn_norm          h -> n1 (T x d), rstd1 (T fp32)              keeps h, n1, rstd1
//   attn.q/k/v         n1 -> q (T x qd), k, v (T x kvd)             keeps n1 (already kept)
//   attn.rope          rotates q, k in place                        nothing
//   attention (flash)  -> o (T x qd), lse (batch x heads x seq fp32) keeps q, k, v, o, lse
//   attention (eager)  scores (b x h x S x S fp32, transient) -> probs (bf16, kept) -> o
//   attn.o             o -> a (T x d)                               keeps o (already kept)
//   [gemma2] attn_post_norm  a -> a' , rstd                         keeps a, rstd
//   attn.residual      h + a' -> h_mid                              keeps h_mid
//   mlp_norm           h_mid -> n2, rstd2                           keeps n2, rstd2
//   mlp, per chunk     gate, up (R x I), act*up (R x I), down -> m (T x d, written by slices)
//                      paper mode keeps gate and up of every chunk; tiled keeps nothing (n2 is
//                      kept) and recomputes them in the chunk's backward; act*up is always
//                      recomputed from gate and up in backward.
//   [gemma2] mlp_post_norm  m -> m', rstd                          keeps m, rstd
//   mlp.residual       h_mid + m' -> next layer's input
//   final_norm         h_L -> nf, rstd                              keeps nf, rstd
//   lm_head, per chunk logits (R x V fp32); loss -> lse (R fp32)
//                      keep: logits and lse kept; recompute: lse kept, logits recomputed in
//                      backward; forward-grad: dlogits (R x V bf16) and dX (into T x d) formed in
//                      the forward pass, dW accumulated there; only dX is kept.
// An op that accumulates into a tensor (a weight gradient over chunks, dX of the LM head, the loss)
// lists it as an output only: the first write of an instance overwrites, later ones add.
// Backward mirrors it; activation gradients are transient. Flash attention's backward uses a
// dq accumulator (T x qd fp32) and a row statistic (batch x heads x seq fp32) as workspace.
// Full recompute keeps only each recomputed layer's input (a checkpoint, optionally offloaded to
// host) and reruns the layer's forward, without its output, before the layer's backward.
// Selective recompute keeps the attention tensors and norm statistics and recomputes the norm
// outputs and the MLP's intermediates (the MLP then behaves as tiled).

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

TensorId Builder::tensor(const char* label, TensorKind kind, DType dtype, std::int64_t elements, std::int32_t layer,
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

OpId Builder::open_op(const char* label, OpCode code, OpKind kind, Phase phase, Pass pass, std::int32_t layer) {
  Op o;
  o.label = label;
  o.code = s_.profile == Profile::pytorch ? OpCode::autograd : code;
  o.kind = kind;
  o.phase = phase;
  o.pass = pass;
  o.layer = layer;
  o.loop = loop_;
  o.io_begin = static_cast<std::uint32_t>(p_.io.size());
  p_.ops.push_back(o);
  return static_cast<OpId>(p_.ops.size() - 1);
}

void Builder::push_operands(OpId id, std::span<const TensorId> inputs, std::span<const TensorId> outputs) {
  Op& o = p_.ops[id];
  MSTPLAN_CHECK(id + 1 == p_.ops.size() && o.io_begin + o.inputs + o.outputs == p_.io.size(),
                "operands added to op {} after later ops", o.label);
  MSTPLAN_CHECK(inputs.empty() || o.outputs == 0, "inputs of op {} added after its outputs", o.label);
  for (TensorId t : inputs) {
    if (t == kNoTensor) continue;
    p_.io.push_back(t);
    ++o.inputs;
  }
  for (TensorId t : outputs) {
    if (t == kNoTensor) continue;
    p_.io.push_back(t);
    ++o.outputs;
  }
}

OpId Builder::op(const char* label, OpCode code, Phase phase, Pass pass, std::int32_t layer,
                 std::initializer_list<TensorId> inputs, std::initializer_list<TensorId> outputs) {
  const OpId id = open_op(label, code, op_kind(code), phase, pass, layer);
  push_operands(id, inputs, outputs);
  return id;
}

OpId Builder::autograd_op(const char* label, OpKind kind, Phase phase, Pass pass, std::int32_t layer,
                          std::initializer_list<TensorId> inputs, std::initializer_list<TensorId> outputs) {
  const OpId id = open_op(label, OpCode::autograd, kind, phase, pass, layer);
  push_operands(id, inputs, outputs);
  return id;
}

OpId Builder::matmul(const char* label, OpCode code, Phase phase, Pass pass, std::int32_t layer,
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

OpId Builder::eager_matmul(const char* label, OpCode code, Phase phase, Pass pass, std::int32_t l,
                           std::initializer_list<TensorId> inputs, std::initializer_list<TensorId> outputs,
                           std::int64_t m, std::int64_t n, std::int64_t k) {
  const OpId id = matmul(label, code, phase, pass, l, inputs, outputs, m, n, k);
  p_.ops[id].flops_multiplier = static_cast<double>(B_ * m_.num_heads);
  return id;
}

OpId Builder::attention_op(OpCode code, Pass pass, std::int32_t l, std::initializer_list<TensorId> inputs,
                           std::initializer_list<TensorId> outputs) {
  MSTPLAN_CHECK(code == OpCode::attention || code == OpCode::attention_grad, "attention_op with another code");
  const bool forward = code == OpCode::attention;
  const OpId id = op(forward ? "attention" : "attention.grad", code, forward ? Phase::forward : Phase::backward, pass,
                     l, inputs, outputs);
  Op& o = p_.ops[id];
  o.m = B_ * m_.num_heads;
  o.n = S_;
  o.k = S_;
  o.head_dim = m_.head_dim;
  o.window = window(l);
  return id;
}

void Builder::norm_grad_op(const char* label, Phase phase, std::int32_t l, std::initializer_list<TensorId> inputs,
                           TensorId dx, std::int32_t param) {
  op(label, OpCode::norm_grad, phase, Pass::backward, l, inputs, {dx, grad_if_trained(param, l)});
  if (trained_) grad_done(param, l);
}

OpId Builder::loss_op(OpCode code, Pass pass, std::initializer_list<TensorId> inputs,
                      std::initializer_list<TensorId> outputs, std::int64_t rows) {
  const OpId id = op("lm_head.loss", code, Phase::loss, pass, kNone, inputs, outputs);
  p_.ops[id].m = rows;
  p_.ops[id].n = m_.vocab_size;
  return id;
}

void Builder::begin_loop(ChunkedBlock block, const ChunkClass& c) {
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

void Builder::prealloc(const char* label, Phase phase, Pass pass, std::int32_t layer,
                       std::initializer_list<TensorId> tensors) {
  op(label, OpCode::zero, phase, pass, layer, {}, tensors);
}

void Builder::end_loop() {
  p_.loops[static_cast<std::size_t>(loop_)].end_op = static_cast<OpId>(p_.ops.size());
  loop_ = kNone;
}

TensorId Builder::grad(std::int32_t param, std::int32_t layer) {
  const auto i = static_cast<std::size_t>(param);
  if (!grad_created_[i]) {
    const ParamTensor& pt = p_.params[i];
    grads_[i] = tensor("grad", TensorKind::gradient, *storage_.gradients, pt.numel(), layer, Pass::backward);
    p_.tensors[grads_[i]].param = param;
    grad_created_[i] = true;
  }
  return grads_[i];
}

void Builder::optimizer_op(std::int32_t param, Phase phase) {
  const auto i = static_cast<std::size_t>(param);
  const std::int32_t layer = p_.params[i].layer >= 0 ? static_cast<std::int32_t>(p_.params[i].layer) : kNone;
  const bool sgd = s_.optimizer == OptimizerKind::sgd;
  const TensorId g = grads_[i];
  MSTPLAN_CHECK(g != kNoTensor, "optimizer step for {} without a gradient", p_.params[i].name);
  const TensorId w = weights_[i];
  // (m, v), (m+v, master), (none, master) or none: kNoTensor operands are dropped.
  const TensorId first = states_.empty() ? kNoTensor : states_[2 * i];
  const TensorId second = states_.empty() || (first == kNoTensor && !storage_.master) ? kNoTensor : states_[2 * i + 1];
  const OpId id = op(sgd ? "sgd" : "adamw", sgd ? OpCode::sgd : OpCode::adamw, phase, Pass::optimizer, layer,
                     {g, w, first, second}, {w, first, second});
  p_.ops[id].param = param;
  p_.ops[id].m = p_.params[i].numel();
  if (s_.profile == Profile::pytorch && s_.optimizer == OptimizerKind::adamw) {
    // torch's single-tensor AdamW (one hook per parameter): exp_avg_sq.sqrt() and its division by
    // the bias correction are two temporaries the size of the parameter.
    const TensorId temp = tensor("adamw.denom", TensorKind::workspace, storage_.weights, 2 * p_.params[i].numel(), layer,
                                 Pass::optimizer);
    push_operands(id, {}, std::array{temp});
  }
}

void Builder::grad_done(std::int32_t param, std::int32_t layer) {
  (void)layer;
  if (trained_ && s_.optimizer_in_backward) optimizer_op(param, Phase::backward);
}

// Static tensors: outputs of step.begin. Optimizer state is kept per parameter as two tensors
// (m and v; with mixed precision m and v together, then the fp32 master), so that per-parameter
// updates read exactly their own state.
void Builder::static_tensors() {
  p_.params = parameters(m_);
  const std::size_t n = p_.params.size();
  weights_.resize(n);
  grads_.assign(n, kNoTensor);
  grad_created_.assign(n, false);
  const bool adam = storage_.adam_state.has_value();
  if (adam || storage_.master) states_.assign(2 * n, kNoTensor);
  std::vector<TensorId> outs;
  for (std::size_t i = 0; i < n; ++i) {
    const ParamTensor& pt = p_.params[i];
    const auto layer = static_cast<std::int32_t>(pt.layer);
    const auto param = static_cast<std::int32_t>(i);
    weights_[i] = tensor("", TensorKind::weight, storage_.weights, pt.numel(), layer, Pass::forward);
    p_.tensors[weights_[i]].param = param;
    outs.push_back(weights_[i]);
    if (adam) {
      // m and v, each adam_moment_bytes() (Note [Static bytes per parameter]).
      TensorId mv = tensor(storage_.master ? "adam_mv" : "adam_m", TensorKind::optimizer_state, DType::fp32, 0, layer,
                           Pass::forward);
      TensorId second = kNoTensor;
      const std::int64_t numel = pt.numel();
      const std::int64_t state_bytes = adam_moment_bytes(numel, *storage_.adam_state);
      p_.tensors[mv].dtype = *storage_.adam_state;
      p_.tensors[mv].elements = numel;
      if (storage_.master) {
        p_.tensors[mv].bytes = 2 * state_bytes;
        second = tensor("master", TensorKind::master_weight, DType::fp32, numel, layer, Pass::forward);
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
      const TensorId master = tensor("master", TensorKind::master_weight, DType::fp32, pt.numel(), layer, Pass::forward);
      p_.tensors[master].param = param;
      states_[2 * i + 1] = master;
      outs.push_back(master);
    }
    if (persistent_grads_) {
      outs.push_back(grad(param, layer));
    }
  }
  // Token ids: int32 in our runtime, int64 in PyTorch (input_ids and labels are LongTensors).
  const DType ids = s_.profile == Profile::pytorch ? DType::int64 : DType::int32;
  tokens_ = tensor("tokens", TensorKind::data, ids, T_, kNone, Pass::forward);
  labels_ = tensor("labels", TensorKind::data, ids, T_, kNone, Pass::forward);
  workspace_ = tensor("gemm_workspace", TensorKind::workspace, DType::int8, kGemmWorkspaceBytes, kNone, Pass::forward);
  outs.push_back(tokens_);
  outs.push_back(labels_);
  outs.push_back(workspace_);
  static_outputs_.push_back(outs);

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
  lm_head_param_ = m_.tied_embeddings ? embed_param_ : static_cast<std::int32_t>(n - 1);
}

Program Builder::build() {
  p_.batch = B_;
  p_.seq_len = S_;
  p_.profile = s_.profile;
  p_.mlp_chunks = chunk_count(plan_.mlp, S_);
  p_.lm_head_chunks = chunk_count(plan_.lm_head, S_ - 1);
  p_.tensors.reserve(static_cast<std::size_t>(m_.num_layers) * 64 + 4096);
  p_.ops.reserve(static_cast<std::size_t>(m_.num_layers) * 64 + 1024);

  static_tensors();
  {
    const OpId begin = open_op("step.begin", OpCode::begin, OpKind::begin, Phase::forward, Pass::forward, kNone);
    push_operands(begin, {}, static_outputs_[0]);
  }
  layers_.resize(static_cast<std::size_t>(m_.num_layers));
  prefetched_.assign(layers_.size(), false);

  if (s_.profile == Profile::pytorch) {
    pt_build();
  } else {
    embedding_forward();
    for (std::int32_t l = 0; l < m_.num_layers; ++l) layer_forward(l, Pass::forward);
    lm_head();
    // The LM head leaves dh_L in upstream_; walk the layers back.
    for (std::int32_t l = static_cast<std::int32_t>(m_.num_layers) - 1; l >= 0; --l) layer_backward(l);
    embedding_backward(upstream_);
    if (trained_ && !s_.optimizer_in_backward) {
      for (std::size_t i = 0; i < p_.params.size(); ++i) optimizer_op(static_cast<std::int32_t>(i), Phase::optimizer);
    }
  }
  {
    const OpId end = open_op("step.end", OpCode::end, OpKind::end, Phase::optimizer, Pass::optimizer, kNone);
    std::vector<TensorId> ins = static_outputs_[0];
    ins.push_back(loss_);
    ins.insert(ins.end(), held_.begin(), held_.end());
    push_operands(end, ins, {});
  }
  p_.tokens = tokens_;
  p_.labels = labels_;
  p_.loss = loss_;
  p_.gemm_workspace = workspace_;
  return std::move(p_);
}

void Builder::embedding_forward() {
  const bool checkpoint = recomputed(0);
  TensorId h0 = tensor("input", checkpoint ? TensorKind::checkpoint : TensorKind::saved, act_, T_ * m_.hidden_size,
                       0, Pass::forward);
  op("embedding", OpCode::embedding, Phase::forward, Pass::forward, kNone, {tokens_, weight(embed_param_)}, {h0});
  layers_[0].input = h0;
}

void Builder::layer_forward(std::int32_t l, Pass pass) {
  LayerState& st = layers_[static_cast<std::size_t>(l)];
  const LayerParams& lp = layer_params_[static_cast<std::size_t>(l)];
  const std::int64_t d = m_.hidden_size;
  const bool recompute = recomputed(l);
  const bool keep = pass == Pass::recompute || !recompute;  // tensors read again by backward
  const TensorKind kept = keep ? TensorKind::saved : TensorKind::transient;
  const bool sel = selective(l);
  const TensorId h = st.input;

  // Attention block.
  const TensorId n1 = tensor("attn_norm.out", keep && !sel ? TensorKind::saved : TensorKind::transient, act_,
                             T_ * d, l, pass);
  const TensorId rstd1 = tensor("attn_norm.rstd", kept, DType::fp32, T_, l, pass);
  op("attn_norm", OpCode::norm, Phase::forward, pass, l, {h, weight(lp.attn_norm)}, {n1, rstd1});
  const TensorId q = tensor("attn.q", kept, act_, T_ * qd_, l, pass);
  const TensorId k = tensor("attn.k", kept, act_, T_ * kvd_, l, pass);
  const TensorId v = tensor("attn.v", kept, act_, T_ * kvd_, l, pass);
  matmul("attn.q", OpCode::linear, Phase::forward, pass, l, {n1, weight(lp.q), weight_or_none(lp.qb), workspace_}, {q},
         T_, qd_, d);
  matmul("attn.k", OpCode::linear, Phase::forward, pass, l, {n1, weight(lp.k), weight_or_none(lp.kb), workspace_}, {k},
         T_, kvd_, d);
  matmul("attn.v", OpCode::linear, Phase::forward, pass, l, {n1, weight(lp.v), weight_or_none(lp.vb), workspace_}, {v},
         T_, kvd_, d);
  op("attn.rope", OpCode::rope, Phase::forward, pass, l, {q, k}, {q, k});
  const TensorId o = tensor("attn.out", kept, act_, T_ * qd_, l, pass);
  TensorId lse = kNoTensor, probs = kNoTensor;
  if (s_.attention != AttentionKind::eager) {
    lse = tensor("attn.lse", kept, DType::fp32, B_ * m_.num_heads * S_, l, pass);
    attention_op(OpCode::attention, pass, l, {q, k, v}, {o, lse});
  } else {
    const std::int64_t scores_elements = B_ * m_.num_heads * S_ * S_;
    const TensorId scores = tensor("attn.scores", TensorKind::transient, DType::fp32, scores_elements, l, pass);
    probs = tensor("attn.probs", kept, act_, scores_elements, l, pass);
    eager_matmul("attn.scores", OpCode::eager_scores, Phase::forward, pass, l, {q, k}, {scores}, S_, S_, m_.head_dim);
    op("attn.softmax", OpCode::softmax, Phase::forward, pass, l, {scores}, {probs});
    eager_matmul("attn.pv", OpCode::eager_pv, Phase::forward, pass, l, {probs, v}, {o}, S_, m_.head_dim, S_);
  }
  st.n1 = n1;
  st.n1_kept = keep && !sel;
  st.rstd1 = rstd1;
  st.q = q;
  st.k = k;
  st.v = v;
  st.o = o;
  st.lse = lse;
  st.probs = probs;

  const bool post = m_.norms_per_layer == 4;
  const TensorId a = tensor("attn.proj", post ? kept : TensorKind::transient, act_, T_ * d, l, pass);
  matmul("attn.o", OpCode::linear, Phase::forward, pass, l, {o, weight(lp.o), workspace_}, {a}, T_, d, qd_);
  TensorId a_out = a;
  if (post) {
    st.rstd_pa = tensor("attn_post_norm.rstd", kept, DType::fp32, T_, l, pass);
    a_out = tensor("attn_post_norm.out", TensorKind::transient, act_, T_ * d, l, pass);
    op("attn_post_norm", OpCode::norm, Phase::forward, pass, l, {a, weight(lp.attn_post_norm)}, {a_out, st.rstd_pa});
    st.a = a;
  }
  const TensorId h_mid = tensor("attn.residual", kept, act_, T_ * d, l, pass);
  op("attn.residual", OpCode::residual_add, Phase::forward, pass, l, {h, a_out}, {h_mid});
  st.h_mid = h_mid;

  // MLP block.
  const TensorId n2 = tensor("mlp_norm.out", keep && !sel ? TensorKind::saved : TensorKind::transient, act_,
                             T_ * d, l, pass);
  const TensorId rstd2 = tensor("mlp_norm.rstd", kept, DType::fp32, T_, l, pass);
  op("mlp_norm", OpCode::norm, Phase::forward, pass, l, {h_mid, weight(lp.mlp_norm)}, {n2, rstd2});
  st.n2 = n2;
  st.n2_kept = keep && !sel;
  st.rstd2 = rstd2;

  if (pass == Pass::recompute) {
    // The recomputation stops here: backward needs the saved tensors, not the layer's output.
    // Paper mode recomputes every chunk's gate and up (kept for the chunk backward).
    if (plan_.mlp_mode == MlpMode::paper && !sel) mlp_forward(l, pass, st, kNoTensor);
    return;
  }
  const TensorId mlp_out = tensor("mlp.out", post ? kept : TensorKind::transient, act_, T_ * d, l, pass);
  mlp_forward(l, pass, st, mlp_out);
  TensorId m_out = mlp_out;
  if (post) {
    st.rstd_pm = tensor("mlp_post_norm.rstd", kept, DType::fp32, T_, l, pass);
    m_out = tensor("mlp_post_norm.out", TensorKind::transient, act_, T_ * d, l, pass);
    op("mlp_post_norm", OpCode::norm, Phase::forward, pass, l, {mlp_out, weight(lp.mlp_post_norm)}, {m_out, st.rstd_pm});
    st.m = mlp_out;
  }
  const bool last = l + 1 == m_.num_layers;
  const TensorKind next_kind = !last && recomputed(l + 1) ? TensorKind::checkpoint : TensorKind::saved;
  const TensorId next = tensor("output", next_kind, act_, T_ * d, l, pass);
  op("mlp.residual", OpCode::residual_add, Phase::forward, pass, l, {h_mid, m_out}, {next});
  if (!last) layers_[static_cast<std::size_t>(l + 1)].input = next;
  else final_hidden_ = next;

  if (offloaded(l)) {
    // The checkpoint goes to host memory once the layer is done with it.
    st.host_copy = tensor("input", TensorKind::checkpoint, act_, T_ * d, l, pass, false, Device::host);
    op("offload", OpCode::offload, Phase::forward, pass, l, {h}, {st.host_copy});
  }
}

void Builder::mlp_forward(std::int32_t l, Pass pass, LayerState& st, TensorId out) {
  const LayerParams& lp = layer_params_[static_cast<std::size_t>(l)];
  const std::int64_t d = m_.hidden_size;
  const std::int64_t I = m_.intermediate_size;
  const bool keep_chunks = plan_.mlp_mode == MlpMode::paper && !selective(l) && (pass == Pass::recompute || !recomputed(l));
  st.gate.clear();
  st.up.clear();
  if (out != kNoTensor) prealloc("mlp.alloc", Phase::forward, pass, l, {out});
  for (const ChunkClass& c : chunk_classes(S_, p_.mlp_chunks)) {
    begin_loop(ChunkedBlock::mlp, c);
    const std::int64_t R = rows(c.positions);
    const TensorKind kind = keep_chunks ? TensorKind::saved : TensorKind::transient;
    const TensorId g = tensor("mlp.gate", kind, act_, R * I, l, pass, true);
    const TensorId u = tensor("mlp.up", kind, act_, R * I, l, pass, true);
    matmul("mlp.gate", OpCode::linear, Phase::forward, pass, l, {st.n2, weight(lp.gate), workspace_}, {g}, R, I, d);
    matmul("mlp.up", OpCode::linear, Phase::forward, pass, l, {st.n2, weight(lp.up), workspace_}, {u}, R, I, d);
    if (out != kNoTensor) {
      const TensorId act = tensor("mlp.act", TensorKind::transient, act_, R * I, l, pass, true);
      op("mlp.act", OpCode::gated_act, Phase::forward, pass, l, {g, u}, {act});
      matmul("mlp.down", OpCode::linear, Phase::forward, pass, l, {act, weight(lp.down), workspace_}, {out}, R, d, I);
    }
    end_loop();
    if (keep_chunks) {
      st.gate.push_back(g);
      st.up.push_back(u);
    }
  }
}

void Builder::lm_head() {
  const std::int64_t d = m_.hidden_size;
  const std::int64_t V = m_.vocab_size;
  const TensorId h = final_hidden_;
  const LmHeadMode mode = plan_.lm_head_mode;
  const TensorId W = weight(lm_head_param_);
  const TensorId nf =
      tensor("final_norm.out", mode == LmHeadMode::forward_grad ? TensorKind::transient : TensorKind::saved, act_,
             T_ * d, kNone, Pass::forward);
  const TensorId rstd = tensor("final_norm.rstd", TensorKind::saved, DType::fp32, T_, kNone, Pass::forward);
  op("final_norm", OpCode::norm, Phase::loss, Pass::forward, kNone, {h, weight(final_norm_param_)}, {nf, rstd});
  loss_ = tensor("loss", TensorKind::transient, DType::fp32, 1, kNone, Pass::forward);

  // Labelled positions: the last position of each sequence has no next token.
  const auto classes = chunk_classes(S_ - 1, p_.lm_head_chunks);
  const bool capped = m_.final_logit_softcap.has_value();
  std::vector<TensorId> kept_logits, kept_lse;
  const TensorId dnf = tensor("final_norm.dout", TensorKind::transient, act_, T_ * d, kNone,
                              mode == LmHeadMode::forward_grad ? Pass::forward : Pass::backward);

  auto fresh_lm_grad = [&]() {
    return trained_ && !grad_created_[static_cast<std::size_t>(lm_head_param_)] ? grad(lm_head_param_, kNone)
                                                                               : kNoTensor;
  };
  if (mode == LmHeadMode::forward_grad) {
    prealloc("lm_head.alloc", Phase::loss, Pass::forward, kNone, {loss_, dnf, fresh_lm_grad()});
  } else {
    prealloc("lm_head.alloc", Phase::loss, Pass::forward, kNone, {loss_});
  }
  // Forward over chunks.
  for (const ChunkClass& c : classes) {
    begin_loop(ChunkedBlock::lm_head, c);
    const std::int64_t R = rows(c.positions);
    const TensorKind logits_kind = mode == LmHeadMode::keep ? TensorKind::saved : TensorKind::transient;
    const TensorId logits = tensor("lm_head.logits", logits_kind, DType::fp32, R * V, kNone, Pass::forward, true);
    matmul("lm_head.logits", OpCode::linear, Phase::loss, Pass::forward, kNone, {nf, W, workspace_}, {logits}, R, V, d);
    if (capped) op("lm_head.softcap", OpCode::softcap, Phase::loss, Pass::forward, kNone, {logits}, {logits});
    if (mode == LmHeadMode::forward_grad) {
      const TensorId dlogits = tensor("lm_head.dlogits", TensorKind::transient, act_, R * V, kNone,
                                      Pass::forward, true);
      loss_op(OpCode::loss_with_grad, Pass::forward, {logits, labels_}, {loss_, dlogits}, R);
      matmul("lm_head.dx", OpCode::linear_dx, Phase::loss, Pass::forward, kNone, {dlogits, W, workspace_}, {dnf}, R, d, V);
      if (trained_) {
        const TensorId g = grad(lm_head_param_, kNone);
        matmul("lm_head.dw", OpCode::linear_dw, Phase::loss, Pass::forward, kNone, {dlogits, nf, workspace_}, {g}, V, d, R);
      }
    } else {
      const TensorId lse = tensor("lm_head.lse", TensorKind::saved, DType::fp32, R, kNone, Pass::forward, true);
      loss_op(OpCode::loss, Pass::forward, {logits, labels_}, {loss_, lse}, R);
      kept_lse.push_back(lse);
      kept_logits.push_back(logits);
    }
    end_loop();
  }
  if (mode == LmHeadMode::forward_grad) {
    if (trained_ && !m_.tied_embeddings) grad_done(lm_head_param_, kNone);
  } else {
    // Backward over the same chunks.
    prealloc("lm_head.grad.alloc", Phase::loss, Pass::backward, kNone, {dnf, fresh_lm_grad()});
    for (std::size_t ci = 0; ci < classes.size(); ++ci) {
      const ChunkClass& c = classes[ci];
      begin_loop(ChunkedBlock::lm_head, c);
      const std::int64_t R = rows(c.positions);
      TensorId logits = kept_logits[ci];
      if (mode == LmHeadMode::recompute) {
        logits = tensor("lm_head.logits", TensorKind::transient, DType::fp32, R * V, kNone, Pass::recompute, true);
        matmul("lm_head.logits", OpCode::linear, Phase::loss, Pass::recompute, kNone, {nf, W, workspace_}, {logits}, R, V, d);
        if (capped) op("lm_head.softcap", OpCode::softcap, Phase::loss, Pass::recompute, kNone, {logits}, {logits});
      }
      const TensorId dlogits =
          tensor("lm_head.dlogits", TensorKind::transient, act_, R * V, kNone, Pass::backward, true);
      loss_op(OpCode::loss_grad, Pass::backward, {logits, kept_lse[ci], labels_, loss_}, {dlogits}, R);
      matmul("lm_head.dx", OpCode::linear_dx, Phase::loss, Pass::backward, kNone, {dlogits, W, workspace_}, {dnf}, R, d, V);
      if (trained_) {
        const TensorId g = grad(lm_head_param_, kNone);
        matmul("lm_head.dw", OpCode::linear_dw, Phase::loss, Pass::backward, kNone, {dlogits, nf, workspace_}, {g}, V, d, R);
      }
      end_loop();
    }
    if (trained_ && !m_.tied_embeddings) grad_done(lm_head_param_, kNone);
  }
  // Final norm backward: dh_L.
  const TensorId dh = tensor("output.grad", TensorKind::transient, act_, T_ * d,
                             static_cast<std::int32_t>(m_.num_layers - 1), Pass::backward);
  norm_grad_op("final_norm.grad", Phase::loss, kNone, {dnf, h, rstd, weight(final_norm_param_)}, dh, final_norm_param_);
  upstream_ = dh;
}

void Builder::prefetch(std::int32_t l) {
  LayerState& st = layers_[static_cast<std::size_t>(l)];
  const TensorId dev = tensor("input", TensorKind::checkpoint, act_, T_ * m_.hidden_size, l, Pass::backward);
  op("prefetch", OpCode::prefetch, Phase::backward, Pass::backward, l, {st.host_copy}, {dev});
  st.input = dev;
  prefetched_[static_cast<std::size_t>(l)] = true;
}

void Builder::layer_backward(std::int32_t l) {
  LayerState& st = layers_[static_cast<std::size_t>(l)];
  const LayerParams& lp = layer_params_[static_cast<std::size_t>(l)];
  const std::int64_t d = m_.hidden_size;
  const bool post = m_.norms_per_layer == 4;
  const TensorId dh = upstream_;

  // Offloaded checkpoints come back one layer ahead, so the copy overlaps this layer's work.
  if (offloaded(l) && !prefetched_[static_cast<std::size_t>(l)]) prefetch(l);
  if (l > 0 && offloaded(l - 1)) prefetch(l - 1);
  if (recomputed(l)) layer_forward(l, Pass::recompute);

  // MLP block.
  TensorId dmlp = dh;
  if (post) {
    dmlp = tensor("mlp.dout", TensorKind::transient, act_, T_ * d, l, Pass::backward);
    norm_grad_op("mlp_post_norm.grad", Phase::backward, l, {dh, st.m, st.rstd_pm, weight(lp.mlp_post_norm)}, dmlp, lp.mlp_post_norm);
  }
  if (!st.n2_kept) {
    // Selective recompute: the norm output again, from the kept input and statistic.
    const TensorId n2 = tensor("mlp_norm.out", TensorKind::saved, act_, T_ * d, l, Pass::recompute);
    op("mlp_norm.recompute", OpCode::norm_apply, Phase::backward, Pass::recompute, l,
       {st.h_mid, st.rstd2, weight(lp.mlp_norm)}, {n2});
    st.n2 = n2;
  }
  const TensorId dn2 = tensor("mlp_norm.dout", TensorKind::transient, act_, T_ * d, l, Pass::backward);
  mlp_backward(l, st, dmlp, dn2);
  const TensorId dh_mid = tensor("attn.residual.grad", TensorKind::transient, act_, T_ * d, l, Pass::backward);
  norm_grad_op("mlp_norm.grad", Phase::backward, l, {dn2, st.h_mid, st.rstd2, weight(lp.mlp_norm), dh}, dh_mid, lp.mlp_norm);

  // Attention block.
  TensorId da = dh_mid;
  if (post) {
    da = tensor("attn.dproj", TensorKind::transient, act_, T_ * d, l, Pass::backward);
    norm_grad_op("attn_post_norm.grad", Phase::backward, l, {dh_mid, st.a, st.rstd_pa, weight(lp.attn_post_norm)}, da, lp.attn_post_norm);
  }
  const TensorId dn1 = tensor("attn_norm.dout", TensorKind::transient, act_, T_ * d, l, Pass::backward);
  attention_backward(l, st, da, dn1);
  const TensorId dh_in = tensor("input.grad", TensorKind::transient, act_, T_ * d, l, Pass::backward);
  norm_grad_op("attn_norm.grad", Phase::backward, l, {dn1, st.input, st.rstd1, weight(lp.attn_norm), dh_mid}, dh_in, lp.attn_norm);
  upstream_ = dh_in;
}

void Builder::mlp_backward(std::int32_t l, LayerState& st, TensorId dh, TensorId dn2) {
  const LayerParams& lp = layer_params_[static_cast<std::size_t>(l)];
  const std::int64_t d = m_.hidden_size;
  const std::int64_t I = m_.intermediate_size;
  const auto classes = chunk_classes(S_, p_.mlp_chunks);
  const TensorId fresh = kNoTensor;
  auto fresh_grad = [&](std::int32_t param) {
    return trained_ && !grad_created_[static_cast<std::size_t>(param)] ? grad(param, l) : fresh;
  };
  prealloc("mlp.grad.alloc", Phase::backward, Pass::backward, l, {dn2, fresh_grad(lp.down), fresh_grad(lp.gate),
                                                                   fresh_grad(lp.up)});
  for (std::size_t ci = 0; ci < classes.size(); ++ci) {
    const ChunkClass& c = classes[ci];
    begin_loop(ChunkedBlock::mlp, c);
    const std::int64_t R = rows(c.positions);
    TensorId g = kNoTensor, u = kNoTensor;
    if (!st.gate.empty()) {
      g = st.gate[ci];
      u = st.up[ci];
    } else {
      g = tensor("mlp.gate", TensorKind::transient, act_, R * I, l, Pass::recompute, true);
      u = tensor("mlp.up", TensorKind::transient, act_, R * I, l, Pass::recompute, true);
      matmul("mlp.gate", OpCode::linear, Phase::backward, Pass::recompute, l, {st.n2, weight(lp.gate), workspace_}, {g}, R, I, d);
      matmul("mlp.up", OpCode::linear, Phase::backward, Pass::recompute, l, {st.n2, weight(lp.up), workspace_}, {u}, R, I, d);
    }
    const TensorId act = tensor("mlp.act", TensorKind::transient, act_, R * I, l, Pass::recompute, true);
    op("mlp.act", OpCode::gated_act, Phase::backward, Pass::recompute, l, {g, u}, {act});
    if (trained_) {
      const TensorId gd = grad(lp.down, l);
      matmul("mlp.down.dw", OpCode::linear_dw, Phase::backward, Pass::backward, l, {dh, act, workspace_}, {gd}, d, I, R);
    }
    const TensorId dact = tensor("mlp.dact", TensorKind::transient, act_, R * I, l, Pass::backward, true);
    matmul("mlp.down.dx", OpCode::linear_dx, Phase::backward, Pass::backward, l, {dh, weight(lp.down), workspace_}, {dact}, R, I, d);
    const TensorId dg = tensor("mlp.dgate", TensorKind::transient, act_, R * I, l, Pass::backward, true);
    const TensorId du = tensor("mlp.dup", TensorKind::transient, act_, R * I, l, Pass::backward, true);
    op("mlp.act.grad", OpCode::gated_act_grad, Phase::backward, Pass::backward, l, {dact, g, u}, {dg, du});
    matmul("mlp.gate.dx", OpCode::linear_dx, Phase::backward, Pass::backward, l, {dg, weight(lp.gate), workspace_}, {dn2}, R, d, I);
    matmul("mlp.up.dx", OpCode::linear_dx, Phase::backward, Pass::backward, l, {du, weight(lp.up), workspace_}, {dn2}, R, d, I);
    if (trained_) {
      const TensorId gg = grad(lp.gate, l);
      const TensorId gu = grad(lp.up, l);
      matmul("mlp.gate.dw", OpCode::linear_dw, Phase::backward, Pass::backward, l, {dg, st.n2, workspace_}, {gg}, I, d, R);
      matmul("mlp.up.dw", OpCode::linear_dw, Phase::backward, Pass::backward, l, {du, st.n2, workspace_}, {gu}, I, d, R);
    }
    end_loop();
  }
  if (trained_) {
    grad_done(lp.down, l);
    grad_done(lp.gate, l);
    grad_done(lp.up, l);
  }
}

void Builder::attention_backward(std::int32_t l, LayerState& st, TensorId da, TensorId dn1) {
  const LayerParams& lp = layer_params_[static_cast<std::size_t>(l)];
  const std::int64_t d = m_.hidden_size;
  const TensorId dout = tensor("attn.dout", TensorKind::transient, act_, T_ * qd_, l, Pass::backward);
  matmul("attn.o.dx", OpCode::linear_dx, Phase::backward, Pass::backward, l, {da, weight(lp.o), workspace_}, {dout}, T_, qd_, d);
  if (trained_) {
    const TensorId g = grad(lp.o, l);
    matmul("attn.o.dw", OpCode::linear_dw, Phase::backward, Pass::backward, l, {da, st.o, workspace_}, {g}, d, qd_, T_);
    grad_done(lp.o, l);
  }
  const TensorId dq = tensor("attn.dq", TensorKind::transient, act_, T_ * qd_, l, Pass::backward);
  const TensorId dk = tensor("attn.dk", TensorKind::transient, act_, T_ * kvd_, l, Pass::backward);
  const TensorId dv = tensor("attn.dv", TensorKind::transient, act_, T_ * kvd_, l, Pass::backward);
  if (s_.attention != AttentionKind::eager) {
    // FlashAttention-2's backward: a dq accumulator in fp32 and a per-row statistic.
    const TensorId acc = tensor("attn.dq_accum", TensorKind::workspace, DType::fp32, T_ * qd_, l, Pass::backward);
    const TensorId delta = tensor("attn.delta", TensorKind::workspace, DType::fp32, B_ * m_.num_heads * S_, l,
                                  Pass::backward);
    attention_op(OpCode::attention_grad, Pass::backward, l, {st.q, st.k, st.v, st.o, st.lse, dout},
                 {dq, dk, dv, acc, delta});
  } else {
    const std::int64_t scores = B_ * m_.num_heads * S_ * S_;
    const TensorId dprobs = tensor("attn.dprobs", TensorKind::transient, DType::fp32, scores, l, Pass::backward);
    const Phase ph = Phase::backward;
    const Pass bw = Pass::backward;
    eager_matmul("attn.dprobs", OpCode::eager_dprobs, ph, bw, l, {dout, st.v}, {dprobs}, S_, S_, m_.head_dim);
    eager_matmul("attn.dv", OpCode::eager_dv, ph, bw, l, {st.probs, dout}, {dv}, S_, m_.head_dim, S_);
    const TensorId dscores = tensor("attn.dscores", TensorKind::transient, act_, scores, l, Pass::backward);
    op("attn.softmax.grad", OpCode::softmax_grad, ph, bw, l, {st.probs, dprobs}, {dscores});
    eager_matmul("attn.dq", OpCode::eager_dq, ph, bw, l, {dscores, st.k}, {dq}, S_, m_.head_dim, S_);
    eager_matmul("attn.dk", OpCode::eager_dk, ph, bw, l, {dscores, st.q}, {dk}, S_, m_.head_dim, S_);
  }
  op("attn.rope.grad", OpCode::rope_grad, Phase::backward, Pass::backward, l, {dq, dk}, {dq, dk});
  if (!st.n1_kept) {
    const TensorId n1 = tensor("attn_norm.out", TensorKind::saved, act_, T_ * d, l, Pass::recompute);
    op("attn_norm.recompute", OpCode::norm_apply, Phase::backward, Pass::recompute, l,
       {st.input, st.rstd1, weight(lp.attn_norm)}, {n1});
    st.n1 = n1;
  }
  matmul("attn.q.dx", OpCode::linear_dx, Phase::backward, Pass::backward, l, {dq, weight(lp.q), workspace_}, {dn1}, T_, d, qd_);
  matmul("attn.k.dx", OpCode::linear_dx, Phase::backward, Pass::backward, l, {dk, weight(lp.k), workspace_}, {dn1}, T_, d, kvd_);
  matmul("attn.v.dx", OpCode::linear_dx, Phase::backward, Pass::backward, l, {dv, weight(lp.v), workspace_}, {dn1}, T_, d, kvd_);
  if (!trained_) return;
  const TensorId gq = grad(lp.q, l);
  const TensorId gk = grad(lp.k, l);
  const TensorId gv = grad(lp.v, l);
  matmul("attn.q.dw", OpCode::linear_dw, Phase::backward, Pass::backward, l, {dq, st.n1, workspace_}, {gq}, qd_, d, T_);
  matmul("attn.k.dw", OpCode::linear_dw, Phase::backward, Pass::backward, l, {dk, st.n1, workspace_}, {gk}, kvd_, d, T_);
  matmul("attn.v.dw", OpCode::linear_dw, Phase::backward, Pass::backward, l, {dv, st.n1, workspace_}, {gv}, kvd_, d, T_);
  if (m_.qkv_bias) {
    const TensorId gqb = grad(lp.qb, l);
    const TensorId gkb = grad(lp.kb, l);
    const TensorId gvb = grad(lp.vb, l);
    op("attn.bias.dw", OpCode::bias_grad, Phase::backward, Pass::backward, l, {dq, dk, dv},
       {gqb, gkb, gvb});
    grad_done(lp.qb, l);
    grad_done(lp.kb, l);
    grad_done(lp.vb, l);
  }
  grad_done(lp.q, l);
  grad_done(lp.k, l);
  grad_done(lp.v, l);
}

void Builder::embedding_backward(TensorId dh0) {
  if (!trained_) return;
  const TensorId g = grad(embed_param_, kNone);
  op("embedding.grad", OpCode::embedding_grad, Phase::backward, Pass::backward, kNone, {dh0, tokens_}, {g});
  grad_done(embed_param_, kNone);
}

}  // namespace mstplan::detail

namespace mstplan {

Program build_program(const ModelSpec& model, const TrainingSetup& setup, const Plan& plan, std::int64_t seq_len) {
  MSTPLAN_CHECK(seq_len >= 2, "a step needs at least 2 positions, got {}", seq_len);
  MSTPLAN_CHECK(!check_model_relations(model).has_value(), "invalid model spec {}", model.name);
  MSTPLAN_CHECK(setup.precision != Precision::fp32 || setup.profile == Profile::native,
                "precision fp32 is modelled for the native profile only");
  return detail::Builder(model, setup, plan, seq_len).build();
}

Program build_program(const ModelSpec& model, const TrainingSetup& setup, const Plan& plan, std::int64_t seq_len,
                      Program&& recycled) {
  MSTPLAN_CHECK(seq_len >= 2, "a step needs at least 2 positions, got {}", seq_len);
  MSTPLAN_CHECK(!check_model_relations(model).has_value(), "invalid model spec {}", model.name);
  detail::Builder builder(model, setup, plan, seq_len);
  builder.recycle(std::move(recycled));
  return builder.build();
}

}  // namespace mstplan
