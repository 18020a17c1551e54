#pragma once
// The step program builder's internals, shared by builder.cpp (the common parts and the native
// profile) and builder_pytorch.cpp (the PyTorch profile). Not part of the planner's interface.
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "planner/builder.h"
#include "planner/static_memory.h"

namespace mstplan::detail {

struct ChunkClass {
  std::int64_t positions;   // per sequence, per chunk
  std::int64_t iterations;  // chunks of this length
  std::int64_t first_chunk;
};

// Balanced split of `positions` into `chunks`: the first (positions mod chunks) chunks are one
// position longer. At most two classes; with `split_first`, chunk 0 is a class of its own (the
// PyTorch profile needs it: the first weight gradient of a chunk loop is stolen, later ones add).
std::vector<ChunkClass> chunk_classes(std::int64_t positions, std::int64_t chunks, bool split_first = false);

class Builder {
 public:
  Builder(const ModelSpec& model, const TrainingSetup& setup, const Plan& plan, std::int64_t seq_len)
      : m_(model), s_(setup), plan_(plan), B_(setup.batch), S_(seq_len), T_(setup.batch * seq_len),
        qd_(model.num_heads * model.head_dim), kvd_(model.num_kv_heads * model.head_dim),
        storage_(parameter_storage(setup)),
        act_(setup.precision == Precision::fp32 ? DType::fp32 : DType::bf16),
        trained_(setup.optimizer != OptimizerKind::none),
        persistent_grads_(persistent_gradients(setup)) {}

  Program build();
  /// Reuse the vectors of a program no longer needed (their capacity, not their contents).
  void recycle(Program&& old) {
    p_ = std::move(old);
    p_.tensors.clear();
    p_.ops.clear();
    p_.loops.clear();
    p_.io.clear();
  }

 private:
  struct LayerState {
    TensorId input = kNoTensor;         // h_l (saved or checkpoint)
    TensorId host_copy = kNoTensor;     // offloaded checkpoint
    TensorId n1 = kNoTensor, rstd1 = kNoTensor, q = kNoTensor, k = kNoTensor, v = kNoTensor, o = kNoTensor;
    TensorId lse = kNoTensor, probs = kNoTensor;
    TensorId a = kNoTensor, rstd_pa = kNoTensor;  // gemma2 post-attention norm input and statistic
    TensorId h_mid = kNoTensor, n2 = kNoTensor, rstd2 = kNoTensor;
    TensorId m = kNoTensor, rstd_pm = kNoTensor;  // gemma2 post-mlp norm input and statistic
    std::vector<TensorId> gate, up;     // paper mode: one array per chunk class
    bool n1_kept = false, n2_kept = false;
  };
  struct LayerParams {
    std::int32_t attn_norm, q, k, v, qb = kNone, kb = kNone, vb = kNone, o, mlp_norm, gate, up, down;
    std::int32_t attn_post_norm = kNone, mlp_post_norm = kNone;
  };

  // Tensors and ops.
  TensorId tensor(const char* label, TensorKind kind, DType dtype, std::int64_t elements, std::int32_t layer,
                  Pass pass, bool array = false, Device device = Device::device);
  // An op of the native runtime's contract (OpCode's operand lists). In the pytorch profile every
  // op is recorded as OpCode::autograd with the code's cost class: it is modelled, not executed.
  OpId op(const char* label, OpCode code, Phase phase, Pass pass, std::int32_t layer,
          std::initializer_list<TensorId> inputs, std::initializer_list<TensorId> outputs);
  // A PyTorch op with no runtime counterpart (casts, copies, autograd's temporaries).
  OpId autograd_op(const char* label, OpKind kind, Phase phase, Pass pass, std::int32_t layer,
                   std::initializer_list<TensorId> inputs, std::initializer_list<TensorId> outputs);
  // Appends an op with no operands yet; push_operands() then adds them (ops with operand lists
  // not known in advance: step.begin, concatenations, foreach updates).
  OpId open_op(const char* label, OpCode code, OpKind kind, Phase phase, Pass pass, std::int32_t layer);
  void push_operands(OpId id, std::span<const TensorId> inputs, std::span<const TensorId> outputs);
  // A GEMM-class op (code: linear, linear_dx, linear_dw or eager_*) with its sizes.
  OpId matmul(const char* label, OpCode code, Phase phase, Pass pass, std::int32_t layer,
              std::initializer_list<TensorId> inputs, std::initializer_list<TensorId> outputs, std::int64_t m,
              std::int64_t n, std::int64_t k);
  // Flash attention forward or backward over the layer's full sequence (sizes for the cost model).
  OpId attention_op(OpCode code, Pass pass, std::int32_t l, std::initializer_list<TensorId> inputs,
                    std::initializer_list<TensorId> outputs);
  // An eager-attention GEMM: per (batch x head), so its flops are multiplied by batch x heads.
  OpId eager_matmul(const char* label, OpCode code, Phase phase, Pass pass, std::int32_t l,
                    std::initializer_list<TensorId> inputs, std::initializer_list<TensorId> outputs, std::int64_t m,
                    std::int64_t n, std::int64_t k);
  // A norm's backward: {dy, x, rstd, w, [residual gradient]} -> {dx, [dw]} (dw when trained; the
  // gradient is then complete).
  void norm_grad_op(const char* label, Phase phase, std::int32_t l, std::initializer_list<TensorId> inputs, TensorId dx,
                    std::int32_t param);
  // Cross-entropy over a chunk of `rows` logit rows (OpCode::loss, loss_with_grad or loss_grad).
  OpId loss_op(OpCode code, Pass pass, std::initializer_list<TensorId> inputs, std::initializer_list<TensorId> outputs,
               std::int64_t rows);
  // The gradient of `param` when the step trains it (created on first use), or kNoTensor: ops
  // drop kNoTensor operands, so one call covers trained and frozen weights.
  TensorId grad_if_trained(std::int32_t param, std::int32_t layer) { return trained_ ? grad(param, layer) : kNoTensor; }
  void begin_loop(ChunkedBlock block, const ChunkClass& c);
  void end_loop();
  // Allocates (and zeroes) tensors that a chunk loop writes slice by slice or accumulates into,
  // before the loop: then every chunk count has the same accumulators live in every chunk, and
  // more chunks can only shrink the peak.
  void prealloc(const char* label, Phase phase, Pass pass, std::int32_t layer, std::initializer_list<TensorId> tensors);

  // Parameters: weight, gradient (created on first accumulation unless persistent), optimizer.
  TensorId weight(std::int32_t param) const { return weights_[static_cast<std::size_t>(param)]; }
  TensorId weight_or_none(std::int32_t param) const { return param == kNone ? kNoTensor : weight(param); }
  TensorId grad(std::int32_t param, std::int32_t layer);  // for accumulation ops: creates on first use
  void grad_done(std::int32_t param, std::int32_t layer);  // the gradient is complete
  void optimizer_op(std::int32_t param, Phase phase);

  // PyTorch profile (builder_pytorch.cpp): what autograd keeps, op by op.
  struct NormState {
    TensorId input = kNoTensor;  // what the norm read (its backward needs it in fp32: x32)
    TensorId x32 = kNoTensor, rstd = kNoTensor, normed = kNoTensor;  // saved
    std::int32_t param = kNone;
  };
  struct PtLayerState {
    NormState attn_norm, attn_post_norm, mlp_norm, mlp_post_norm;
    TensorId n1 = kNoTensor, q = kNoTensor, k = kNoTensor, v = kNoTensor, o = kNoTensor, lse = kNoTensor;
    TensorId o_contig = kNoTensor, probs32 = kNoTensor, probs = kNoTensor, k_rep = kNoTensor, v_rep = kNoTensor;
    TensorId n2 = kNoTensor, h_mid = kNoTensor;
    std::vector<TensorId> gate, act, up, prod;  // paper mode: per chunk class
    TensorId weights_bf16 = kNoTensor;          // autocast: bf16 copies of the layer's matmul weights
  };
  TensorId pt_norm(const char* label, TensorId x, std::int32_t param, std::int32_t l, Pass pass, bool keep, NormState& ns,
                   Phase phase = Phase::forward);
  TensorId pt_norm_grad(const char* label, TensorId dout, const NormState& ns, std::int32_t l, TensorId residual_grad,
                        Phase phase = Phase::backward);
  void pt_dw(const char* label, Phase phase, std::int32_t l, std::initializer_list<TensorId> inputs, std::int32_t param,
             std::int64_t m, std::int64_t n, std::int64_t k);
  // A weight gradient's outputs: {.grad, kNoTensor} for its first write (or one in place), {.grad,
  // a partial} when autograd adds a new gradient into an existing .grad; none when frozen.
  std::pair<TensorId, TensorId> pt_grad_outputs(std::int32_t param, std::int32_t l, bool in_place);
  TensorId pt_rope(const char* label, TensorId x, std::int64_t width, std::int32_t l, Pass pass);
  TensorId pt_rope_grad(const char* label, TensorId dx, std::int64_t width, std::int32_t l);
  void pt_build();
  // Key/value heads repeated to the query heads before SDPA (copies that SDPA then saves).
  bool legacy_sdpa() const {
    return s_.attention == AttentionKind::flash &&
           (s_.framework == Framework::transformers_4_44 || s_.framework == Framework::torchtune);
  }
  void pt_embedding_forward();
  void pt_layer_forward(std::int32_t l, Pass pass);
  void pt_mlp_forward(std::int32_t l, Pass pass, PtLayerState& st, TensorId out, bool keep);
  void pt_lm_head();
  void pt_layer_backward(std::int32_t l);
  void pt_embedding_backward(TensorId dh0);
  void autocast_exit();
  std::vector<PtLayerState> pt_layers_;
  std::vector<TensorId> autocast_cache_;  // weight copies autocast caches until it exits
  TensorId rope_cos_ = kNoTensor, rope_sin_ = kNoTensor;
  TensorId previous_output_ = kNoTensor;  // hold_outputs: the previous step's logits
  std::vector<TensorId> held_;            // alive to the step's end (read by step.end)
  DType act_dtype_ = DType::bf16;  // the residual stream's dtype (fp32 under autocast)

  // Blocks.
  void static_tensors();
  void embedding_forward();
  void layer_forward(std::int32_t l, Pass pass);
  void mlp_forward(std::int32_t l, Pass pass, LayerState& st, TensorId out);
  void lm_head();
  void layer_backward(std::int32_t l);
  void mlp_backward(std::int32_t l, LayerState& st, TensorId dh, TensorId dn2);
  void attention_backward(std::int32_t l, LayerState& st, TensorId da, TensorId dn1);
  void prefetch(std::int32_t l);
  void embedding_backward(TensorId dh0);

  std::int64_t rows(std::int64_t positions) const { return B_ * positions; }
  bool recomputed(std::int32_t l) const { return plan_.recompute == RecomputeKind::full && recomputes_layer(plan_, l); }
  bool selective(std::int32_t l) const {
    return plan_.recompute == RecomputeKind::selective && recomputes_layer(plan_, l);
  }
  bool offloaded(std::int32_t l) const { return recomputed(l) && plan_.offload_checkpoints; }
  std::int64_t window(std::int32_t l) const {
    if (!m_.sliding_window) return 0;
    if (m_.sliding_window->layers == SlidingLayers::even && l % 2 != 0) return 0;
    return m_.sliding_window->size;
  }

  const ModelSpec& m_;
  const TrainingSetup& s_;
  const Plan& plan_;
  const std::int64_t B_, S_, T_, qd_, kvd_;
  const ParameterStorage storage_;
  const DType act_;  // activations of the native step: bf16, or fp32 with precision fp32
  const bool trained_;
  const bool persistent_grads_;
  Program p_;
  std::int32_t loop_ = kNone;  // the loop being emitted
  std::vector<TensorId> weights_, grads_;
  std::vector<TensorId> states_;  // per parameter [2i, 2i+1]: (m, v), (m+v, master) or (none, master)
  std::vector<bool> grad_created_;
  std::vector<LayerParams> layer_params_;
  std::int32_t embed_param_ = 0, final_norm_param_ = 0, lm_head_param_ = 0;
  TensorId tokens_ = kNoTensor, labels_ = kNoTensor, workspace_ = kNoTensor, loss_ = kNoTensor;
  TensorId final_hidden_ = kNoTensor;  // h_L, the last layer's output
  TensorId upstream_ = kNoTensor;      // the gradient flowing into the layer being back-propagated
  std::vector<LayerState> layers_;
  std::vector<bool> prefetched_;
  std::vector<std::vector<TensorId>> static_outputs_;
};


}  // namespace mstplan::detail
