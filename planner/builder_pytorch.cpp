// The PyTorch profile of the step program: what Hugging Face transformers on PyTorch autograd
// allocates and keeps, op by op.
//
// Note [PyTorch step]
// -------------------
// Versions: torch >= 2.5 and the transformers code the setup's `framework` names: transformers-5
// (4.49 and later: ForCausalLMLoss pads the labels instead of slicing the logits; SDPA is called
// with enable_gqa when there is no attention mask, integrations/sdpa_attention.py's
// use_gqa_in_sdpa, so key/value heads are not repeated: the release that brought that is not
// pinned here, 5.x has it), transformers-4.46 (4.46 to 4.48: the loss
// upcasts and slices a contiguous shifted fp32 copy), transformers-4.44 (up to 4.45: the model
// upcasts all logits with .float(), the loss slices the shifted copy, the fp32 logits are the
// output; LlamaSdpaAttention repeats key/value heads, repeat_kv, before SDPA) and torchtune (its
// decoder returns `self.output(h).float()`, the recipe shifts the labels and `del logits` after
// the loss; key/value heads expanded before SDPA). bf16 parameters (or fp32 parameters under
// torch.autocast for `mixed`). Sources: tools/autograd/derivatives.yaml (what each backward
// formula reads; gen_variable_type.py saves an operand of mul/mm only when the other operand
// requires grad), transformers models/llama/modeling_llama.py (v4.44.0 and v4.49.0),
// models/gemma2/modeling_gemma2.py, integrations/sdpa_attention.py, loss/loss_utils.py (v4.46.0:
// `shift_logits = logits[..., :-1, :].contiguous()`; v4.49.0: `labels = nn.functional.pad(labels,
// (0, 1), value=ignore_index)`), torchtune modules/transformer.py and recipes/
// full_finetune_single_device.py (commit 1814feb), flash-attn's flash_api.cpp (mha_bwd's
// dk_expanded/dv_expanded for GQA), torch/optim/adamw.py, c10/cuda/CUDACachingAllocator.cpp.
// T = batch x seq tokens.
//
//   embedding         saves the int64 ids; Gemma 2 multiplies by sqrt(d) (a new tensor)
//   rotary tables     cos, sin (batch x seq x head_dim) once per forward, saved by every RoPE mul
//   LlamaRMSNorm      x.to(fp32) (saved by pow and mul), pow (transient), rsqrt (saved, T fp32),
//                     x32 * rstd (transient fp32), .to(bf16) (saved by weight *), weight * that
//                     -> output. Gemma2RMSNorm: keeps x32 and the fp32 normalised tensor, applies
//                     (1 + w) in fp32, casts the result.
//   q/k/v/o, MLP linears  save their input (a view) and the weight
//   RoPE              q * cos, rotate_half(q) (neg of a half, then cat), * sin, add: transients;
//                     the rotated q and k are new tensors, saved by attention
//   SDPA (flash)      saves q, k, v, the output and logsumexp (batch x heads x seq fp32); the output
//                     is transposed and made contiguous (a copy, saved by o_proj)
//   eager attention   repeat_kv copies of k and v, scores (bf16), softmax in fp32 (saved), cast to
//                     bf16 (saved by the PV matmul); Gemma 2 soft-caps the scores with tanh (saved)
//   MLP               gate (saved by silu / gelu), act (saved by mul), up (saved by mul),
//                     act * up (saved by down_proj): 4 x T x I; MST paper mode keeps these for
//                     every chunk; tiled mode (a custom autograd Function) keeps only the input
//   residual adds     save nothing: the residual stream itself is not kept in bf16
//   LM head + loss    logits (bf16), logits.float() (fp32), [4.44, 4.46: the shifted contiguous
//                     fp32 copy], log_softmax (fp32, saved). The model output (bf16 logits; fp32 in
//                     4.44 and torchtune) dies once the loss is computed (the HF Trainer, and
//                     `loss = model(...).loss`, drop it), or with `hold_outputs` lives into the next
//                     step, whose forward runs with it (`outputs.previous`). Backward: nll grad
//                     (fp32), log_softmax grad (fp32), [the shift's SliceBackward: a zero-filled
//                     full-size fp32 gradient], cast to bf16. MST modes are a custom Function per
//                     chunk: forward under no_grad, the backward recomputes logits, softmax in fp32,
//                     cast to bf16.
//   flash-attn        (attn_implementation="flash_attention_2") saves q, k, v, the output and lse
//                     with no contiguous copy of the output; mha_bwd expands dk and dv to the query
//                     heads (two workspaces) for GQA.
//   weight gradients  the first one is stolen as .grad; a later one (chunk loops, accumulation)
//                     is a new tensor added into .grad, so both exist for a moment
//   input gradients of a tensor used several times are summed (InputBuffer, in place)
//   torch.split       backward concatenates the chunk gradients into one tensor
//   checkpointing     (torch.utils.checkpoint) keeps the layer input; the recomputation reruns the
//                     layer and stops after the last saved tensor (no final residual add)
//   AdamW             in backward (a hook per parameter, single-tensor code): exp_avg_sq.sqrt()
//                     and the division make two parameter-sized temporaries; at the end
//                     (foreach): one temporary list the size of all parameters (exp_avg_sq_sqrt)
//   gradients         after backward with zero_grad(set_to_none=True) (the default): each is
//                     allocated by its first write in backward and freed after the step
//   allocator         every request rounded up to 512 bytes (round_size); the caching allocator's
//                     segments, block splitting and caching are simulated on the whole step
//                     (Note [Caching allocator] in caching_allocator.h), and decide what fits
//
// Note [MST authors' code]
// ------------------------
// Plan::authors_code follows wdlctc/mini-s minis/mini_sequence.py (commit 797c54b) and its
// scripts/benchmark_minis.py: LlamaMLPWarpper splits the sequence into chunks of
// max(4096 // batch, 1024) tokens and runs the original MLP on each inside autograd (every
// chunk's intermediates saved), then torch.cat's the outputs (a new tensor; the chunk outputs live
// until it is made); LlamaForCausalLMWarpper runs 64 chunks through an autograd Function that saves
// a contiguous copy of the chunk's hidden states (the same bytes as keeping the final norm's
// output), and in backward adds the chunk's weight gradient into lm_head.weight.grad in place
// (torch.addmm(..., out=weights.grad)), returning it to autograd at the last chunk (which doubles
// it; the bytes are the same); the optimizer hook skips lm_head.weight (`later`) and steps it from
// the embedding's hook, so its gradient lives through the layers' backward. Not modelled: its
// `q_len // 64` chunks drop the remainder of the positions (a correctness bug worth a few rows).
// Under autocast (mixed): fp32 parameters and an fp32 residual stream; each linear reads bf16
// copies of its input and of its weight (weight copies are cached until autocast exits, after the
// loss, and saved until the linear's backward). Not modelled yet: fp32 type promotion in RoPE
// under autocast; reentrant checkpointing (HF's default before 4.5x: use_reentrant=True) keeps the
// recomputed layer's output during its backward, one T x d tensor more than modelled. Chunk
// backward loops run in forward order here; autograd runs them last chunk first, which changes the
// peak by less than one chunk's transients.

#include <tuple>

#include "planner/builder_internal.h"

namespace mstplan::detail {
namespace {

// Literal labels of one norm's tensors and ops.
struct NormLabels {
  const char *name, *upcast, *x32, *pow, *rstd, *rsqrt, *scale, *normed, *weight, *weighted, *out, *downcast;
  const char *grad_weight, *d_normed, *grad_upcast, *d_x32, *grad_scale, *grad_variance, *grad_downcast, *d_in;
  const char *residual_grad, *workspace;
};
#define MSTPLAN_NORM_LABELS(n)                                                                                     \
  NormLabels {                                                                                                     \
    n, n ".upcast", n ".x32", n ".pow", n ".rstd", n ".rsqrt", n ".scale", n ".normed", n ".weight",            \
        n ".weighted", n ".out", n ".downcast", n ".weight.grad", n ".dnormed", n ".downcast.grad", n ".dx32",     \
        n ".scale.grad", n ".variance.grad", n ".upcast.grad", n ".din", n ".residual.grad", n ".grad.tmp"       \
  }
const NormLabels kAttnNorm = MSTPLAN_NORM_LABELS("attn_norm");
const NormLabels kAttnPostNorm = MSTPLAN_NORM_LABELS("attn_post_norm");
const NormLabels kMlpNorm = MSTPLAN_NORM_LABELS("mlp_norm");
const NormLabels kMlpPostNorm = MSTPLAN_NORM_LABELS("mlp_post_norm");
const NormLabels kFinalNorm = MSTPLAN_NORM_LABELS("final_norm");
#undef MSTPLAN_NORM_LABELS

// Literal labels of RoPE on q or k.
struct RopeLabels {
  const char *cos, *rotated, *neg, *sin, *out, *add, *grad, *d_in, *tmp_a, *tmp_b, *tmp_neg, *cos_op, *rotate_op, *sin_op;
};
const RopeLabels kRopeQ{"attn.q.cos", "attn.q.rotated", "attn.q.neg", "attn.q.sin", "attn.q.rope", "attn.rope.q.add",
                        "attn.rope.q.grad", "attn.dq", "attn.dq.cos", "attn.dq.sin", "attn.dq.neg", "attn.rope.q.cos",
                        "attn.rope.q.rotate", "attn.rope.q.sin"};
const RopeLabels kRopeK{"attn.k.cos", "attn.k.rotated", "attn.k.neg", "attn.k.sin", "attn.k.rope", "attn.rope.k.add",
                        "attn.rope.k.grad", "attn.dk", "attn.dk.cos", "attn.dk.sin", "attn.dk.neg", "attn.rope.k.cos",
                        "attn.rope.k.rotate", "attn.rope.k.sin"};

class PytorchStep final : public StepBuilder {
 public:
  PytorchStep(const ModelSpec& model, const TrainingSetup& setup, const Plan& plan, std::int64_t seq_len)
      : StepBuilder(model, setup, plan, seq_len), layers_(static_cast<std::size_t>(model.num_layers)) {}

 private:
  // What one norm saved for its backward.
  struct NormState {
    const NormLabels* labels = nullptr;
    TensorId input = kNoTensor;  // what the norm read (its backward needs it in fp32: x32)
    TensorId x32 = kNoTensor, rstd = kNoTensor, normed = kNoTensor;  // saved
    std::int32_t param = kNone;
  };
  struct LayerState {
    NormState attn_norm, attn_post_norm, mlp_norm, mlp_post_norm;
    TensorId n1 = kNoTensor, q = kNoTensor, k = kNoTensor, v = kNoTensor, o = kNoTensor, lse = kNoTensor;
    TensorId o_contig = kNoTensor, probs32 = kNoTensor, probs = kNoTensor, k_rep = kNoTensor, v_rep = kNoTensor;
    TensorId n2 = kNoTensor, h_mid = kNoTensor;
    std::vector<TensorId> gate, act, up, prod;  // paper mode: per chunk class
    TensorId weights_bf16 = kNoTensor;          // autocast: bf16 copies of the layer's matmul weights
  };

  void forward_begin() override;
  void embedding_forward() override;
  void layer_forward(std::int32_t l, Pass pass) override;
  void lm_head() override;
  void layer_backward(std::int32_t l) override;
  void embedding_backward(TensorId dh0) override;

  void mlp_forward(std::int32_t l, Pass pass, LayerState& st, TensorId out, bool keep);
  TensorId norm(const NormLabels& n, TensorId x, std::int32_t param, std::int32_t l, Pass pass, bool keep, NormState& ns,
                Phase phase = Phase::forward);
  TensorId norm_grad(TensorId dout, const NormState& ns, std::int32_t l, TensorId residual_grad,
                     Phase phase = Phase::backward);
  TensorId rope(const RopeLabels& r, TensorId x, std::int64_t width, std::int32_t l, Pass pass);
  TensorId rope_grad(const RopeLabels& r, TensorId dx, std::int64_t width, std::int32_t l);
  void autocast_exit();

  std::vector<LayerState> layers_;
  std::vector<TensorId> autocast_cache_;  // weight copies autocast caches until it exits
  TensorId rope_cos_ = kNoTensor, rope_sin_ = kNoTensor;
  TensorId previous_output_ = kNoTensor;  // hold_outputs: the previous step's logits
};

void PytorchStep::forward_begin() {
  if (s_.hold_outputs && plan_.lm_head_mode == LmHeadMode::keep) {
    // The previous step's output, held by the loop until this step's forward returns.
    previous_output_ = tensor("outputs.previous.logits", TensorKind::saved, policy_.fp32_output ? DType::fp32 : DType::bf16,
                              T_ * m_.vocab_size, kNone, Pass::forward);
    autograd_op("outputs.previous", OpKind::elementwise, Phase::forward, Pass::forward, kNone, {}, {previous_output_});
  }
}

void PytorchStep::embedding_forward() {
  const std::int64_t d = m_.hidden_size;
  const TensorKind kind = recomputed(0) ? TensorKind::checkpoint : TensorKind::transient;
  TensorId h0 = tensor("input", m_.family == Family::gemma2 ? TensorKind::transient : kind, policy_.residual, T_ * d, 0,
                       Pass::forward);
  autograd_op("embedding", OpKind::embedding, Phase::forward, Pass::forward, kNone, {tokens_, weight(embed_param_)}, {h0});
  if (m_.family == Family::gemma2) {
    const TensorId scaled = tensor("input", kind, policy_.residual, T_ * d, 0, Pass::forward);
    autograd_op("embedding.scale", OpKind::elementwise, Phase::forward, Pass::forward, kNone, {h0}, {scaled});
    h0 = scaled;
  }
  inputs_[0] = h0;
  rope_cos_ = tensor("rope.cos", TensorKind::saved, policy_.residual, B_ * S_ * m_.head_dim, kNone, Pass::forward);
  rope_sin_ = tensor("rope.sin", TensorKind::saved, policy_.residual, B_ * S_ * m_.head_dim, kNone, Pass::forward);
  autograd_op("rope.tables", OpKind::elementwise, Phase::forward, Pass::forward, kNone, {}, {rope_cos_, rope_sin_});
}

TensorId PytorchStep::norm(const NormLabels& n, TensorId x, std::int32_t param, std::int32_t l, Pass pass, bool keep,
                          NormState& ns, Phase phase) {
  const std::int64_t d = m_.hidden_size;
  const bool gemma = m_.family == Family::gemma2;
  const TensorKind kept = keep ? TensorKind::saved : TensorKind::transient;
  TensorId x32 = x;  // .to(float32) of an fp32 tensor is the tensor itself
  if (p_.tensors[x].dtype != DType::fp32) {
    x32 = tensor(n.x32, kept, DType::fp32, T_ * d, l, pass);
    autograd_op(n.upcast, OpKind::elementwise, phase, pass, l, {x}, {x32});
  } else if (keep && p_.tensors[x].kind == TensorKind::transient) {
    p_.tensors[x].kind = TensorKind::saved;
  }
  const TensorId pw = tensor(n.pow, TensorKind::transient, DType::fp32, T_ * d, l, pass);
  autograd_op(n.pow, OpKind::elementwise, phase, pass, l, {x32}, {pw});
  const TensorId rstd = tensor(n.rstd, kept, DType::fp32, T_, l, pass);
  autograd_op(n.rsqrt, OpKind::elementwise, phase, pass, l, {pw}, {rstd});
  const bool fp32_out = gemma || policy_.residual == DType::fp32;
  const TensorId y32 = tensor(n.normed, fp32_out ? kept : TensorKind::transient, DType::fp32, T_ * d, l, pass);
  autograd_op(n.scale, OpKind::elementwise, phase, pass, l, {x32, rstd}, {y32});
  const TensorId w = weight(param);
  TensorId out = kNoTensor;
  ns.normed = y32;
  if (gemma) {
    const TensorId weighted = tensor(n.weighted, TensorKind::transient, DType::fp32, T_ * d, l, pass);
    autograd_op(n.weight, OpKind::elementwise, phase, pass, l, {y32, w}, {weighted});
    out = tensor(n.out, TensorKind::transient, policy_.residual == DType::fp32 ? DType::fp32 : DType::bf16, T_ * d, l, pass);
    autograd_op(n.downcast, OpKind::elementwise, phase, pass, l, {weighted}, {out});
  } else if (policy_.residual == DType::fp32) {
    out = tensor(n.out, TensorKind::transient, DType::fp32, T_ * d, l, pass);
    autograd_op(n.weight, OpKind::elementwise, phase, pass, l, {w, y32}, {out});
  } else {
    const TensorId yb = tensor(n.normed, kept, DType::bf16, T_ * d, l, pass);
    autograd_op(n.downcast, OpKind::elementwise, phase, pass, l, {y32}, {yb});
    out = tensor(n.out, TensorKind::transient, DType::bf16, T_ * d, l, pass);
    autograd_op(n.weight, OpKind::elementwise, phase, pass, l, {w, yb}, {out});
    ns.normed = yb;
  }
  ns.labels = &n;
  ns.input = x;
  ns.x32 = x32;
  ns.rstd = rstd;
  ns.param = param;
  return out;
}

TensorId PytorchStep::norm_grad(TensorId dout, const NormState& ns, std::int32_t l,
                               TensorId residual_grad, Phase phase) {
  const NormLabels& n = *ns.labels;
  const std::int64_t d = m_.hidden_size;
  const bool gemma = m_.family == Family::gemma2;
  const TensorId w = weight(ns.param);
  // weight * normed: the gradient of normed, and the weight's (a T x d product, then a sum).
  const DType product = gemma || policy_.residual == DType::fp32 ? DType::fp32 : DType::bf16;
  TensorId d_normed = tensor(n.d_normed, TensorKind::transient, product, T_ * d, l, Pass::backward);
  const TensorId tmp = tensor(n.workspace, TensorKind::workspace, product, T_ * d, l, Pass::backward);
  const auto [g, partial] = grad_outputs(ns.param, l, false);
  autograd_op(n.grad_weight, OpKind::elementwise, phase, Pass::backward, l, {dout, ns.normed, w},
              {d_normed, tmp, g, partial});
  grad_done(ns.param);
  TensorId d_y32 = d_normed;
  if (product != DType::fp32) {
    d_y32 = tensor(n.d_x32, TensorKind::transient, DType::fp32, T_ * d, l, Pass::backward);
    autograd_op(n.grad_upcast, OpKind::elementwise, phase, Pass::backward, l, {d_normed}, {d_y32});
  }
  // x32 * rstd: d_x32 = d_y32 * rstd, and d_rstd = sum(d_y32 * x32) through a T x d product.
  const TensorId d_x32 = tensor(n.d_x32, TensorKind::transient, DType::fp32, T_ * d, l, Pass::backward);
  const TensorId tmp1 = tensor(n.workspace, TensorKind::workspace, DType::fp32, T_ * d, l, Pass::backward);
  autograd_op(n.grad_scale, OpKind::elementwise, phase, Pass::backward, l, {d_y32, ns.x32, ns.rstd}, {d_x32, tmp1});
  // rsqrt, mean and pow: d_pow expanded to T x d, times 2 x32, added into d_x32.
  const TensorId tmp2 = tensor(n.workspace, TensorKind::workspace, DType::fp32, T_ * d, l, Pass::backward);
  const TensorId tmp3 = tensor(n.workspace, TensorKind::workspace, DType::fp32, T_ * d, l, Pass::backward);
  autograd_op(n.grad_variance, OpKind::elementwise, phase, Pass::backward, l, {d_x32, ns.x32, ns.rstd}, {d_x32, tmp2, tmp3});
  TensorId d_in = d_x32;
  if (p_.tensors[ns.input].dtype != DType::fp32) {
    d_in = tensor(n.d_in, TensorKind::transient, p_.tensors[ns.input].dtype, T_ * d, l, Pass::backward);
    autograd_op(n.grad_downcast, OpKind::elementwise, phase, Pass::backward, l, {d_x32}, {d_in});
  }
  if (residual_grad == kNoTensor) return d_in;
  // The residual branch's gradient is summed into it (autograd's InputBuffer, in place).
  autograd_op(n.residual_grad, OpKind::elementwise, phase, Pass::backward, l, {residual_grad}, {d_in});
  return d_in;
}

TensorId PytorchStep::rope(const RopeLabels& r, TensorId x, std::int64_t width, std::int32_t l, Pass pass) {
  const TensorId xc = tensor(r.cos, TensorKind::transient, DType::bf16, T_ * width, l, pass);
  autograd_op(r.cos_op, OpKind::elementwise, Phase::forward, pass, l, {x, rope_cos_}, {xc});
  const TensorId neg = tensor(r.neg, TensorKind::transient, DType::bf16, T_ * width / 2, l, pass);
  const TensorId rot = tensor(r.rotated, TensorKind::transient, DType::bf16, T_ * width, l, pass);
  autograd_op(r.rotate_op, OpKind::elementwise, Phase::forward, pass, l, {x}, {neg, rot});
  const TensorId xs = tensor(r.sin, TensorKind::transient, DType::bf16, T_ * width, l, pass);
  autograd_op(r.sin_op, OpKind::elementwise, Phase::forward, pass, l, {rot, rope_sin_}, {xs});
  const TensorId out = tensor(r.out, TensorKind::saved, DType::bf16, T_ * width, l, pass);
  autograd_op(r.add, OpKind::elementwise, Phase::forward, pass, l, {xc, xs}, {out});
  return out;
}

TensorId PytorchStep::rope_grad(const RopeLabels& r, TensorId dx, std::int64_t width, std::int32_t l) {
  const TensorId d_in = tensor(r.d_in, TensorKind::transient, DType::bf16, T_ * width, l, Pass::backward);
  const TensorId a = tensor(r.tmp_a, TensorKind::workspace, DType::bf16, T_ * width, l, Pass::backward);
  const TensorId b = tensor(r.tmp_b, TensorKind::workspace, DType::bf16, T_ * width, l, Pass::backward);
  const TensorId neg = tensor(r.tmp_neg, TensorKind::workspace, DType::bf16, T_ * width / 2, l, Pass::backward);
  autograd_op(r.grad, OpKind::elementwise, Phase::backward, Pass::backward, l, {dx, rope_cos_, rope_sin_}, {d_in, a, b, neg});
  return d_in;
}

void PytorchStep::layer_forward(std::int32_t l, Pass pass) {
  LayerState& st = layers_[static_cast<std::size_t>(l)];
  const LayerParams& lp = params_of(l);
  const std::int64_t d = m_.hidden_size;
  const bool keep = pass == Pass::recompute || !recomputed(l);
  const bool keep_mlp = keep && !selective(l);
  const TensorKind kept = keep ? TensorKind::saved : TensorKind::transient;
  const TensorId h = inputs_[static_cast<std::size_t>(l)];

  if (storage_.autocast) {
    // autocast casts each fp32 weight to bf16 once per forward (cached until it exits) and the
    // matmuls save the copies: here one tensor for the layer's matmul weights.
    std::int64_t elements = 0;
    for (std::int32_t p : {lp.q, lp.k, lp.v, lp.o, lp.gate, lp.up, lp.down}) {
      elements += p_.params[static_cast<std::size_t>(p)].numel();
    }
    st.weights_bf16 = tensor("autocast.weights", TensorKind::saved, DType::bf16, elements, l, pass);
    autograd_op("autocast.cast", OpKind::elementwise, Phase::forward, pass, l, {weight(lp.q)}, {st.weights_bf16});
    if (pass == Pass::forward) autocast_cache_.push_back(st.weights_bf16);
  }
  const TensorId n1 = norm(kAttnNorm, h, lp.attn_norm, l, pass, keep, st.attn_norm);
  p_.tensors[n1].kind = kept;  // saved by the q/k/v linears
  const TensorId q = tensor("attn.q", TensorKind::transient, DType::bf16, T_ * qd_, l, pass);
  const TensorId k = tensor("attn.k", TensorKind::transient, DType::bf16, T_ * kvd_, l, pass);
  const TensorId v = tensor("attn.v", kept, DType::bf16, T_ * kvd_, l, pass);
  linear("attn.q", Phase::forward, pass, l, n1, lp.q, q, T_, qd_, d, lp.qb);
  linear("attn.k", Phase::forward, pass, l, n1, lp.k, k, T_, kvd_, d, lp.kb);
  linear("attn.v", Phase::forward, pass, l, n1, lp.v, v, T_, kvd_, d, lp.vb);
  st.n1 = n1;
  st.q = rope(kRopeQ, q, qd_, l, pass);
  st.k = rope(kRopeK, k, kvd_, l, pass);
  p_.tensors[st.q].kind = kept;
  p_.tensors[st.k].kind = kept;
  st.v = v;
  if (ulysses()) {
    // ALST's attention wrapper: the rotated q, k and v are all-to-all'd into head-split copies,
    // which the attention function saves; its all-to-all Function saves nothing.
    std::tie(st.q, st.k, st.v) = qkv_to_heads(l, pass, kept, DType::bf16, st.q, st.k, st.v);
  }
  st.o = tensor("attn.out", kept, DType::bf16, T_ * qd_, l, pass);
  if (s_.attention != AttentionKind::eager) {
    TensorId key = st.k, value = st.v;
    st.k_rep = st.v_rep = kNoTensor;
    if (policy_.repeat_kv) {
      // transformers <= 4.45 repeats the key/value heads before SDPA: the copies are what it saves.
      st.k_rep = tensor("attn.k.repeated", kept, DType::bf16, T_ * qd_, l, pass);
      st.v_rep = tensor("attn.v.repeated", kept, DType::bf16, T_ * qd_, l, pass);
      autograd_op("attn.repeat_kv", OpKind::elementwise, Phase::forward, pass, l, {st.k, st.v}, {st.k_rep, st.v_rep});
      p_.tensors[st.k].kind = TensorKind::transient;
      p_.tensors[st.v].kind = TensorKind::transient;
      key = st.k_rep;
      value = st.v_rep;
    }
    st.lse = tensor("attn.lse", kept, DType::fp32, B_ * heads_ * A_, l, pass);
    attention_op(OpCode::attention, pass, l, {st.q, key, value}, {st.o, st.lse});
  } else {
    const std::int64_t scores = B_ * heads_ * A_ * A_;
    st.k_rep = tensor("attn.k.repeated", kept, DType::bf16, T_ * qd_, l, pass);
    st.v_rep = tensor("attn.v.repeated", kept, DType::bf16, T_ * qd_, l, pass);
    autograd_op("attn.repeat_kv", OpKind::elementwise, Phase::forward, pass, l, {st.k, st.v}, {st.k_rep, st.v_rep});
    TensorId s = tensor("attn.scores", TensorKind::transient, DType::bf16, scores, l, pass);
    eager_matmul("attn.scores", OpCode::eager_scores, Phase::forward, pass, l, {st.q, st.k_rep}, {s}, A_, A_, m_.head_dim);
    if (m_.attn_logit_softcap) {
      const TensorId tanh = tensor("attn.scores.tanh", kept, DType::bf16, scores, l, pass);
      const TensorId capped = tensor("attn.scores.capped", TensorKind::transient, DType::bf16, scores, l, pass);
      autograd_op("attn.softcap", OpKind::elementwise, Phase::forward, pass, l, {s}, {tanh, capped});
      s = capped;
    }
    const TensorId masked = tensor("attn.scores.masked", TensorKind::transient, DType::bf16, scores, l, pass);
    autograd_op("attn.mask", OpKind::elementwise, Phase::forward, pass, l, {s}, {masked});
    st.probs32 = tensor("attn.probs32", kept, DType::fp32, scores, l, pass);
    autograd_op("attn.softmax", OpKind::softmax, Phase::forward, pass, l, {masked}, {st.probs32});
    st.probs = tensor("attn.probs", kept, DType::bf16, scores, l, pass);
    autograd_op("attn.probs.cast", OpKind::elementwise, Phase::forward, pass, l, {st.probs32}, {st.probs});
    eager_matmul("attn.pv", OpCode::eager_pv, Phase::forward, pass, l, {st.probs, st.v_rep}, {st.o}, A_, m_.head_dim, A_);
  }
  if (s_.attention == AttentionKind::flash_attn) {
    st.o_contig = st.o;  // flash-attn returns (batch, seq, heads, dim): o_proj reads a view
  } else {
    // Under Ulysses the copy is made inside the wrapped attention function and only sent on.
    st.o_contig = tensor("attn.out.contiguous", ulysses() ? TensorKind::transient : kept, DType::bf16, T_ * qd_, l, pass);
    autograd_op("attn.out.contiguous", OpKind::elementwise, Phase::forward, pass, l, {st.o}, {st.o_contig});
  }
  if (ulysses()) {
    const TensorId o = tensor("attn.out.sequence", kept, DType::bf16, T_ * qd_, l, pass);
    all_to_all("attn.out.all_to_all", Phase::forward, pass, l, {st.o_contig}, {o});
    st.o_contig = o;  // what o_proj saves
  }
  const TensorId a = tensor("attn.proj", TensorKind::transient, DType::bf16, T_ * d, l, pass);
  linear("attn.o", Phase::forward, pass, l, st.o_contig, lp.o, a, T_, d, qd_);
  TensorId a_out = a;
  if (m_.norms_per_layer == 4) a_out = norm(kAttnPostNorm, a, lp.attn_post_norm, l, pass, keep, st.attn_post_norm);
  st.h_mid = tensor("attn.residual", TensorKind::transient, policy_.residual, T_ * d, l, pass);
  autograd_op("attn.residual", OpKind::elementwise, Phase::forward, pass, l, {h, a_out}, {st.h_mid});

  st.n2 = norm(kMlpNorm, st.h_mid, lp.mlp_norm, l, pass, keep_mlp, st.mlp_norm);
  if (selective(l) && pass == Pass::forward) p_.tensors[st.h_mid].kind = TensorKind::checkpoint;  // the MLP's checkpoint
  p_.tensors[st.n2].kind = keep_mlp ? TensorKind::saved : TensorKind::transient;
  const TensorId mlp_out = tensor("mlp.out", TensorKind::transient, DType::bf16, T_ * d, l, pass);
  mlp_forward(l, pass, st, mlp_out, keep_mlp);
  TensorId m_out = mlp_out;
  if (m_.norms_per_layer == 4) {
    m_out = norm(kMlpPostNorm, mlp_out, lp.mlp_post_norm, l, pass, keep, st.mlp_post_norm);
  }
  if (pass == Pass::recompute) return;  // checkpoint's early stop: no final residual add
  const bool last = l + 1 == m_.num_layers;
  TensorKind next_kind = TensorKind::transient;
  if (!last && recomputed(l + 1)) next_kind = TensorKind::checkpoint;
  const TensorId next = tensor("output", next_kind, policy_.residual, T_ * d, l, pass);
  autograd_op("mlp.residual", OpKind::elementwise, Phase::forward, pass, l, {st.h_mid, m_out}, {next});
  set_output(l, next);
}

void PytorchStep::mlp_forward(std::int32_t l, Pass pass, LayerState& st, TensorId out, bool keep) {
  const LayerParams& lp = params_of(l);
  const std::int64_t d = m_.hidden_size;
  const std::int64_t I = m_.intermediate_size;
  const bool paper = plan_.mlp_mode == MlpMode::paper && !selective(l);
  const bool keep_chunks = paper && keep;
  const TensorKind kind = keep_chunks ? TensorKind::saved : TensorKind::transient;
  st.gate.clear();
  st.act.clear();
  st.up.clear();
  st.prod.clear();
  // The authors' wrapper keeps each chunk's output and concatenates them (torch.cat, a new tensor).
  const bool concatenated = plan_.authors_code;
  std::vector<TensorId> chunk_outputs;
  if (!concatenated) prealloc("mlp.alloc", Phase::forward, pass, l, {out});
  chunk_loops(ChunkedBlock::mlp, [&](std::size_t, std::int64_t R) {
    const TensorId g = tensor("mlp.gate", kind, DType::bf16, R * I, l, pass, true);
    const TensorId act = tensor("mlp.act", kind, DType::bf16, R * I, l, pass, true);
    const TensorId u = tensor("mlp.up", kind, DType::bf16, R * I, l, pass, true);
    const TensorId prod = tensor("mlp.prod", kind, DType::bf16, R * I, l, pass, true);
    linear("mlp.gate", Phase::forward, pass, l, st.n2, lp.gate, g, R, I, d);
    autograd_op("mlp.act", OpKind::elementwise, Phase::forward, pass, l, {g}, {act});
    linear("mlp.up", Phase::forward, pass, l, st.n2, lp.up, u, R, I, d);
    autograd_op("mlp.mul", OpKind::elementwise, Phase::forward, pass, l, {act, u}, {prod});
    TensorId down = out;
    if (concatenated) {
      down = tensor("mlp.chunk_out", TensorKind::transient, DType::bf16, R * d, l, pass, true);
      chunk_outputs.push_back(down);
    }
    linear("mlp.down", Phase::forward, pass, l, prod, lp.down, down, R, d, I);
    if (keep_chunks) {
      st.gate.push_back(g);
      st.act.push_back(act);
      st.up.push_back(u);
      st.prod.push_back(prod);
    }
  });
  if (concatenated) {
    const OpId cat = open_op("mlp.cat", OpCode::autograd, OpKind::elementwise, Phase::forward, pass, l);
    push_operands(cat, chunk_outputs, std::array{out});
  }
}

void PytorchStep::lm_head() {
  const std::int64_t d = m_.hidden_size;
  const std::int64_t V = m_.vocab_size;
  const LmHeadMode mode = plan_.lm_head_mode;
  NormState ns;
  const TensorId nf = norm(kFinalNorm, final_hidden_, final_norm_param_, kNone, Pass::forward, true, ns, Phase::loss);
  p_.tensors[nf].kind = TensorKind::saved;
  loss_ = tensor("loss", TensorKind::transient, DType::fp32, 1, kNone, Pass::forward);
  const std::optional<double> cap = m_.final_logit_softcap;
  TensorId dnf = kNoTensor;

  if (mode == LmHeadMode::keep) {
    // Plain transformers: logits for every position, upcast, log_softmax (saved), NLL.
    const std::int64_t rows_all = T_;
    const TensorId logits = tensor("lm_head.logits", TensorKind::transient, DType::bf16, rows_all * V, kNone,
                                   Pass::forward);
    linear("lm_head.logits", Phase::loss, Pass::forward, kNone, nf, lm_head_param_, logits, rows_all, V, d);
    TensorId capped = logits, tanh = kNoTensor;
    if (cap) {
      tanh = tensor("lm_head.logits.tanh", TensorKind::saved, DType::bf16, rows_all * V, kNone, Pass::forward);
      capped = tensor("lm_head.logits.capped", TensorKind::transient, DType::bf16, rows_all * V, kNone, Pass::forward);
      const TensorId scaled = tensor("lm_head.logits.scaled", TensorKind::transient, DType::bf16, rows_all * V, kNone,
                                     Pass::forward);
      autograd_op("lm_head.softcap.div", OpKind::elementwise, Phase::loss, Pass::forward, kNone, {logits}, {scaled});
      autograd_op("lm_head.softcap.tanh", OpKind::elementwise, Phase::loss, Pass::forward, kNone, {scaled}, {tanh});
      autograd_op("lm_head.softcap.mul", OpKind::elementwise, Phase::loss, Pass::forward, kNone, {tanh}, {capped});
    }
    // Note [Loss paths]: transformers <= 4.45 upcasts in the model and returns the fp32 logits;
    // 4.46 to 4.48 upcast in ForCausalLMLoss; both slice a contiguous shifted fp32 copy, whose
    // backward (SliceBackward) writes a zero-filled full-size fp32 gradient. 4.49 and later shift
    // the labels instead. The upcast and the shifted copy are locals of the forward: they live until
    // the loss is computed.
    const bool shifted_copy = policy_.shifted_loss_copy;
    const std::int64_t rows_loss = shifted_copy ? B_ * (S_ - 1) : rows_all;
    const TensorId logits32 = tensor("lm_head.logits32", TensorKind::transient, DType::fp32, rows_all * V, kNone,
                                     Pass::forward);
    autograd_op("lm_head.upcast", OpKind::elementwise, Phase::loss, Pass::forward, kNone, {capped}, {logits32});
    TensorId loss_input = logits32;
    if (shifted_copy) {
      loss_input = tensor("lm_head.logits32.shifted", TensorKind::transient, DType::fp32, rows_loss * V, kNone,
                          Pass::forward);
      autograd_op("lm_head.shift", OpKind::elementwise, Phase::loss, Pass::forward, kNone, {logits32}, {loss_input});
    }
    const TensorId lsm = tensor("lm_head.log_softmax", TensorKind::saved, DType::fp32, rows_loss * V, kNone, Pass::forward);
    const OpId ls = autograd_op("lm_head.log_softmax", OpKind::loss, Phase::loss, Pass::forward, kNone, {loss_input}, {lsm});
    p_.ops[ls].m = rows_loss;
    p_.ops[ls].n = V;
    // The model output: the fp32 logits (<= 4.45) or the bf16 ones. Dropped once the loss is
    // computed (HF Trainer), or held into the next step (`outputs = model(...)`), whose forward
    // then runs with this step's output still alive: that one is `outputs.previous`.
    const TensorId output = policy_.fp32_output ? logits32 : capped;
    if (s_.hold_outputs) held_.push_back(output);
    autograd_op("lm_head.loss", OpKind::elementwise, Phase::loss, Pass::forward, kNone,
                {lsm, labels_, logits32, loss_input, output, previous_output_}, {loss_});
    autocast_exit();
    // Backward.
    const TensorId nll = tensor("lm_head.nll.grad", TensorKind::transient, DType::fp32, rows_loss * V, kNone, Pass::backward);
    autograd_op("lm_head.loss.grad", OpKind::elementwise, Phase::loss, Pass::backward, kNone, {loss_, labels_}, {nll});
    const TensorId dlsm = tensor("lm_head.log_softmax.grad", TensorKind::transient, DType::fp32, rows_loss * V, kNone,
                                 Pass::backward);
    const OpId lg = autograd_op("lm_head.log_softmax.grad", OpKind::loss, Phase::loss, Pass::backward, kNone, {nll, lsm}, {dlsm});
    p_.ops[lg].m = rows_loss;
    p_.ops[lg].n = V;
    TensorId d32 = dlsm;
    if (shifted_copy) {
      d32 = tensor("lm_head.logits32.grad", TensorKind::transient, DType::fp32, rows_all * V, kNone, Pass::backward);
      autograd_op("lm_head.shift.grad", OpKind::elementwise, Phase::loss, Pass::backward, kNone, {dlsm}, {d32});
    }
    TensorId dl = tensor("lm_head.dlogits", TensorKind::transient, DType::bf16, rows_all * V, kNone, Pass::backward);
    autograd_op("lm_head.upcast.grad", OpKind::elementwise, Phase::loss, Pass::backward, kNone, {d32}, {dl});
    if (cap) {
      const TensorId d1 = tensor("lm_head.dcapped", TensorKind::transient, DType::bf16, rows_all * V, kNone, Pass::backward);
      autograd_op("lm_head.softcap.mul.grad", OpKind::elementwise, Phase::loss, Pass::backward, kNone, {dl}, {d1});
      const TensorId d2 = tensor("lm_head.dtanh", TensorKind::transient, DType::bf16, rows_all * V, kNone, Pass::backward);
      autograd_op("lm_head.softcap.tanh.grad", OpKind::elementwise, Phase::loss, Pass::backward, kNone, {d1, tanh}, {d2});
      dl = tensor("lm_head.dlogits", TensorKind::transient, DType::bf16, rows_all * V, kNone, Pass::backward);
      autograd_op("lm_head.softcap.div.grad", OpKind::elementwise, Phase::loss, Pass::backward, kNone, {d2}, {dl});
    }
    dnf = tensor("final_norm.dout", TensorKind::transient, DType::bf16, T_ * d, kNone, Pass::backward);
    linear_dx("lm_head.dx", Phase::loss, Pass::backward, kNone, dl, lm_head_param_, {dnf}, rows_all, d, V);
    linear_dw("lm_head.dw", Phase::loss, Pass::backward, kNone, dl, nf, lm_head_param_, V, d, rows_all, plan_.authors_code);
  } else {
    // MST: a custom autograd Function over the labelled positions, chunk by chunk.
    dnf = tensor("final_norm.dout", TensorKind::transient, DType::bf16, T_ * d, kNone,
                 mode == LmHeadMode::forward_grad ? Pass::forward : Pass::backward);
    // One chunk: logits (bf16) -> fp32 (soft-capped in place) -> softmax-like fp32 pass -> dlogits (bf16).
    auto chunk = [&](Pass pass, bool gradient, std::int64_t R) {
      const TensorId lb = tensor("lm_head.logits", TensorKind::transient, DType::bf16, R * V, kNone, pass, true);
      linear("lm_head.logits", Phase::loss, pass, kNone, nf, lm_head_param_, lb, R, V, d);
      const TensorId l32 = tensor("lm_head.logits32", TensorKind::transient, DType::fp32, R * V, kNone, pass, true);
      autograd_op("lm_head.upcast", OpKind::elementwise, Phase::loss, pass, kNone, {lb}, {l32});
      const TensorId sm = tensor("lm_head.softmax", TensorKind::transient, DType::fp32, R * V, kNone, pass, true);
      const OpId ls = autograd_op("lm_head.softmax", OpKind::loss, Phase::loss, pass, kNone, {l32, labels_}, {sm, loss_});
      p_.ops[ls].m = R;
      p_.ops[ls].n = V;
      if (!gradient) return;
      const TensorId dl = tensor("lm_head.dlogits", TensorKind::transient, DType::bf16, R * V, kNone, pass, true);
      autograd_op("lm_head.dlogits", OpKind::elementwise, Phase::loss, pass, kNone, {sm, l32, labels_}, {dl});
      linear_dx("lm_head.dx", Phase::loss, pass, kNone, dl, lm_head_param_, {dnf}, R, d, V);
      linear_dw("lm_head.dw", Phase::loss, Pass::backward, kNone, dl, nf, lm_head_param_, V, d, R, plan_.authors_code);
    };
    if (mode == LmHeadMode::forward_grad) prealloc("lm_head.alloc", Phase::loss, Pass::forward, kNone, {dnf});
    chunk_loops(ChunkedBlock::lm_head,
                [&](std::size_t, std::int64_t R) { chunk(Pass::forward, mode == LmHeadMode::forward_grad, R); });
    autocast_exit();
    if (mode != LmHeadMode::forward_grad) {
      prealloc("lm_head.grad.alloc", Phase::loss, Pass::backward, kNone, {dnf});
      chunk_loops(ChunkedBlock::lm_head, [&](std::size_t, std::int64_t R) { chunk(Pass::recompute, true, R); });
    }
  }
  // The authors' hook skips the LM head's weight (`later`) and steps it after the embedding's.
  if (!m_.tied_embeddings && !(plan_.authors_code && s_.optimizer_in_backward)) grad_done(lm_head_param_);
  upstream_ = norm_grad(dnf, ns, kNone, kNoTensor, Phase::loss);
}

void PytorchStep::layer_backward(std::int32_t l) {
  LayerState& st = layers_[static_cast<std::size_t>(l)];
  const LayerParams& lp = params_of(l);
  const std::int64_t d = m_.hidden_size;
  const std::int64_t I = m_.intermediate_size;
  const TensorId dh = upstream_;

  if (selective(l)) {
    // The checkpointed MLP block reruns from its input: its norm and (below) its chunks.
    st.n2 = norm(kMlpNorm, st.h_mid, lp.mlp_norm, l, Pass::recompute, true, st.mlp_norm, Phase::backward);
    p_.tensors[st.n2].kind = TensorKind::saved;
  }

  TensorId dm = dh;
  if (m_.norms_per_layer == 4) dm = norm_grad(dh, st.mlp_post_norm, l, kNoTensor);

  // MLP, chunk by chunk: down, mul, up, act, gate (autograd's order).
  const bool tiled = plan_.mlp_mode == MlpMode::tiled || selective(l) || st.gate.empty();
  const bool split = p_.mlp_chunks > 1 && !tiled;
  TensorId dn2 = tensor("mlp_norm.dout", TensorKind::transient, DType::bf16, T_ * d, l, Pass::backward);
  if (!split) prealloc("mlp.grad.alloc", Phase::backward, Pass::backward, l, {dn2});
  std::vector<TensorId> chunk_grads;
  chunk_loops(ChunkedBlock::mlp, [&](std::size_t ci, std::int64_t R) {
    TensorId g, act, u, prod;
    if (!tiled) {
      g = st.gate[ci];
      act = st.act[ci];
      u = st.up[ci];
      prod = st.prod[ci];
    } else {
      g = tensor("mlp.gate", TensorKind::transient, DType::bf16, R * I, l, Pass::recompute, true);
      act = tensor("mlp.act", TensorKind::transient, DType::bf16, R * I, l, Pass::recompute, true);
      u = tensor("mlp.up", TensorKind::transient, DType::bf16, R * I, l, Pass::recompute, true);
      prod = tensor("mlp.prod", TensorKind::transient, DType::bf16, R * I, l, Pass::recompute, true);
      linear("mlp.gate", Phase::backward, Pass::recompute, l, st.n2, lp.gate, g, R, I, d);
      autograd_op("mlp.act", OpKind::elementwise, Phase::backward, Pass::recompute, l, {g}, {act});
      linear("mlp.up", Phase::backward, Pass::recompute, l, st.n2, lp.up, u, R, I, d);
      autograd_op("mlp.mul", OpKind::elementwise, Phase::backward, Pass::recompute, l, {act, u}, {prod});
    }
    const TensorId dprod = tensor("mlp.dprod", TensorKind::transient, DType::bf16, R * I, l, Pass::backward, true);
    linear_dx("mlp.down.dx", Phase::backward, Pass::backward, l, dm, lp.down, {dprod}, R, I, d);
    linear_dw("mlp.down.dw", Phase::backward, Pass::backward, l, dm, prod, lp.down, d, I, R);
    const TensorId dact = tensor("mlp.dact", TensorKind::transient, DType::bf16, R * I, l, Pass::backward, true);
    const TensorId dup = tensor("mlp.dup", TensorKind::transient, DType::bf16, R * I, l, Pass::backward, true);
    autograd_op("mlp.mul.grad", OpKind::elementwise, Phase::backward, Pass::backward, l, {dprod, act, u}, {dact, dup});
    const TensorId dx = split ? tensor("mlp.dinput", TensorKind::transient, DType::bf16, R * d, l, Pass::backward, true) : dn2;
    linear_dx("mlp.up.dx", Phase::backward, Pass::backward, l, dup, lp.up, {dx}, R, d, I);
    linear_dw("mlp.up.dw", Phase::backward, Pass::backward, l, dup, st.n2, lp.up, I, d, R);
    const TensorId dgate = tensor("mlp.dgate", TensorKind::transient, DType::bf16, R * I, l, Pass::backward, true);
    autograd_op("mlp.act.grad", OpKind::elementwise, Phase::backward, Pass::backward, l, {dact, g}, {dgate});
    linear_dx("mlp.gate.dx", Phase::backward, Pass::backward, l, dgate, lp.gate, {dx}, R, d, I);
    linear_dw("mlp.gate.dw", Phase::backward, Pass::backward, l, dgate, st.n2, lp.gate, I, d, R);
    if (split) chunk_grads.push_back(dx);
  });
  if (split) {
    // torch.split's backward concatenates the chunk gradients.
    const OpId cat = open_op("mlp.split.grad", OpCode::autograd, OpKind::elementwise, Phase::backward, Pass::backward, l);
    push_operands(cat, chunk_grads, std::array{dn2});
  }
  grad_done({lp.down, lp.up, lp.gate});
  const TensorId dh_mid = norm_grad(dn2, st.mlp_norm, l, dh);

  // Attention.
  TensorId da = dh_mid;
  if (m_.norms_per_layer == 4) da = norm_grad(dh_mid, st.attn_post_norm, l, kNoTensor);
  const TensorId doc = tensor("attn.dout", TensorKind::transient, DType::bf16, T_ * qd_, l, Pass::backward);
  linear_dx("attn.o.dx", Phase::backward, Pass::backward, l, da, lp.o, {doc}, T_, qd_, d);
  linear_dw("attn.o.dw", Phase::backward, Pass::backward, l, da, st.o_contig, lp.o, d, qd_, T_);
  grad_done(lp.o);
  const TensorId dq_s = tensor("attn.dq.rope", TensorKind::transient, DType::bf16, T_ * qd_, l, Pass::backward);
  const TensorId dk_s = tensor("attn.dk.rope", TensorKind::transient, DType::bf16, T_ * kvd_, l, Pass::backward);
  const TensorId dv_s = tensor("attn.dv", TensorKind::transient, DType::bf16, T_ * kvd_, l, Pass::backward);
  // Ulysses: attention's backward runs split by heads, between two all-to-alls.
  TensorId dq = dq_s, dk = dk_s, dv = dv_s;
  TensorId doc_a = doc;
  if (ulysses()) {
    const TensorId doh = all_positions_tensor("attn.dout.heads", TensorKind::transient, DType::bf16, T_ * qd_, l, Pass::backward);
    all_to_all("attn.dout.all_to_all", Phase::backward, Pass::backward, l, {doc}, {doh});
    doc_a = doh;
    dq = all_positions_tensor("attn.dq.heads", TensorKind::transient, DType::bf16, T_ * qd_, l, Pass::backward);
    dk = all_positions_tensor("attn.dk.heads", TensorKind::transient, DType::bf16, kv_heads_elements(), l, Pass::backward);
    dv = all_positions_tensor("attn.dv.heads", TensorKind::transient, DType::bf16, kv_heads_elements(), l, Pass::backward);
  }
  if (s_.attention != AttentionKind::eager) {
    const auto [acc, delta] = flash_backward_workspaces(l);
    TensorId key = st.k, value = st.v, dkey = dk, dvalue = dv, dk_x = kNoTensor, dv_x = kNoTensor;
    if (st.k_rep != kNoTensor) {
      // The repeated heads' gradients, summed back to the key/value heads.
      key = st.k_rep;
      value = st.v_rep;
      dkey = tensor("attn.dk.repeated", TensorKind::transient, DType::bf16, T_ * qd_, l, Pass::backward);
      dvalue = tensor("attn.dv.repeated", TensorKind::transient, DType::bf16, T_ * qd_, l, Pass::backward);
    } else if (s_.attention == AttentionKind::flash_attn && m_.num_kv_heads != m_.num_heads) {
      // flash-attn's mha_bwd computes dk and dv per query head (dk_expanded, dv_expanded) and sums them.
      dk_x = tensor("attn.dk_expanded", TensorKind::workspace, DType::bf16, T_ * qd_, l, Pass::backward);
      dv_x = tensor("attn.dv_expanded", TensorKind::workspace, DType::bf16, T_ * qd_, l, Pass::backward);
    }
    attention_op(OpCode::attention_grad, Pass::backward, l, {st.q, key, value, st.o, st.lse, doc_a},
                 {dq, dkey, dvalue, acc, delta, dk_x, dv_x});
    if (st.k_rep != kNoTensor) {
      autograd_op("attn.repeat_kv.grad", OpKind::elementwise, Phase::backward, Pass::backward, l, {dkey, dvalue},
                  {dk, dv});
    }
  } else {
    const std::int64_t scores = B_ * heads_ * A_ * A_;
    const TensorId dv_rep = tensor("attn.dv.repeated", TensorKind::transient, DType::bf16, T_ * qd_, l, Pass::backward);
    eager_matmul("attn.pv.dv", OpCode::eager_dv, Phase::backward, Pass::backward, l, {st.probs, doc_a}, {dv_rep}, A_, m_.head_dim, A_);
    const TensorId dprobs = tensor("attn.dprobs", TensorKind::transient, DType::bf16, scores, l, Pass::backward);
    eager_matmul("attn.pv.dprobs", OpCode::eager_dprobs, Phase::backward, Pass::backward, l, {doc_a, st.v_rep}, {dprobs}, A_, A_, m_.head_dim);
    const TensorId d32 = tensor("attn.dprobs32", TensorKind::transient, DType::fp32, scores, l, Pass::backward);
    autograd_op("attn.probs.cast.grad", OpKind::elementwise, Phase::backward, Pass::backward, l, {dprobs}, {d32});
    const TensorId dscores32 = tensor("attn.dscores32", TensorKind::transient, DType::fp32, scores, l, Pass::backward);
    autograd_op("attn.softmax.grad", OpKind::softmax, Phase::backward, Pass::backward, l, {d32, st.probs32}, {dscores32});
    TensorId ds = tensor("attn.dscores", TensorKind::transient, DType::bf16, scores, l, Pass::backward);
    autograd_op("attn.mask.grad", OpKind::elementwise, Phase::backward, Pass::backward, l, {dscores32}, {ds});
    if (m_.attn_logit_softcap) {
      const TensorId dt = tensor("attn.dscores.tanh", TensorKind::transient, DType::bf16, scores, l, Pass::backward);
      autograd_op("attn.softcap.grad", OpKind::elementwise, Phase::backward, Pass::backward, l, {ds}, {dt});
      ds = dt;
    }
    const TensorId dk_rep = tensor("attn.dk.repeated", TensorKind::transient, DType::bf16, T_ * qd_, l, Pass::backward);
    eager_matmul("attn.scores.dq", OpCode::eager_dq, Phase::backward, Pass::backward, l, {ds, st.k_rep}, {dq}, A_, m_.head_dim, A_);
    eager_matmul("attn.scores.dk", OpCode::eager_dk, Phase::backward, Pass::backward, l, {ds, st.q}, {dk_rep}, A_, m_.head_dim, A_);
    autograd_op("attn.repeat_kv.grad", OpKind::elementwise, Phase::backward, Pass::backward, l, {dk_rep, dv_rep}, {dk, dv});
  }
  if (ulysses()) grads_to_sequence(l, DType::bf16, {dq, dk, dv}, {dq_s, dk_s, dv_s});
  dq = dq_s;
  dk = dk_s;
  dv = dv_s;
  const TensorId dq_in = rope_grad(kRopeQ, dq, qd_, l);
  const TensorId dk_in = rope_grad(kRopeK, dk, kvd_, l);
  const TensorId dn1 = tensor("attn_norm.dout", TensorKind::transient, DType::bf16, T_ * d, l, Pass::backward);
  linear_dx("attn.q.dx", Phase::backward, Pass::backward, l, dq_in, lp.q, {dn1}, T_, d, qd_);
  // The k and v input gradients are new tensors summed into dn1 (InputBuffer).
  const TensorId tk = tensor("attn.k.dinput", TensorKind::workspace, DType::bf16, T_ * d, l, Pass::backward);
  linear_dx("attn.k.dx", Phase::backward, Pass::backward, l, dk_in, lp.k, {dn1, tk}, T_, d, kvd_);
  const TensorId tv = tensor("attn.v.dinput", TensorKind::workspace, DType::bf16, T_ * d, l, Pass::backward);
  linear_dx("attn.v.dx", Phase::backward, Pass::backward, l, dv, lp.v, {dn1, tv}, T_, d, kvd_);
  linear_dw("attn.q.dw", Phase::backward, Pass::backward, l, dq_in, st.n1, lp.q, qd_, d, T_);
  linear_dw("attn.k.dw", Phase::backward, Pass::backward, l, dk_in, st.n1, lp.k, kvd_, d, T_);
  linear_dw("attn.v.dw", Phase::backward, Pass::backward, l, dv, st.n1, lp.v, kvd_, d, T_);
  if (m_.qkv_bias && trains(lp.qb)) {
    for (auto [bias, dy] : {std::pair{lp.qb, dq_in}, std::pair{lp.kb, dk_in}, std::pair{lp.vb, dv}}) {
      const TensorId gb = grad(bias, l);
      autograd_op("attn.bias.dw", OpKind::elementwise, Phase::backward, Pass::backward, l, {dy}, {gb});
      grad_done(bias);
    }
  }
  grad_done({lp.q, lp.k, lp.v});
  if (st.weights_bf16 != kNoTensor) {
    autograd_op("autocast.release", OpKind::elementwise, Phase::backward, Pass::backward, l, {st.weights_bf16}, {});
  }
  upstream_ = norm_grad(dn1, st.attn_norm, l, dh_mid);
}

void PytorchStep::autocast_exit() {
  if (autocast_cache_.empty()) return;
  // Leaving the autocast region (after the loss) drops the cast cache.
  const OpId id = open_op("autocast.exit", OpCode::autograd, OpKind::elementwise, Phase::loss, Pass::forward, kNone);
  push_operands(id, autocast_cache_, {});
  autocast_cache_.clear();
}

void PytorchStep::embedding_backward(TensorId dh0) {
  TensorId dh = dh0;
  if (m_.family == Family::gemma2) {
    dh = tensor("input.grad.scaled", TensorKind::transient, policy_.residual, T_ * m_.hidden_size, 0, Pass::backward);
    autograd_op("embedding.scale.grad", OpKind::elementwise, Phase::backward, Pass::backward, kNone, {dh0}, {dh});
  }
  if (!trains(embed_param_)) return;
  // embedding_dense_backward: a (V x d) gradient, added into the tied LM head's if there is one.
  const auto [g, partial] = grad_outputs(embed_param_, kNone, false);
  autograd_op("embedding.grad", OpKind::embedding_grad, Phase::backward, Pass::backward, kNone, {dh, tokens_},
              {g, partial});
  grad_done(embed_param_);
  if (plan_.authors_code && s_.optimizer_in_backward && !m_.tied_embeddings) grad_done(lm_head_param_);
}

}  // namespace

Program build_pytorch(const ModelSpec& model, const TrainingSetup& setup, const Plan& plan, std::int64_t seq_len,
                      Program&& recycled) {
  PytorchStep builder(model, setup, plan, seq_len);
  builder.recycle(std::move(recycled));
  return builder.build();
}

}  // namespace mstplan::detail
