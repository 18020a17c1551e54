// The executor's dispatch: what each op of a native step program computes, in terms of the
// backend's kernels. The op's label says what it is (builder.cpp, Note [Native step]); its
// inputs and outputs are in the builder's order. An output the op allocated is written first
// (overwrite); an output that was already live is accumulated into, except by ops that update in
// place (rope, soft-capping, the optimizer).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "runtime/executor.h"

namespace mstplan {
namespace {
bool is(const Op& op, const char* label) { return std::strcmp(op.label, label) == 0; }
bool ends_with(const char* s, const char* suffix) {
  const std::size_t n = std::strlen(s), m = std::strlen(suffix);
  return n >= m && std::strcmp(s + n - m, suffix) == 0;
}
float round_to(DType dtype, float x) { return dtype == DType::bf16 ? ref::from_bf16(ref::to_bf16(x)) : x; }
}  // namespace

void Executor::dispatch(const FlatOp& f, bool last_micro_batch) {
  const Op& op = program_.ops[f.op];
  const auto ins = program_.inputs(op);
  const auto outs = program_.outputs(op);
  const std::int64_t it = f.iteration;
  auto in = [&](std::size_t i) { return view(ins[i], op, it); };
  auto out = [&](std::size_t i) { return view(outs[i], op, it); };
  auto fresh = [&](std::size_t i) {
    return std::find(fresh_.begin(), fresh_.end(), instance(outs[i], it)) != fresh_.end();
  };
  auto kind = [&](TensorId t) { return program_.tensors[t].kind; };
  Backend& k = backend_;
  const ModelSpec& m = model_;
  const float offset = m.family == Family::gemma2 ? 1.0f : 0.0f;
  const auto eps = static_cast<float>(m.norm_eps);

  AttentionShape shape;
  shape.batch = program_.batch;
  shape.seq = program_.seq_len;
  shape.heads = m.num_heads;
  shape.kv_heads = m.num_kv_heads;
  shape.head_dim = m.head_dim;
  shape.scale = static_cast<float>(1.0 / std::sqrt(m.query_pre_attn_scalar ? *m.query_pre_attn_scalar
                                                                            : static_cast<double>(m.head_dim)));
  shape.softcap = m.attn_logit_softcap ? static_cast<float>(*m.attn_logit_softcap) : 0.0f;
  shape.window = op.window;
  const std::int64_t rows_bhs = shape.batch * shape.heads * shape.seq;
  auto per_head = [&](TensorId t, std::int64_t cols) {  // lse, delta: (batch x heads x seq) x cols
    View v = view(t, op, it);
    return ref::contiguous(v.data, v.dtype, rows_bhs, cols);
  };

  switch (op.kind) {
    case OpKind::begin: return;
    case OpKind::end: {
      loss_sum_ += static_cast<double>(read(loss_tensor_)[0]);
      return;
    }
    case OpKind::embedding: {
      const float scale = m.family == Family::gemma2
                              ? round_to(program_.tensors[outs[0]].dtype, std::sqrt(static_cast<float>(m.hidden_size)))
                              : 1.0f;
      k.embedding_forward(in(0), in(1), scale, out(0));
      return;
    }
    case OpKind::embedding_grad: {
      const float scale = m.family == Family::gemma2
                              ? round_to(program_.tensors[ins[0]].dtype, std::sqrt(static_cast<float>(m.hidden_size)))
                              : 1.0f;
      if (fresh(0)) k.zero(out(0));
      k.embedding_backward(in(0), in(1), scale, out(0));
      return;
    }
    case OpKind::norm:  // {x, w} -> {y, rstd}
      k.rmsnorm_forward(in(0), in(1), eps, offset, out(0), out(1));
      return;
    case OpKind::norm_grad: {  // {dy, x, rstd, w, [residual]} -> {dx, [dw]}
      std::optional<View> residual, dw;
      if (ins.size() > 4) residual = in(4);
      if (outs.size() > 1) dw = out(1);
      k.rmsnorm_backward(in(0), in(1), in(2), in(3), offset, residual, out(0), dw, outs.size() > 1 && !fresh(1));
      return;
    }
    case OpKind::matmul: {
      if (is(op, "attn.scores")) return k.eager_scores(shape, in(0), in(1), per_head(outs[0], shape.seq));
      if (is(op, "attn.pv")) return k.eager_pv(shape, per_head(ins[0], shape.seq), in(1), out(0));
      if (is(op, "attn.dprobs")) return k.eager_dprobs(shape, in(0), in(1), per_head(outs[0], shape.seq));
      if (is(op, "attn.dv")) return k.eager_dv(shape, per_head(ins[0], shape.seq), in(1), out(0));
      if (is(op, "attn.dq")) return k.eager_dq(shape, per_head(ins[0], shape.seq), in(1), out(0));
      if (is(op, "attn.dk")) return k.eager_dk(shape, per_head(ins[0], shape.seq), in(1), out(0));
      if (ends_with(op.label, ".dx")) return k.matmul_xw(in(0), in(1), out(0), !fresh(0));  // {dy, W, ws}
      if (ends_with(op.label, ".dw")) return k.matmul_dw(in(0), in(1), out(0), !fresh(0));  // {dy, x, ws}
      // Forward: {x, W, [bias], ws} -> {y}.
      std::optional<View> bias;
      if (ins.size() > 3 && kind(ins[2]) == TensorKind::weight) bias = in(2);
      k.matmul_xwt(in(0), in(1), bias, out(0), !fresh(0));
      return;
    }
    case OpKind::attention:
      k.attention_forward(shape, in(0), in(1), in(2), out(0), per_head(outs[1], 1));
      return;
    case OpKind::attention_grad:  // {q, k, v, o, lse, dout} -> {dq, dk, dv, dq_accum, delta}
      k.attention_backward(shape, in(0), in(1), in(2), in(3), per_head(ins[4], 1), in(5), out(0), out(1), out(2),
                           out(3), per_head(outs[4], 1));
      return;
    case OpKind::softmax:
      if (is(op, "attn.softmax")) return k.eager_softmax(per_head(ins[0], shape.seq), per_head(outs[0], shape.seq));
      return k.eager_softmax_backward(per_head(ins[0], shape.seq), per_head(ins[1], shape.seq),
                                      per_head(outs[0], shape.seq));
    case OpKind::loss: {
      const std::int64_t mbs = setup_.grad_accum;
      const float scale = targets_ > 0 ? static_cast<float>(1.0 / (static_cast<double>(targets_) * static_cast<double>(mbs)))
                                       : 0.0f;
      const float cap = m.final_logit_softcap ? static_cast<float>(*m.final_logit_softcap) : 0.0f;
      const TensorId labels = ins[op.pass == Pass::forward ? 1 : 2];
      View targets = view(labels, op, it);
      targets.first += 1;  // position s predicts the token at s + 1
      if (op.pass == Pass::forward) {  // {logits, labels} -> {loss, lse | dlogits}
        auto* loss = static_cast<float*>(instances_[instance(outs[0], 0)].block.data);
        std::optional<View> lse, dlogits;
        if (program_.tensors[outs[1]].dtype == DType::fp32 && std::strcmp(program_.tensors[outs[1]].label, "lm_head.lse") == 0) {
          lse = out(1);
        } else {
          dlogits = out(1);
        }
        k.cross_entropy_forward(in(0), targets, scale, cap, loss, lse, dlogits);
      } else {  // {logits, lse, labels, loss} -> {dlogits}
        k.cross_entropy_backward(in(0), in(1), targets, scale, cap, out(0));
      }
      return;
    }
    case OpKind::optimizer: {
      const TensorId g = ins[0];
      if (!last_micro_batch) return;  // gradients keep accumulating
      if (gradient_hook_) gradient_hook_(op.param, read(g));
      std::optional<View> master;
      std::vector<TensorId> moments;
      for (std::size_t i = 2; i < ins.size(); ++i) {
        if (kind(ins[i]) == TensorKind::master_weight) master = in(i);
        if (kind(ins[i]) == TensorKind::optimizer_state) moments.push_back(ins[i]);
      }
      if (is(op, "sgd")) {
        k.sgd(options_.learning_rate, options_.weight_decay, in(0), in(1), master);
      } else {
        ref::AdamW o;
        o.lr = options_.learning_rate;
        o.beta1 = options_.beta1;
        o.beta2 = options_.beta2;
        o.eps = options_.eps;
        o.weight_decay = options_.weight_decay;
        o.step = optimizer_steps_ + 1;
        View mv = view(moments.at(0), op, it);
        View first = mv, second = mv;
        if (moments.size() == 2) {
          second = view(moments[1], op, it);
        } else {  // adam_mv: m then v in one tensor
          const std::int64_t n = program_.tensors[moments[0]].elements;
          second.data = static_cast<unsigned char*>(mv.data) + n * dtype_bytes(mv.dtype);
        }
        k.adamw(o, in(0), in(1), first, second, master);
      }
      if (static_tensor_[g]) k.zero(in(0));  // a persistent gradient starts the next step at 0
      return;
    }
    case OpKind::copy_to_host:
    case OpKind::copy_to_device:
      k.copy(in(0), out(0));
      return;
    case OpKind::elementwise: {
      if (ins.empty() && ends_with(op.label, ".alloc")) {  // allocate and zero accumulators
        for (std::size_t i = 0; i < outs.size(); ++i) {
          if (fresh(i)) k.zero(out(i));
        }
        return;
      }
      if (is(op, "attn.rope") || is(op, "attn.rope.grad")) {
        ref::Rope r;
        r.theta = m.rope.theta;
        r.scaling = static_cast<int>(m.rope.scaling);
        r.factor = m.rope.factor;
        r.low_freq_factor = m.rope.low_freq_factor;
        r.high_freq_factor = m.rope.high_freq_factor;
        r.original_max_position_embeddings = m.rope.original_max_position_embeddings;
        r.max_position_embeddings = m.max_position_embeddings;
        const bool inverse = is(op, "attn.rope.grad");
        k.rope(out(0), m.head_dim, r, program_.seq_len, inverse);
        k.rope(out(1), m.head_dim, r, program_.seq_len, inverse);
        return;
      }
      if (is(op, "attn.residual") || is(op, "mlp.residual")) return k.add(in(0), in(1), out(0));
      if (is(op, "mlp.act")) {
        const auto a = m.mlp_activation == MlpActivation::geglu ? GatedActivation::geglu : GatedActivation::swiglu;
        return k.gated_forward(a, in(0), in(1), out(0));
      }
      if (is(op, "mlp.act.grad")) {
        const auto a = m.mlp_activation == MlpActivation::geglu ? GatedActivation::geglu : GatedActivation::swiglu;
        return k.gated_backward(a, in(0), in(1), in(2), out(0), out(1));
      }
      if (is(op, "lm_head.softcap")) return k.softcap(out(0), static_cast<float>(*m.final_logit_softcap));
      if (is(op, "mlp_norm.recompute") || is(op, "attn_norm.recompute")) {
        return k.rmsnorm_apply(in(0), in(1), in(2), offset, out(0));
      }
      if (is(op, "attn.bias.dw")) {
        for (std::size_t i = 0; i < 3; ++i) k.bias_grad(in(i), out(i), !fresh(i));
        return;
      }
      break;
    }
  }
  MSTPLAN_CHECK(false, "the runtime has no kernel for op {} ({})", op_name(program_, f.op, f.iteration), op.label);
}

}  // namespace mstplan
