#include <array>
#include <tuple>

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
// outputs in backward. With Ulysses (Note [Ulysses step]) attention keeps the head-split q, k, v,
// output and lse, and o_proj the sequence-split output.

namespace mstplan::detail {
namespace {

class NativeStep final : public StepBuilder {
 public:
  NativeStep(const ModelSpec& model, const TrainingSetup& setup, const Plan& plan, std::int64_t seq_len)
      : StepBuilder(model, setup, plan, seq_len), layers_(static_cast<std::size_t>(model.num_layers)) {}

 private:
  struct LayerState {
    TensorId n1 = kNoTensor, rstd1 = kNoTensor, q = kNoTensor, k = kNoTensor, v = kNoTensor, o = kNoTensor;
    TensorId lse = kNoTensor, probs = kNoTensor;
    TensorId o_heads = kNoTensor;  // Ulysses: attention's output split by heads (q, k, v are then too)
    TensorId a = kNoTensor, rstd_pa = kNoTensor;  // gemma2 post-attention norm input and statistic
    TensorId h_mid = kNoTensor, n2 = kNoTensor, rstd2 = kNoTensor;
    TensorId m = kNoTensor, rstd_pm = kNoTensor;  // gemma2 post-mlp norm input and statistic
    std::vector<TensorId> gate, up;     // paper mode: one array per chunk class
    bool n1_kept = false, n2_kept = false;
  };

  void embedding_forward() override;
  void layer_forward(std::int32_t l, Pass pass) override;
  void lm_head() override;
  void layer_backward(std::int32_t l) override;
  void embedding_backward(TensorId dh0) override;

  void mlp_forward(std::int32_t l, Pass pass, LayerState& st, TensorId out);
  void mlp_backward(std::int32_t l, LayerState& st, TensorId dh, TensorId dn2);
  void attention_backward(std::int32_t l, LayerState& st, TensorId da, TensorId dn1);
  // A norm's backward: {dy, x, rstd, w, [residual gradient]} -> {dx, [dw]} (dw when trained; the
  // gradient is then complete).
  void norm_grad_op(const char* label, Phase phase, std::int32_t l, std::initializer_list<TensorId> inputs, TensorId dx,
                    std::int32_t param);
  LayerState& state(std::int32_t l) { return layers_[static_cast<std::size_t>(l)]; }

  std::vector<LayerState> layers_;
};

void NativeStep::norm_grad_op(const char* label, Phase phase, std::int32_t l, std::initializer_list<TensorId> inputs,
                           TensorId dx, std::int32_t param) {
  op(label, OpCode::norm_grad, phase, Pass::backward, l, inputs, {dx, grad_if_trained(param, l)});
  grad_done(param);
}

void NativeStep::embedding_forward() {
  const bool checkpoint = recomputed(0);
  TensorId h0 = tensor("input", checkpoint ? TensorKind::checkpoint : TensorKind::saved, act_, T_ * m_.hidden_size,
                       0, Pass::forward);
  op("embedding", OpCode::embedding, Phase::forward, Pass::forward, kNone, {tokens_, weight(embed_param_)}, {h0});
  inputs_[0] = h0;
}

void NativeStep::layer_forward(std::int32_t l, Pass pass) {
  LayerState& st = state(l);
  const LayerParams& lp = params_of(l);
  const std::int64_t d = m_.hidden_size;
  const bool recompute = recomputed(l);
  const bool keep = pass == Pass::recompute || !recompute;  // tensors read again by backward
  const TensorKind kept = keep ? TensorKind::saved : TensorKind::transient;
  const bool sel = selective(l);
  const TensorId h = inputs_[static_cast<std::size_t>(l)];

  // Attention block.
  st.n1_kept = keep && !sel;
  st.n1 = tensor("attn_norm.out", st.n1_kept ? TensorKind::saved : TensorKind::transient, act_, T_ * d, l, pass);
  st.rstd1 = tensor("attn_norm.rstd", kept, DType::fp32, T_, l, pass);
  op("attn_norm", OpCode::norm, Phase::forward, pass, l, {h, weight(lp.attn_norm)}, {st.n1, st.rstd1});
  // With Ulysses the sequence-split q, k, v die in the all-to-all: attention saves its head-split copies.
  st.q = tensor("attn.q", kept, act_, T_ * qd_, l, pass);
  st.k = tensor("attn.k", kept, act_, T_ * kvd_, l, pass);
  st.v = tensor("attn.v", kept, act_, T_ * kvd_, l, pass);
  linear("attn.q", Phase::forward, pass, l, st.n1, lp.q, st.q, T_, qd_, d, lp.qb);
  linear("attn.k", Phase::forward, pass, l, st.n1, lp.k, st.k, T_, kvd_, d, lp.kb);
  linear("attn.v", Phase::forward, pass, l, st.n1, lp.v, st.v, T_, kvd_, d, lp.vb);
  op("attn.rope", OpCode::rope, Phase::forward, pass, l, {st.q, st.k}, {st.q, st.k});
  if (ulysses()) std::tie(st.q, st.k, st.v) = qkv_to_heads(l, pass, kept, act_, st.q, st.k, st.v);
  st.o = tensor("attn.out", kept, act_, T_ * qd_, l, pass);
  st.o_heads = ulysses() ? all_positions_tensor("attn.out.heads", kept, act_, T_ * qd_, l, pass) : st.o;
  st.lse = st.probs = kNoTensor;
  if (s_.attention != AttentionKind::eager) {
    st.lse = tensor("attn.lse", kept, DType::fp32, B_ * heads_ * queries_, l, pass);
    // Context parallelism: the rank's queries against every key, gathered for attention only.
    const auto [k_all, v_all] = context() ? gather_kv(l, pass, st.k, st.v) : std::pair{st.k, st.v};
    attention_op(OpCode::attention, pass, l, {st.q, k_all, v_all}, {st.o_heads, st.lse});
  } else {
    const std::int64_t scores_elements = B_ * heads_ * A_ * A_;
    const TensorId scores = tensor("attn.scores", TensorKind::transient, DType::fp32, scores_elements, l, pass);
    st.probs = tensor("attn.probs", kept, act_, scores_elements, l, pass);
    eager_matmul("attn.scores", OpCode::eager_scores, Phase::forward, pass, l, {st.q, st.k}, {scores}, A_, A_,
                 m_.head_dim);
    op("attn.softmax", OpCode::softmax, Phase::forward, pass, l, {scores}, {st.probs});
    eager_matmul("attn.pv", OpCode::eager_pv, Phase::forward, pass, l, {st.probs, st.v}, {st.o_heads}, A_, m_.head_dim,
                 A_);
  }
  if (ulysses()) all_to_all("attn.out.all_to_all", Phase::forward, pass, l, {st.o_heads}, {st.o});

  const bool post = m_.norms_per_layer == 4;
  const TensorId a = tensor("attn.proj", post ? kept : TensorKind::transient, act_, T_ * d, l, pass);
  linear("attn.o", Phase::forward, pass, l, st.o, lp.o, a, T_, d, qd_);
  TensorId a_out = a;
  if (post) {
    st.rstd_pa = tensor("attn_post_norm.rstd", kept, DType::fp32, T_, l, pass);
    a_out = tensor("attn_post_norm.out", TensorKind::transient, act_, T_ * d, l, pass);
    op("attn_post_norm", OpCode::norm, Phase::forward, pass, l, {a, weight(lp.attn_post_norm)}, {a_out, st.rstd_pa});
    st.a = a;
  }
  st.h_mid = tensor("attn.residual", kept, act_, T_ * d, l, pass);
  op("attn.residual", OpCode::residual_add, Phase::forward, pass, l, {h, a_out}, {st.h_mid});

  // MLP block.
  st.n2_kept = keep && !sel;
  st.n2 = tensor("mlp_norm.out", st.n2_kept ? TensorKind::saved : TensorKind::transient, act_, T_ * d, l, pass);
  st.rstd2 = tensor("mlp_norm.rstd", kept, DType::fp32, T_, l, pass);
  op("mlp_norm", OpCode::norm, Phase::forward, pass, l, {st.h_mid, weight(lp.mlp_norm)}, {st.n2, st.rstd2});

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
  op("mlp.residual", OpCode::residual_add, Phase::forward, pass, l, {st.h_mid, m_out}, {next});
  set_output(l, next);
}

void NativeStep::mlp_forward(std::int32_t l, Pass pass, LayerState& st, TensorId out) {
  const LayerParams& lp = params_of(l);
  const std::int64_t d = m_.hidden_size;
  const std::int64_t I = m_.intermediate_size;
  const bool keep_chunks = plan_.mlp_mode == MlpMode::paper && !selective(l) && (pass == Pass::recompute || !recomputed(l));
  st.gate.clear();
  st.up.clear();
  if (out != kNoTensor) prealloc("mlp.alloc", Phase::forward, pass, l, {out});
  chunk_loops(ChunkedBlock::mlp, [&](std::size_t, std::int64_t R) {
    const TensorKind kind = keep_chunks ? TensorKind::saved : TensorKind::transient;
    const TensorId g = tensor("mlp.gate", kind, act_, R * I, l, pass, true);
    const TensorId u = tensor("mlp.up", kind, act_, R * I, l, pass, true);
    linear("mlp.gate", Phase::forward, pass, l, st.n2, lp.gate, g, R, I, d);
    linear("mlp.up", Phase::forward, pass, l, st.n2, lp.up, u, R, I, d);
    if (out != kNoTensor) {
      const TensorId act = tensor("mlp.act", TensorKind::transient, act_, R * I, l, pass, true);
      op("mlp.act", OpCode::gated_act, Phase::forward, pass, l, {g, u}, {act});
      linear("mlp.down", Phase::forward, pass, l, act, lp.down, out, R, d, I);
    }
    if (keep_chunks) {
      st.gate.push_back(g);
      st.up.push_back(u);
    }
  });
}

void NativeStep::lm_head() {
  const std::int64_t d = m_.hidden_size;
  const std::int64_t V = m_.vocab_size;
  const TensorId h = final_hidden_;
  const LmHeadMode mode = plan_.lm_head_mode;
  const TensorId nf =
      tensor("final_norm.out", mode == LmHeadMode::forward_grad ? TensorKind::transient : TensorKind::saved, act_,
             T_ * d, kNone, Pass::forward);
  const TensorId rstd = tensor("final_norm.rstd", TensorKind::saved, DType::fp32, T_, kNone, Pass::forward);
  op("final_norm", OpCode::norm, Phase::loss, Pass::forward, kNone, {h, weight(final_norm_param_)}, {nf, rstd});
  loss_ = tensor("loss", TensorKind::transient, DType::fp32, 1, kNone, Pass::forward);

  // Labelled positions: the last position of each sequence has no next token.
  const bool capped = m_.final_logit_softcap.has_value();
  std::vector<TensorId> kept_logits, kept_lse;
  const TensorId dnf = tensor("final_norm.dout", TensorKind::transient, act_, T_ * d, kNone,
                              mode == LmHeadMode::forward_grad ? Pass::forward : Pass::backward);

  if (mode == LmHeadMode::forward_grad) {
    prealloc("lm_head.alloc", Phase::loss, Pass::forward, kNone, {loss_, dnf, fresh_grad(lm_head_param_, kNone)});
  } else {
    prealloc("lm_head.alloc", Phase::loss, Pass::forward, kNone, {loss_});
  }
  // Forward over chunks.
  chunk_loops(ChunkedBlock::lm_head, [&](std::size_t, std::int64_t R) {
    const TensorKind logits_kind = mode == LmHeadMode::keep ? TensorKind::saved : TensorKind::transient;
    const TensorId logits = tensor("lm_head.logits", logits_kind, DType::fp32, R * V, kNone, Pass::forward, true);
    linear("lm_head.logits", Phase::loss, Pass::forward, kNone, nf, lm_head_param_, logits, R, V, d);
    if (capped) op("lm_head.softcap", OpCode::softcap, Phase::loss, Pass::forward, kNone, {logits}, {logits});
    if (mode == LmHeadMode::forward_grad) {
      const TensorId dlogits = tensor("lm_head.dlogits", TensorKind::transient, act_, R * V, kNone,
                                      Pass::forward, true);
      loss_op(OpCode::loss_with_grad, Pass::forward, {logits, labels_}, {loss_, dlogits}, R);
      linear_dx("lm_head.dx", Phase::loss, Pass::forward, kNone, dlogits, lm_head_param_, {dnf}, R, d, V);
      linear_dw("lm_head.dw", Phase::loss, Pass::forward, kNone, dlogits, nf, lm_head_param_, V, d, R);
    } else {
      const TensorId lse = tensor("lm_head.lse", TensorKind::saved, DType::fp32, R, kNone, Pass::forward, true);
      loss_op(OpCode::loss, Pass::forward, {logits, labels_}, {loss_, lse}, R);
      kept_lse.push_back(lse);
      kept_logits.push_back(logits);
    }
  });
  if (mode == LmHeadMode::forward_grad) {
    if (!m_.tied_embeddings) grad_done(lm_head_param_);
  } else {
    // Backward over the same chunks.
    prealloc("lm_head.grad.alloc", Phase::loss, Pass::backward, kNone, {dnf, fresh_grad(lm_head_param_, kNone)});
    chunk_loops(ChunkedBlock::lm_head, [&](std::size_t ci, std::int64_t R) {
      TensorId logits = kept_logits[ci];
      if (mode == LmHeadMode::recompute) {
        logits = tensor("lm_head.logits", TensorKind::transient, DType::fp32, R * V, kNone, Pass::recompute, true);
        linear("lm_head.logits", Phase::loss, Pass::recompute, kNone, nf, lm_head_param_, logits, R, V, d);
        if (capped) op("lm_head.softcap", OpCode::softcap, Phase::loss, Pass::recompute, kNone, {logits}, {logits});
      }
      const TensorId dlogits =
          tensor("lm_head.dlogits", TensorKind::transient, act_, R * V, kNone, Pass::backward, true);
      loss_op(OpCode::loss_grad, Pass::backward, {logits, kept_lse[ci], labels_, loss_}, {dlogits}, R);
      linear_dx("lm_head.dx", Phase::loss, Pass::backward, kNone, dlogits, lm_head_param_, {dnf}, R, d, V);
      linear_dw("lm_head.dw", Phase::loss, Pass::backward, kNone, dlogits, nf, lm_head_param_, V, d, R);
    });
    if (!m_.tied_embeddings) grad_done(lm_head_param_);
  }
  // Final norm backward: dh_L.
  const TensorId dh = tensor("output.grad", TensorKind::transient, act_, T_ * d,
                             static_cast<std::int32_t>(m_.num_layers - 1), Pass::backward);
  norm_grad_op("final_norm.grad", Phase::loss, kNone, {dnf, h, rstd, weight(final_norm_param_)}, dh, final_norm_param_);
  upstream_ = dh;
}

void NativeStep::layer_backward(std::int32_t l) {
  LayerState& st = state(l);
  const LayerParams& lp = params_of(l);
  const std::int64_t d = m_.hidden_size;
  const bool post = m_.norms_per_layer == 4;
  const TensorId dh = upstream_;

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
  norm_grad_op("attn_norm.grad", Phase::backward, l, {dn1, inputs_[static_cast<std::size_t>(l)], st.rstd1, weight(lp.attn_norm), dh_mid}, dh_in, lp.attn_norm);
  upstream_ = dh_in;
}

void NativeStep::mlp_backward(std::int32_t l, LayerState& st, TensorId dh, TensorId dn2) {
  const LayerParams& lp = params_of(l);
  const std::int64_t d = m_.hidden_size;
  const std::int64_t I = m_.intermediate_size;
  prealloc("mlp.grad.alloc", Phase::backward, Pass::backward, l, {dn2, fresh_grad(lp.down, l), fresh_grad(lp.gate, l),
                                                                   fresh_grad(lp.up, l)});
  chunk_loops(ChunkedBlock::mlp, [&](std::size_t ci, std::int64_t R) {
    TensorId g = kNoTensor, u = kNoTensor;
    if (!st.gate.empty()) {
      g = st.gate[ci];
      u = st.up[ci];
    } else {
      g = tensor("mlp.gate", TensorKind::transient, act_, R * I, l, Pass::recompute, true);
      u = tensor("mlp.up", TensorKind::transient, act_, R * I, l, Pass::recompute, true);
      linear("mlp.gate", Phase::backward, Pass::recompute, l, st.n2, lp.gate, g, R, I, d);
      linear("mlp.up", Phase::backward, Pass::recompute, l, st.n2, lp.up, u, R, I, d);
    }
    const TensorId act = tensor("mlp.act", TensorKind::transient, act_, R * I, l, Pass::recompute, true);
    op("mlp.act", OpCode::gated_act, Phase::backward, Pass::recompute, l, {g, u}, {act});
    linear_dw("mlp.down.dw", Phase::backward, Pass::backward, l, dh, act, lp.down, d, I, R);
    const TensorId dact = tensor("mlp.dact", TensorKind::transient, act_, R * I, l, Pass::backward, true);
    linear_dx("mlp.down.dx", Phase::backward, Pass::backward, l, dh, lp.down, {dact}, R, I, d);
    const TensorId dg = tensor("mlp.dgate", TensorKind::transient, act_, R * I, l, Pass::backward, true);
    const TensorId du = tensor("mlp.dup", TensorKind::transient, act_, R * I, l, Pass::backward, true);
    op("mlp.act.grad", OpCode::gated_act_grad, Phase::backward, Pass::backward, l, {dact, g, u}, {dg, du});
    linear_dx("mlp.gate.dx", Phase::backward, Pass::backward, l, dg, lp.gate, {dn2}, R, d, I);
    linear_dx("mlp.up.dx", Phase::backward, Pass::backward, l, du, lp.up, {dn2}, R, d, I);
    linear_dw("mlp.gate.dw", Phase::backward, Pass::backward, l, dg, st.n2, lp.gate, I, d, R);
    linear_dw("mlp.up.dw", Phase::backward, Pass::backward, l, du, st.n2, lp.up, I, d, R);
  });
  grad_done({lp.down, lp.gate, lp.up});
}

void NativeStep::attention_backward(std::int32_t l, LayerState& st, TensorId da, TensorId dn1) {
  const LayerParams& lp = params_of(l);
  const std::int64_t d = m_.hidden_size;
  const TensorId dout = tensor("attn.dout", TensorKind::transient, act_, T_ * qd_, l, Pass::backward);
  linear_dx("attn.o.dx", Phase::backward, Pass::backward, l, da, lp.o, {dout}, T_, qd_, d);
  linear_dw("attn.o.dw", Phase::backward, Pass::backward, l, da, st.o, lp.o, d, qd_, T_);
  grad_done(lp.o);
  const TensorId dq = tensor("attn.dq", TensorKind::transient, act_, T_ * qd_, l, Pass::backward);
  const TensorId dk = tensor("attn.dk", TensorKind::transient, act_, T_ * kvd_, l, Pass::backward);
  const TensorId dv = tensor("attn.dv", TensorKind::transient, act_, T_ * kvd_, l, Pass::backward);
  // Ulysses: attention's backward runs split by heads, between two all-to-alls.
  TensorId dout_a = dout, dq_a = dq, dk_a = dk, dv_a = dv;
  if (ulysses()) {
    dout_a = all_positions_tensor("attn.dout.heads", TensorKind::transient, act_, T_ * qd_, l, Pass::backward);
    all_to_all("attn.dout.all_to_all", Phase::backward, Pass::backward, l, {dout}, {dout_a});
    dq_a = all_positions_tensor("attn.dq.heads", TensorKind::transient, act_, T_ * qd_, l, Pass::backward);
    dk_a = all_positions_tensor("attn.dk.heads", TensorKind::transient, act_, kv_heads_elements(), l, Pass::backward);
    dv_a = all_positions_tensor("attn.dv.heads", TensorKind::transient, act_, kv_heads_elements(), l, Pass::backward);
  }
  if (s_.attention != AttentionKind::eager) {
    // Context parallelism: the keys and values gathered again, their gradients (this rank's
    // queries' share, at every position) reduce-scattered into the rank's dk, dv.
    TensorId k_all = st.k, v_all = st.v;
    if (context()) {
      std::tie(k_all, v_all) = gather_kv(l, Pass::backward, st.k, st.v);
      dk_a = all_positions_tensor("attn.dk.gathered", TensorKind::transient, act_, B_ * A_ * kvd_, l, Pass::backward);
      dv_a = all_positions_tensor("attn.dv.gathered", TensorKind::transient, act_, B_ * A_ * kvd_, l, Pass::backward);
    }
    const auto [acc, delta] = flash_backward_workspaces(l);
    attention_op(OpCode::attention_grad, Pass::backward, l, {st.q, k_all, v_all, st.o_heads, st.lse, dout_a},
                 {dq_a, dk_a, dv_a, acc, delta});
    if (context()) scatter_kv_grads(l, {dk_a, dv_a}, {dk, dv});
  } else {
    const std::int64_t scores = B_ * heads_ * A_ * A_;
    const TensorId dprobs = tensor("attn.dprobs", TensorKind::transient, DType::fp32, scores, l, Pass::backward);
    const Phase ph = Phase::backward;
    const Pass bw = Pass::backward;
    eager_matmul("attn.dprobs", OpCode::eager_dprobs, ph, bw, l, {dout_a, st.v}, {dprobs}, A_, A_, m_.head_dim);
    eager_matmul("attn.dv", OpCode::eager_dv, ph, bw, l, {st.probs, dout_a}, {dv_a}, A_, m_.head_dim, A_);
    const TensorId dscores = tensor("attn.dscores", TensorKind::transient, act_, scores, l, Pass::backward);
    op("attn.softmax.grad", OpCode::softmax_grad, ph, bw, l, {st.probs, dprobs}, {dscores});
    eager_matmul("attn.dq", OpCode::eager_dq, ph, bw, l, {dscores, st.k}, {dq_a}, A_, m_.head_dim, A_);
    eager_matmul("attn.dk", OpCode::eager_dk, ph, bw, l, {dscores, st.q}, {dk_a}, A_, m_.head_dim, A_);
  }
  if (ulysses()) grads_to_sequence(l, act_, {dq_a, dk_a, dv_a}, {dq, dk, dv});
  op("attn.rope.grad", OpCode::rope_grad, Phase::backward, Pass::backward, l, {dq, dk}, {dq, dk});
  if (!st.n1_kept) {
    const TensorId n1 = tensor("attn_norm.out", TensorKind::saved, act_, T_ * d, l, Pass::recompute);
    op("attn_norm.recompute", OpCode::norm_apply, Phase::backward, Pass::recompute, l,
       {inputs_[static_cast<std::size_t>(l)], st.rstd1, weight(lp.attn_norm)}, {n1});
    st.n1 = n1;
  }
  linear_dx("attn.q.dx", Phase::backward, Pass::backward, l, dq, lp.q, {dn1}, T_, d, qd_);
  linear_dx("attn.k.dx", Phase::backward, Pass::backward, l, dk, lp.k, {dn1}, T_, d, kvd_);
  linear_dx("attn.v.dx", Phase::backward, Pass::backward, l, dv, lp.v, {dn1}, T_, d, kvd_);
  linear_dw("attn.q.dw", Phase::backward, Pass::backward, l, dq, st.n1, lp.q, qd_, d, T_);
  linear_dw("attn.k.dw", Phase::backward, Pass::backward, l, dk, st.n1, lp.k, kvd_, d, T_);
  linear_dw("attn.v.dw", Phase::backward, Pass::backward, l, dv, st.n1, lp.v, kvd_, d, T_);
  if (m_.qkv_bias && trains(lp.qb)) {
    op("attn.bias.dw", OpCode::bias_grad, Phase::backward, Pass::backward, l, {dq, dk, dv},
       {grad(lp.qb, l), grad(lp.kb, l), grad(lp.vb, l)});
    grad_done({lp.qb, lp.kb, lp.vb});
  }
  grad_done({lp.q, lp.k, lp.v});
}

void NativeStep::embedding_backward(TensorId dh0) {
  if (!trains(embed_param_)) return;
  op("embedding.grad", OpCode::embedding_grad, Phase::backward, Pass::backward, kNone, {dh0, tokens_},
     {grad(embed_param_, kNone)});
  grad_done(embed_param_);
}

}  // namespace

Program build_native(const ModelSpec& model, const TrainingSetup& setup, const Plan& plan, std::int64_t seq_len,
                     Program&& recycled) {
  NativeStep builder(model, setup, plan, seq_len);
  builder.recycle(std::move(recycled));
  return builder.build();
}

}  // namespace mstplan::detail
