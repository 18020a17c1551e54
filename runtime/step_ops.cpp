// The executor's dispatch: what each op of a native step program computes, in terms of the
// backend's kernels, by its OpCode (program.h lists each code's operands; builder_native.cpp, Note
// [Native step], what the step holds). An output the op allocated is written first (overwrite);
// an output that was already live is accumulated into, except by ops that update in place (rope,
// soft-capping, the optimizer).
#include <algorithm>
#include <cmath>

#include "runtime/executor.h"

namespace mstplan {
namespace {
kernels::RopeScaling kernel_scaling(RopeScaling s) {
  switch (s) {
    case RopeScaling::none: return kernels::RopeScaling::none;
    case RopeScaling::linear: return kernels::RopeScaling::linear;
    case RopeScaling::dynamic: return kernels::RopeScaling::dynamic;
    case RopeScaling::llama3: return kernels::RopeScaling::llama3;
  }
  return kernels::RopeScaling::none;
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
  auto flat = [&](TensorId t) {  // a whole tensor instance, element by element
    const Tensor& x = program_.tensors[t];
    return ref::contiguous(instances_[instance(t, it)].block.data, x.dtype, x.elements, 1);
  };
  Backend& k = backend_;
  const ModelSpec& m = model_;
  const float offset = m.family == Family::gemma2 ? 1.0f : 0.0f;
  const auto eps = static_cast<float>(m.norm_eps);

  AttentionShape shape;
  shape.batch = program_.batch;
  // With Ulysses attention runs between the all-to-alls: every position of the rank's heads
  // (one key/value head each where there are fewer than ranks, repeated by repeat_kv).
  shape.seq = program_.seq_len;
  shape.heads = m.num_heads / sp_;
  shape.kv_heads = sp_ > 1 ? std::max(m.num_kv_heads, sp_) / sp_ : m.num_kv_heads;
  shape.head_dim = m.head_dim;
  shape.scale = static_cast<float>(1.0 / std::sqrt(m.query_pre_attn_scalar ? *m.query_pre_attn_scalar
                                                                            : static_cast<double>(m.head_dim)));
  shape.softcap = m.attn_logit_softcap ? static_cast<float>(*m.attn_logit_softcap) : 0.0f;
  shape.window = op.window;
  if (cp_ > 1) {  // context parallelism: the rank's queries against every (gathered) key
    shape.queries = program_.local_seq_len();
    shape.query_first = member_ * program_.local_seq_len();
  }
  const std::int64_t rows_bhs = shape.batch * shape.heads * shape.query_rows();
  auto per_head = [&](TensorId t, std::int64_t cols) {  // lse, delta: (batch x heads x seq) x cols
    View v = view(t, op, it);
    return ref::contiguous(v.data, v.dtype, rows_bhs, cols);
  };

  auto gated = [&]() {
    return m.mlp_activation == MlpActivation::geglu ? GatedActivation::geglu : GatedActivation::swiglu;
  };
  auto embedding_scale = [&](TensorId h) {
    return m.family == Family::gemma2 ? round_to(program_.tensors[h].dtype, std::sqrt(static_cast<float>(m.hidden_size)))
                                      : 1.0f;
  };
  // The mean over the group's labels, over the micro-batches; times the group's ranks so that the ranks' mean
  // of the gradients is the mean over the groups' sequences (Note [Ranks]).
  auto loss_scale = [&]() {
    return group_targets_ > 0 ? static_cast<float>(static_cast<double>(group_) / (static_cast<double>(group_targets_) *
                                                                               static_cast<double>(setup_.grad_accum)))
                              : 0.0f;
  };
  auto targets = [&](TensorId labels) {
    View t = view(labels, op, it);
    if (group_ == 1) t.first += 1;  // position s predicts the token at s + 1 (a shared sequence's come shifted)
    return t;
  };
  const float cap = m.final_logit_softcap ? static_cast<float>(*m.final_logit_softcap) : 0.0f;

  switch (op.code) {
    case OpCode::begin: return;
    case OpCode::end: {
      loss_sum_ += static_cast<double>(read(loss_tensor_)[0]);
      return;
    }
    case OpCode::embedding:  // {tokens, W} -> {h}
      k.embedding_forward(in(0), in(1), embedding_scale(outs[0]), out(0));
      return;
    case OpCode::embedding_grad:  // {dh, tokens} -> {dW}
      if (fresh(0)) k.zero(out(0));
      k.embedding_backward(in(0), in(1), embedding_scale(ins[0]), out(0));
      return;
    case OpCode::norm:  // {x, w} -> {y, rstd}
      k.rmsnorm_forward(in(0), in(1), eps, offset, out(0), out(1));
      return;
    case OpCode::norm_grad: {  // {dy, x, rstd, w, [residual]} -> {dx, [dw]}
      std::optional<View> residual, dw;
      if (ins.size() > 4) residual = in(4);
      if (outs.size() > 1) dw = out(1);
      k.rmsnorm_backward(in(0), in(1), in(2), in(3), offset, residual, out(0), dw, outs.size() > 1 && !fresh(1));
      return;
    }
    case OpCode::norm_apply:  // {x, rstd, w} -> {y}
      k.rmsnorm_apply(in(0), in(1), in(2), offset, out(0));
      return;
    case OpCode::linear: {  // {x, W, [bias], ws} -> {y}
      std::optional<View> bias;
      if (ins.size() > 3) bias = in(2);
      k.matmul_xwt(in(0), in(1), bias, out(0), !fresh(0));
      return;
    }
    case OpCode::linear_dx: k.matmul_xw(in(0), in(1), out(0), !fresh(0)); return;  // {dy, W, ws}
    case OpCode::linear_dw: k.matmul_dw(in(0), in(1), out(0), !fresh(0)); return;  // {dy, x, ws}
    case OpCode::bias_grad:  // {dq, dk, dv} -> {dbq, dbk, dbv}
      for (std::size_t i = 0; i < 3; ++i) k.bias_grad(in(i), out(i), !fresh(i));
      return;
    case OpCode::attention:  // {q, k, v} -> {o, lse}
      k.attention_forward(shape, in(0), in(1), in(2), out(0), per_head(outs[1], 1));
      return;
    case OpCode::attention_grad:  // {q, k, v, o, lse, dout} -> {dq, dk, dv, dq_accum, delta}
      k.attention_backward(shape, in(0), in(1), in(2), in(3), per_head(ins[4], 1), in(5), out(0), out(1), out(2),
                           out(3), per_head(outs[4], 1));
      return;
    case OpCode::eager_scores: k.eager_scores(shape, in(0), in(1), per_head(outs[0], shape.seq)); return;
    case OpCode::eager_pv: k.eager_pv(shape, per_head(ins[0], shape.seq), in(1), out(0)); return;
    case OpCode::eager_dprobs: k.eager_dprobs(shape, in(0), in(1), per_head(outs[0], shape.seq)); return;
    case OpCode::eager_dv: k.eager_dv(shape, per_head(ins[0], shape.seq), in(1), out(0)); return;
    case OpCode::eager_dq: k.eager_dq(shape, per_head(ins[0], shape.seq), in(1), out(0)); return;
    case OpCode::eager_dk: k.eager_dk(shape, per_head(ins[0], shape.seq), in(1), out(0)); return;
    case OpCode::softmax: k.eager_softmax(per_head(ins[0], shape.seq), per_head(outs[0], shape.seq)); return;
    case OpCode::softmax_grad:
      k.eager_softmax_backward(per_head(ins[0], shape.seq), per_head(ins[1], shape.seq), per_head(outs[0], shape.seq));
      return;
    case OpCode::rope:
    case OpCode::rope_grad: {  // {q, k} -> {q, k}, in place
      ref::Rope r;
      r.theta = m.rope.theta;
      r.scaling = kernel_scaling(m.rope.scaling);
      r.factor = m.rope.factor;
      r.low_freq_factor = m.rope.low_freq_factor;
      r.high_freq_factor = m.rope.high_freq_factor;
      r.original_max_position_embeddings = m.rope.original_max_position_embeddings;
      r.max_position_embeddings = m.max_position_embeddings;
      r.first_position = member_ * program_.local_seq_len();  // a shared sequence: the rank's share
      const bool inverse = op.code == OpCode::rope_grad;
      k.rope(out(0), m.head_dim, r, program_.seq_len, inverse);
      k.rope(out(1), m.head_dim, r, program_.seq_len, inverse);
      return;
    }
    case OpCode::residual_add: k.add(in(0), in(1), out(0)); return;
    case OpCode::scale: k.scale(in(0), static_cast<float>(op.scale), out(0)); return;
    case OpCode::gated_act: k.gated_forward(gated(), in(0), in(1), out(0)); return;
    case OpCode::gated_act_grad: k.gated_backward(gated(), in(0), in(1), in(2), out(0), out(1)); return;
    case OpCode::softcap: k.softcap(out(0), cap); return;
    case OpCode::loss:            // {logits, labels} -> {loss, lse}
    case OpCode::loss_with_grad: {  // {logits, labels} -> {loss, dlogits}
      auto* loss = static_cast<float*>(instances_[instance(outs[0], 0)].block.data);
      std::optional<View> lse, dlogits;
      if (op.code == OpCode::loss) lse = out(1);
      else dlogits = out(1);
      k.cross_entropy_forward(in(0), targets(ins[1]), loss_scale(), cap, loss, lse, dlogits);
      return;
    }
    case OpCode::loss_grad:  // {logits, lse, labels, loss} -> {dlogits}
      k.cross_entropy_backward(in(0), in(1), targets(ins[2]), loss_scale(), cap, out(0));
      return;
    case OpCode::zero:  // allocate and zero accumulators
      for (std::size_t i = 0; i < outs.size(); ++i) {
        if (fresh(i)) k.zero(out(i));
      }
      return;
    case OpCode::adamw:
    case OpCode::sgd: {  // {g, w, [states]} -> {w, [states]}
      const TensorId g = ins[0];
      // CPU Adam (Note [Offloaded optimizer]): {host gradient, master, m+v} -> {master, m+v, w},
      // w the host staging copy of the new weights (or the host weights themselves); the device's:
      // {g, w, states..., [master]} -> {w, states...}.
      const bool host = kind(ins[1]) == TensorKind::master_weight;
      const TensorId w = host ? outs[2] : ins[1];
      if (!last_micro_batch) {  // gradients keep accumulating
        // The staged copy is uploaded after every micro-batch: until the update, the weights as they are.
        if (host && kind(w) != TensorKind::weight) {
          k.copy(flat(ins[1]), flat(w));
        }
        return;
      }
      // With a sharded optimizer the rank updates its range of the parameter: full tensors
      // (ZeRO-1's gradient, ZeRO-1/2's weights) are cut to it, shards to its length (the padding
      // of the last shard is left alone); with every operand a shard (ZeRO-3) the whole shard.
      const Range range = update_range(op.param);
      const std::int64_t numel = program_.params[static_cast<std::size_t>(op.param)].numel();
      bool cut = false;
      for (TensorId t : ins) cut = cut || (ranks_ > 1 && setup_.parallel.shards_optimizer() && program_.tensors[t].elements == numel);
      auto part = [&](TensorId t, View v, std::int64_t offset_elements) {
        if (!cut) return v;
        const bool full = program_.tensors[t].elements == numel;
        auto* base = static_cast<unsigned char*>(v.data) + offset_elements * dtype_bytes(v.dtype);
        return ref::contiguous(base + (full ? range.first : 0) * dtype_bytes(v.dtype), v.dtype, range.count, 1);
      };
      if (gradient_hook_) {
        std::vector<float> gv = read(g);
        const std::int64_t at = program_.tensors[g].elements == numel ? range.first : 0;
        gradient_hook_(op.param, std::span(gv).subspan(static_cast<std::size_t>(at), static_cast<std::size_t>(range.count)));
      }
      if (cut && range.count == 0) {  // nothing of this parameter is the rank's
        if (static_tensor_[g]) k.zero(in(0));
        return;
      }
      std::optional<View> master;
      std::vector<TensorId> moments;
      for (std::size_t i = host ? 1 : 2; i < ins.size(); ++i) {
        if (kind(ins[i]) == TensorKind::master_weight) master = part(ins[i], in(i), 0);
        if (kind(ins[i]) == TensorKind::optimizer_state) moments.push_back(ins[i]);
      }
      const View gv = part(g, in(0), 0), wv = part(w, view(w, op, it), 0);
      if (op.code == OpCode::sgd) {
        k.sgd(options_.learning_rate, options_.weight_decay, gv, wv, master);
      } else {
        ref::AdamW o;
        o.lr = options_.learning_rate;
        o.beta1 = options_.beta1;
        o.beta2 = options_.beta2;
        o.eps = options_.eps;
        o.weight_decay = options_.weight_decay;
        o.step = optimizer_steps_ + 1;
        const View mv = view(moments.at(0), op, it);
        View first = part(moments[0], mv, 0), second = first;
        if (moments.size() == 2) {
          second = part(moments[1], view(moments[1], op, it), 0);
        } else {  // adam_mv: m then v in one tensor
          const std::int64_t n = program_.tensors[moments[0]].elements;
          second = part(moments[0], mv, n);
          if (!cut) second.data = static_cast<unsigned char*>(mv.data) + n * dtype_bytes(mv.dtype);
        }
        k.adamw(o, gv, wv, first, second, master);
      }
      if (static_tensor_[g]) k.zero(in(0));  // a persistent gradient starts the next step at 0
      return;
    }
    case OpCode::offload:
    case OpCode::prefetch: {
      // Whole tensors, element by element (CPU Adam's staged weights are a flat buffer; the
      // weight they refill is a matrix). A gradient's host copy (ZeRO-Offload) is static: it adds
      // each micro-batch's gradient, from 0 after every update, as a persistent device gradient would.
      MSTPLAN_CHECK(program_.tensors[ins[0]].elements == program_.tensors[outs[0]].elements, "{}: {} into {}", op.label,
                    tensor_name(program_, ins[0]), tensor_name(program_, outs[0]));
      if (op.code == OpCode::offload && kind(outs[0]) == TensorKind::gradient && static_tensor_[outs[0]]) {
        k.add(flat(ins[0]), flat(outs[0]), flat(outs[0]));
      } else {
        k.copy(flat(ins[0]), flat(outs[0]));
      }
      return;
    }
    case OpCode::all_gather:
    case OpCode::reduce_scatter:
    case OpCode::all_reduce:
      collective(op, it);
      return;
    case OpCode::all_to_all:
      ulysses_all_to_all(op, it);
      return;
    case OpCode::repeat_kv:
    case OpCode::repeat_kv_grad:
      repeat_kv(op, it, op.code == OpCode::repeat_kv_grad);
      return;
    case OpCode::dequantize: k.dequantize(quantized(op.param), in(0), out(0)); return;
    case OpCode::autograd:
      break;  // the pytorch profile's ops are modelled, not executed (the executor refuses its programs)
  }
  MSTPLAN_CHECK(false, "the runtime has no kernel for op {} ({})", op_name(program_, f.op, f.iteration), op.label);
}

// The collectives of a data-parallel rank (Note [Ranks]; program.h lists their operands). The mean
// over the ranks is the sum in rank order divided by N, rounded once to the output's dtype.
void Executor::collective(const Op& op, std::int64_t it) {
  const auto ins = program_.inputs(op);
  const auto outs = program_.outputs(op);
  MSTPLAN_CHECK(comm_ != nullptr && ins.size() == outs.size(), "{}: a collective without ranks", op.label);
  if (program_.tensors[outs[0]].param < 0) {  // activations: context parallelism's keys and values
    sequence_collective(op, it);
    return;
  }
  const auto n = static_cast<std::size_t>(ranks_);
  for (std::size_t i = 0; i < ins.size(); ++i) {
    const std::uint32_t src = instance(ins[i], it), dst = instance(outs[i], it);
    const Tensor& out = program_.tensors[outs[i]];
    MSTPLAN_CHECK(out.param >= 0, "{}: {} is no parameter's", op.label, tensor_name(program_, outs[i]));
    const std::int64_t numel = program_.params[static_cast<std::size_t>(out.param)].numel();
    const auto shard = static_cast<std::size_t>(setup_.parallel.shard_numel(numel));
    const Range range = update_range(out.param);
    std::vector<float> x = read_instance(src);
    std::vector<float> all(shard * n, 0.0f);
    switch (op.code) {
      case OpCode::all_gather: {  // shards -> full; or a full weight whose rank ranges are refilled
        std::vector<float> mine(shard, 0.0f);
        if (src == dst) std::copy_n(x.begin() + range.first, range.count, mine.begin());
        else std::copy_n(x.begin(), shard, mine.begin());
        comm_->all_gather(mine, all);
        all.resize(static_cast<std::size_t>(numel));
        write_instance(dst, all);
        break;
      }
      case OpCode::reduce_scatter:  // full gradient -> the rank's shard of the mean (accumulated if live)
      case OpCode::all_reduce: {    // full gradient -> the mean, in place
        std::copy(x.begin(), x.end(), all.begin());
        comm_->all_reduce_sum(all);
        for (float& v : all) v /= static_cast<float>(ranks_);
        if (op.code == OpCode::all_reduce) {
          all.resize(static_cast<std::size_t>(numel));
          write_instance(dst, all);
          break;
        }
        const auto at = all.begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(rank_) * shard);
        std::vector<float> mine(at, at + static_cast<std::ptrdiff_t>(shard));
        const bool fresh = std::find(fresh_.begin(), fresh_.end(), dst) != fresh_.end();
        if (!fresh) {
          const std::vector<float> before = read_instance(dst);
          for (std::size_t e = 0; e < shard; ++e) mine[e] += before[e];
        }
        write_instance(dst, mine);
        break;
      }
      default: MSTPLAN_CHECK(false, "{} is not a data-parallel collective", op.label);
    }
  }
}

// Ulysses' all-to-all among the sp ranks of this rank's group (Note [Ulysses step] in
// builder.cpp). A sequence-split tensor is B x S_ x (heads x head_dim), S_ = local_seq_len(); a
// head-split one B x S x (heads / sp x head_dim). Member j is sent its heads of this rank's
// positions (to heads) or this rank's heads of its positions (back); what member i sends lands
// at its positions (to heads) or its heads (back). The world's all-to-all carries it: blocks
// for ranks outside the group are empty (zeros), so it moves ranks / sp times the bytes NCCL's
// grouped send/recv would, outside the pools as the other collectives' staging is.
void Executor::ulysses_all_to_all(const Op& op, std::int64_t it) {
  const auto ins = program_.inputs(op);
  const auto outs = program_.outputs(op);
  MSTPLAN_CHECK(comm_ != nullptr && sp_ > 1 && ins.size() == outs.size(), "{}: an all-to-all without Ulysses", op.label);
  const std::int64_t B = program_.batch, S = program_.seq_len, local = program_.local_seq_len(), hd = model_.head_dim;
  const std::int64_t group_first = rank_ / sp_ * sp_;
  for (std::size_t i = 0; i < ins.size(); ++i) {
    const Tensor& src = program_.tensors[ins[i]];
    const Tensor& dst = program_.tensors[outs[i]];
    const bool to_heads = dst.split == Split::all_positions;
    MSTPLAN_CHECK(src.split != dst.split && src.elements == dst.elements, "{}: {} -> {} is no Ulysses exchange", op.label,
                  tensor_name(program_, ins[i]), tensor_name(program_, outs[i]));
    const std::int64_t heads = src.elements / (B * local * hd);  // on the sequence-split side
    const std::int64_t share = heads / sp_;                       // heads per rank
    MSTPLAN_CHECK(heads * B * local * hd == src.elements && share * sp_ == heads, "{}: {} heads over {} ranks", op.label,
                  heads, sp_);
    const std::int64_t block = B * local * share * hd;
    // Element (b, s, h, d) of a block: s one of S_ positions, h one of `share` heads.
    auto at = [&](std::int64_t b, std::int64_t s, std::int64_t h) { return ((b * local + s) * share + h) * hd; };
    const std::vector<float> x = read_instance(instance(ins[i], it));
    std::vector<float> send(static_cast<std::size_t>(block * ranks_), 0.0f), recv(send.size());
    for (std::int64_t j = 0; j < sp_; ++j) {
      float* to = send.data() + (group_first + j) * block;
      for (std::int64_t b = 0; b < B; ++b) {
        for (std::int64_t s = 0; s < local; ++s) {
          for (std::int64_t h = 0; h < share; ++h) {
            const std::int64_t from = to_heads ? ((b * local + s) * heads + j * share + h) * hd
                                               : ((b * S + j * local + s) * share + h) * hd;
            std::copy_n(x.data() + from, hd, to + at(b, s, h));
          }
        }
      }
    }
    comm_->all_to_all(send, recv);
    std::vector<float> y(static_cast<std::size_t>(dst.elements));
    for (std::int64_t j = 0; j < sp_; ++j) {
      const float* from = recv.data() + (group_first + j) * block;
      for (std::int64_t b = 0; b < B; ++b) {
        for (std::int64_t s = 0; s < local; ++s) {
          for (std::int64_t h = 0; h < share; ++h) {
            const std::int64_t to = to_heads ? ((b * S + j * local + s) * share + h) * hd
                                             : ((b * local + s) * heads + j * share + h) * hd;
            std::copy_n(from + at(b, s, h), hd, y.data() + to);
          }
        }
      }
    }
    write_instance(instance(outs[i], it), y);
  }
}

// Key/value heads repeated to one per rank before Ulysses' all-to-all (head h to heads
// h x r ... h x r + r - 1, r = sp / kv, as repeat_interleave; rank j then holds key/value head
// j / r, the one its query heads read), and in backward the r repeats' gradients summed in fp32
// and rounded once (accumulated into a live output). A copy, run where the collectives' staging
// runs: multi-rank plans execute on the CPU backend only.
void Executor::repeat_kv(const Op& op, std::int64_t it, bool backward) {
  const auto ins = program_.inputs(op);
  const auto outs = program_.outputs(op);
  const std::int64_t kv = model_.num_kv_heads, hd = model_.head_dim, r = sp_ / kv;
  const std::int64_t rows = program_.batch * program_.local_seq_len();
  MSTPLAN_CHECK(ins.size() == 2 && outs.size() == 2 && r * kv == sp_, "{}: {} key/value heads over {} ranks", op.label,
                kv, sp_);
  for (std::size_t i = 0; i < 2; ++i) {
    const std::vector<float> x = read_instance(instance(ins[i], it));
    const std::uint32_t dst = instance(outs[i], it);
    const bool fresh = std::find(fresh_.begin(), fresh_.end(), dst) != fresh_.end();
    std::vector<float> y = backward && !fresh ? read_instance(dst)
                                              : std::vector<float>(static_cast<std::size_t>(program_.tensors[outs[i]].elements), 0.0f);
    for (std::int64_t row = 0; row < rows; ++row) {
      for (std::int64_t h = 0; h < kv; ++h) {
        for (std::int64_t j = 0; j < r; ++j) {
          const auto wide = static_cast<std::size_t>((row * sp_ + h * r + j) * hd);
          const auto narrow = static_cast<std::size_t>((row * kv + h) * hd);
          for (std::size_t d = 0; d < static_cast<std::size_t>(hd); ++d) {
            if (backward) y[narrow + d] += x[wide + d];
            else y[wide + d] = x[narrow + d];
          }
        }
      }
    }
    write_instance(dst, y);
  }
}

// Context parallelism's collectives among the cp ranks of this rank's group (Note
// [Context-parallel step] in builder.cpp): the all-gather of k and v from each member's S_
// positions into all S (member j's at positions [j x S_, (j + 1) x S_)), and the reduce-scatter
// of the gathered keys' and values' gradients, each member's positions summed over the group in
// member order (in fp32, rounded once; added into a live output). The world's all-gather carries
// them, outside the pools as the other collectives' staging is.
void Executor::sequence_collective(const Op& op, std::int64_t it) {
  const auto ins = program_.inputs(op);
  const auto outs = program_.outputs(op);
  MSTPLAN_CHECK(cp_ > 1, "{}: an activation collective without context parallelism", op.label);
  const std::int64_t B = program_.batch, S = program_.seq_len, local = program_.local_seq_len();
  const std::int64_t group_first = rank_ / cp_ * cp_;
  for (std::size_t i = 0; i < ins.size(); ++i) {
    const Tensor& src = program_.tensors[ins[i]];
    const Tensor& dst = program_.tensors[outs[i]];
    const bool gather = op.code == OpCode::all_gather;
    MSTPLAN_CHECK((gather ? src.split == Split::sequence && dst.split == Split::all_positions
                          : src.split == Split::all_positions && dst.split == Split::sequence) &&
                      (op.code == OpCode::all_gather || op.code == OpCode::reduce_scatter),
                  "{}: {} -> {} is no context-parallel collective", op.label, tensor_name(program_, ins[i]),
                  tensor_name(program_, outs[i]));
    const std::int64_t cols = (gather ? src.elements : dst.elements) / (B * local);
    const std::vector<float> x = read_instance(instance(ins[i], it));
    std::vector<float> all(x.size() * static_cast<std::size_t>(ranks_));
    comm_->all_gather(x, all);
    const std::uint32_t out = instance(outs[i], it);
    std::vector<float> y;
    if (gather) {
      y.resize(static_cast<std::size_t>(dst.elements));
      for (std::int64_t j = 0; j < cp_; ++j) {
        const float* from = all.data() + (group_first + j) * src.elements;
        for (std::int64_t b = 0; b < B; ++b) {
          std::copy_n(from + b * local * cols, local * cols, y.data() + (b * S + j * local) * cols);
        }
      }
    } else {
      const bool fresh = std::find(fresh_.begin(), fresh_.end(), out) != fresh_.end();
      y = fresh ? std::vector<float>(static_cast<std::size_t>(dst.elements), 0.0f) : read_instance(out);
      for (std::int64_t j = 0; j < cp_; ++j) {
        const float* from = all.data() + (group_first + j) * src.elements;
        for (std::int64_t b = 0; b < B; ++b) {
          const float* rows = from + (b * S + member_ * local) * cols;
          float* to = y.data() + b * local * cols;
          for (std::int64_t e = 0; e < local * cols; ++e) to[e] += rows[e];
        }
      }
    }
    write_instance(out, y);
  }
}

}  // namespace mstplan
