#pragma once
// The step program builder's internals (not part of the planner's interface).
//
// One core, StepBuilder (builder.cpp), walks the step: static tensors, embedding, every layer's
// forward, LM head + loss, every layer's backward in reverse (bringing offloaded checkpoints
// back and recomputing checkpointed layers first), embedding backward, the optimizer. It owns
// the primitives that append tensors and ops, the parameters with their gradients and optimizer
// state, and the chunk loops. A profile is
//   - a StepPolicy: the decisions the core reads (how ops are recorded, dtypes, how chunk loops
//     split, the optimizer's temporaries, the framework version's choices), made in one place,
//     step_policy(); and
//   - a subclass that emits the blocks the walk calls for, where the profiles keep different
//     tensors: NativeStep (builder_native.cpp, our runtime's step) and PytorchStep
//     (builder_pytorch.cpp, what PyTorch autograd keeps).
// A new profile adds a policy and a subclass; a new layout or adapter adds a pass to the walk or
// a primitive here (docs/ARCHITECTURE.md, "Where the next features plug in").
#include <algorithm>
#include <array>
#include <cstdint>
#include <span>
#include <tuple>
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

/// What the walk needs to know of a profile (and, for the pytorch profile, of its framework
/// version: Note [PyTorch step] in builder_pytorch.cpp cites each).
struct StepPolicy {
  /// Ops carry the runtime's OpCode (the executor runs them); false: every op is recorded as
  /// OpCode::autograd with its cost class (modelled, not executed).
  bool executable = true;
  /// Token ids and labels: int32 in our runtime, int64 in PyTorch (LongTensors).
  DType token_ids = DType::int32;
  /// The residual stream (layer inputs and outputs, checkpoints and their host copies).
  DType residual = DType::bf16;
  /// Chunk loops give chunk 0 a class of its own (ChunkClass).
  bool split_first_chunk = false;
  /// AdamW per parameter (in backward) allocates two temporaries the size of the parameter
  /// (torch's single-tensor AdamW: exp_avg_sq.sqrt() and its division).
  bool adamw_temporaries = false;
  /// AdamW at the step's end is one foreach pass with one temporary list the size of all
  /// parameters (torch.optim.AdamW's default).
  bool foreach_adamw = false;
  /// A weight gradient computed while .grad exists is a new tensor, then added into .grad
  /// (autograd's AccumulateGrad); false: the GEMM accumulates into the gradient in place.
  bool partial_grads = false;
  /// SDPA is given key/value heads repeated to the query heads (transformers <= 4.45, torchtune).
  bool repeat_kv = false;
  /// The model returns fp32 logits (transformers <= 4.45, torchtune's `.float()`).
  bool fp32_output = false;
  /// The loss slices a contiguous shifted fp32 copy of the logits (transformers 4.44 to 4.48).
  bool shifted_loss_copy = false;
};
[[nodiscard]] StepPolicy step_policy(const TrainingSetup& setup);

class StepBuilder {
 public:
  StepBuilder(const ModelSpec& model, const TrainingSetup& setup, const Plan& plan, std::int64_t seq_len);
  virtual ~StepBuilder() = default;
  StepBuilder(const StepBuilder&) = delete;
  StepBuilder& operator=(const StepBuilder&) = delete;

  /// The walk: one step's program.
  Program build();
  /// Reuse the vectors of a program no longer needed (their capacity, not their contents).
  void recycle(Program&& old) {
    p_ = std::move(old);
    p_.tensors.clear();
    p_.ops.clear();
    p_.loops.clear();
    p_.io.clear();
  }

 protected:
  struct LayerParams {
    std::int32_t attn_norm, q, k, v, qb = kNone, kb = kNone, vb = kNone, o, mlp_norm, gate, up, down;
    std::int32_t attn_post_norm = kNone, mlp_post_norm = kNone;
  };

  // The blocks a profile emits, in the walk's order.
  /// Before the embedding (the pytorch profile's held output of the previous step).
  virtual void forward_begin() {}
  /// Tokens to h_0: sets inputs_[0].
  virtual void embedding_forward() = 0;
  /// Layer `l`'s forward (Pass::forward: ends with its output, set_output()), or its
  /// recomputation before its backward (Pass::recompute: stops after the last tensor backward
  /// reads). The walk offloads the layer's checkpoint after its forward pass.
  virtual void layer_forward(std::int32_t l, Pass pass) = 0;
  /// Final norm, LM head, loss and their backward: leaves dh_L in upstream_.
  virtual void lm_head() = 0;
  /// Layer `l`'s backward, its checkpoint back and its forward recomputed: reads dh_{l+1} from
  /// upstream_ and leaves dh_l there.
  virtual void layer_backward(std::int32_t l) = 0;
  virtual void embedding_backward(TensorId dh0) = 0;

  // Tensors and ops.
  TensorId tensor(const char* label, TensorKind kind, DType dtype, std::int64_t elements, std::int32_t layer,
                  Pass pass, bool array = false, Device device = Device::device);
  // An op of the native runtime's contract (OpCode's operand lists). Unless the policy is
  // executable, it is recorded as OpCode::autograd with the code's cost class.
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
  // A linear layer over `rows` rows: y = x W^T (+ b); dx = dy W (into `outputs`: the input
  // gradient, written or accumulated into if live, and any temporary of the profile's);
  // dW = dy^T x into the weight's gradient, only when the step trains it (`in_place`: added into
  // .grad even where the policy makes partial gradients). The GEMM workspace is an operand when
  // the policy is executable.
  OpId linear(const char* label, Phase phase, Pass pass, std::int32_t l, TensorId x, std::int32_t param, TensorId y,
              std::int64_t rows, std::int64_t n, std::int64_t k, std::int32_t bias = kNone);
  OpId linear_dx(const char* label, Phase phase, Pass pass, std::int32_t l, TensorId dy, std::int32_t param,
                 std::initializer_list<TensorId> outputs, std::int64_t rows, std::int64_t n, std::int64_t k);
  void linear_dw(const char* label, Phase phase, Pass pass, std::int32_t l, TensorId dy, TensorId x, std::int32_t param,
                 std::int64_t m, std::int64_t n, std::int64_t k, bool in_place = false);
  // Flash attention forward or backward over the layer's full sequence (sizes for the cost model):
  // with Ulysses, all A_ positions of the rank's heads_ query heads.
  OpId attention_op(OpCode code, Pass pass, std::int32_t l, std::initializer_list<TensorId> inputs,
                    std::initializer_list<TensorId> outputs);
  // FlashAttention-2's backward workspaces: a dq accumulator in fp32 and a per-row statistic.
  std::pair<TensorId, TensorId> flash_backward_workspaces(std::int32_t l);
  // Ulysses (Note [Ulysses step] in builder.cpp): one all-to-all among the sequence-parallel
  // ranks, from tensors split by sequence (S_ positions of every head) to tensors split by heads
  // (all A_ positions of the rank's heads), or back; the same elements on each side.
  bool ulysses() const { return par_.sp > 1; }
  // Context parallelism (Note [Context-parallel step] in builder.cpp): the rank's k and v
  // all-gathered among the group into all A_ positions before attention, and in backward the
  // gathered keys' and values' gradients reduce-scattered back (summed).
  bool context() const { return par_.cp > 1; }
  std::pair<TensorId, TensorId> gather_kv(std::int32_t l, Pass pass, TensorId k, TensorId v);
  void scatter_kv_grads(std::int32_t l, std::array<TensorId, 2> gathered, std::array<TensorId, 2> mine);
  // A tensor of all A_ positions (Split::all_positions): of the rank's heads with Ulysses.
  TensorId all_positions_tensor(const char* label, TensorKind kind, DType dtype, std::int64_t elements, std::int32_t layer,
                        Pass pass);
  void all_to_all(const char* label, Phase phase, Pass pass, std::int32_t l, std::initializer_list<TensorId> inputs,
                  std::initializer_list<TensorId> outputs);
  // Elements of a head-split k or v: T_ x head_dim x max(KV, sp) (with fewer key/value heads than
  // ranks, each rank gets one, replicated).
  std::int64_t kv_heads_elements() const { return T_ * m_.head_dim * std::max(m_.num_kv_heads, par_.sp); }
  // Forward: the sequence-split q, k, v (which die) all-to-all'd into head-split copies of `kind`,
  // returned; with fewer key/value heads than ranks, k and v are first repeated to one head per
  // rank (DeepSpeed's kv_replication_factor: a transient copy of each).
  std::tuple<TensorId, TensorId, TensorId> qkv_to_heads(std::int32_t l, Pass pass, TensorKind kind, DType dtype,
                                                        TensorId q, TensorId k, TensorId v);
  // Backward: the head-split gradients all-to-all'd into the sequence-split dq, dk, dv (the
  // repeated heads' gradients summed).
  void grads_to_sequence(std::int32_t l, DType dtype, std::array<TensorId, 3> heads, std::array<TensorId, 3> sequence);
  // An eager-attention GEMM: per (batch x head), so its flops are multiplied by batch x heads_.
  OpId eager_matmul(const char* label, OpCode code, Phase phase, Pass pass, std::int32_t l,
                    std::initializer_list<TensorId> inputs, std::initializer_list<TensorId> outputs, std::int64_t m,
                    std::int64_t n, std::int64_t k);
  // A loss op over a chunk of `rows` logit rows.
  OpId loss_op(OpCode code, Pass pass, std::initializer_list<TensorId> inputs, std::initializer_list<TensorId> outputs,
               std::int64_t rows);
  // Emits `body(class_index, rows)` inside one loop per chunk class of `block` (the MLP's: the
  // sequence in the plan's MLP chunks; the LM head's: the labelled positions, S - 1, in its
  // chunks), split as the policy says; `rows` is batch x the class's positions.
  // (With Ulysses the rank's S_ positions, all labelled: ALST shifts the labels before splitting.)
  template <class Body>
  void chunk_loops(ChunkedBlock block, Body&& body) {
    const bool mlp = block == ChunkedBlock::mlp;
    const auto classes =
        chunk_classes(mlp ? S_ : labelled_, mlp ? p_.mlp_chunks : p_.lm_head_chunks, policy_.split_first_chunk);
    for (std::size_t ci = 0; ci < classes.size(); ++ci) {
      begin_loop(block, classes[ci]);
      body(ci, rows(classes[ci].positions));
      end_loop();
    }
  }
  // Allocates (and zeroes) tensors that a chunk loop writes slice by slice or accumulates into,
  // before the loop: then every chunk count has the same accumulators live in every chunk, and
  // more chunks can only shrink the peak.
  void prealloc(const char* label, Phase phase, Pass pass, std::int32_t layer, std::initializer_list<TensorId> tensors);
  // Layer `l`'s output: the next layer's input, or h_L.
  void set_output(std::int32_t l, TensorId out);

  // Parameters: weight, gradient (created on first accumulation unless persistent), optimizer.
  // The weight the kernels read: the parameter itself, or with ZeRO-3 its all-gathered copy
  // (gather(); an invariant: a sharded weight is read only while gathered).
  TensorId weight(std::int32_t param) const {
    const auto i = static_cast<std::size_t>(param);
    if (!gathers_weights()) return weights_[i];
    MSTPLAN_CHECK(gathered_[i] != kNoTensor, "sharded weight {} read while not gathered", p_.params[i].name);
    return gathered_[i];
  }
  // Whether weights are read from gathered copies: ZeRO-3's all-gather, or offload_param's upload.
  bool gathers_weights() const { return par_.shards_weights() || storage_.host_weights; }
  TensorId weight_or_none(std::int32_t param) const { return param == kNone ? kNoTensor : weight(param); }
  TensorId grad(std::int32_t param, std::int32_t layer);  // for accumulation ops: creates on first use
  bool has_grad(std::int32_t param) const { return grad_created_[static_cast<std::size_t>(param)]; }
  // The gradient of `param` when the step trains it (created on first use), or kNoTensor: ops
  // drop kNoTensor operands, so one call covers trained and frozen weights.
  TensorId grad_if_trained(std::int32_t param, std::int32_t layer) { return trains(param) ? grad(param, layer) : kNoTensor; }
  // Whether the step trains `param`: every parameter unless the optimizer is none; with a LoRA
  // adapter only the adapters' (Note [LoRA step] in builder.cpp).
  bool trains(std::int32_t param) const { return trained_ && (first_adapter_ < 0 || param >= first_adapter_); }
  // The gradient of `param` if this is its first write in the step, else kNoTensor (for prealloc).
  TensorId fresh_grad(std::int32_t param, std::int32_t layer) {
    return trains(param) && !has_grad(param) ? grad(param, layer) : kNoTensor;
  }
  // A weight gradient's outputs: {.grad, kNoTensor} for its first write (or one in place), {.grad,
  // a partial} where the policy adds a new gradient into an existing .grad; none when frozen.
  std::pair<TensorId, TensorId> grad_outputs(std::int32_t param, std::int32_t layer, bool in_place = false);
  // The gradients are complete (the optimizer steps them here when it runs in backward); nothing
  // when the step trains nothing.
  void grad_done(std::int32_t param);
  void grad_done(std::initializer_list<std::int32_t> params) {
    for (std::int32_t param : params) grad_done(param);
  }
  void optimizer_op(std::int32_t param, Phase phase);
  // ZeRO-3: one all-gather of the parameters `params` into full transient copies, read by
  // weight() until release(); nothing without sharded weights.
  void gather(const std::vector<std::int32_t>& params, Pass pass, std::int32_t layer);
  void release(const std::vector<std::int32_t>& params);
  // The parameters of layer `l`, and those the LM head block reads (the final norm, the head or
  // the tied embedding).
  const std::vector<std::int32_t>& layer_param_list(std::int32_t l) const {
    return layer_param_lists_[static_cast<std::size_t>(l)];
  }

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
  const LayerParams& params_of(std::int32_t l) const { return layer_params_[static_cast<std::size_t>(l)]; }

  const ModelSpec& m_;
  const TrainingSetup& s_;
  const Plan& plan_;
  const StepPolicy policy_;
  // B_ sequences of S_ positions each on this rank (T_ tokens), labelled_ of them with a label;
  // attention spans A_ keys (S_ x sp with Ulysses, S_ x cp with context parallelism) for
  // queries_ queries (A_; with context parallelism the rank's S_) of heads_ query heads.
  const std::int64_t B_, S_, T_, qd_, kvd_, A_, heads_, queries_, labelled_;
  const ParameterStorage storage_;
  const DType act_;  // activations of the native step: bf16, or fp32 with precision fp32
  const bool trained_;
  const Parallelism par_;
  Program p_;
  std::int32_t embed_param_ = 0, final_norm_param_ = 0, lm_head_param_ = 0;
  TensorId tokens_ = kNoTensor, labels_ = kNoTensor, workspace_ = kNoTensor, loss_ = kNoTensor;
  std::vector<TensorId> inputs_;       // per layer: h_l (saved, or a checkpoint)
  TensorId final_hidden_ = kNoTensor;  // h_L, the last layer's output
  TensorId upstream_ = kNoTensor;      // the gradient flowing into the layer being back-propagated
  std::vector<TensorId> held_;         // alive to the step's end (read by step.end)

 private:
  void static_tensors();
  void begin_loop(ChunkedBlock block, const ChunkClass& c);
  void end_loop();
  // The operands of op `o`, the last one (kNoTensor ones dropped).
  void append_operands(Op& o, std::span<const TensorId> inputs, std::span<const TensorId> outputs);
  void offload(std::int32_t l);
  void prefetch(std::int32_t l);
  void optimizer_end();
  // After an update of a shard of full weights (ZeRO-1/2): the weight all-gathered in place.
  void gather_updated(std::int32_t param, Phase phase);
  // offload_optimizer: the reduced gradient (shard) copied to its host buffer, and CPU Adam's
  // update of the host state with the new weights copied back (Note [Offloaded optimizer]).
  void offload_grad(std::int32_t param, TensorId reduced);
  void host_optimizer_op(std::int32_t param);
  // Updates queued by grad_done() while their gradients' reduction is in flight (several ranks):
  // run after the next layer's backward, so compute does not wait for the collective.
  void run_updates(std::vector<std::int32_t>& params);

  const bool persistent_grads_;
  // LoRA (Note [LoRA step]): the frozen base's storage; the index of the first adapter parameter
  // (-1: none); per base parameter its adapter's A and B (kNone: not adapted), and what its last
  // forward left for the adapter's backward (the adapter's input and A's output).
  const ParameterStorage base_storage_;
  std::int32_t first_adapter_ = -1;
  std::vector<std::pair<std::int32_t, std::int32_t>> adapter_of_;
  // Kept per chunk class of the loop the linear runs in (chunk_loops: its first chunk; -1 outside
  // loops), so each class's backward reads its own forward's tensors.
  struct AdapterForward {
    std::int64_t first_chunk = -1;
    TensorId source = kNoTensor;  // the linear's input
    TensorId x = kNoTensor;       // the branch's input (source, or its cast and dropout)
    TensorId a = kNoTensor;       // x A^T
    TensorId dx = kNoTensor;      // the input gradient linear_dx wrote, while linear_dw has not added into it
    TensorId da = kNoTensor;      // dy B, computed by linear_dw before linear_dx wrote dx
    TensorId mask = kNoTensor;    // pytorch profile: lora_dropout's mask, read by the branch's dx
  };
  std::vector<std::vector<AdapterForward>> adapter_fwd_;
  AdapterForward& adapter_state(std::int32_t param);
  // The branch's dx contribution (da A) added into `dx`.
  void adapter_dx(std::int32_t param, std::int32_t l, Pass pass, TensorId da, TensorId dx, std::int64_t rows,
                  std::int64_t k);
  std::int64_t chunk_key() const {
    return loop_ == kNone ? -1 : p_.loops[static_cast<std::size_t>(loop_)].first_chunk;
  }
  double lora_scale() const { return s_.adapter.alpha / static_cast<double>(s_.adapter.rank); }
  bool adapted(std::int32_t param) const {
    return first_adapter_ >= 0 && adapter_of_[static_cast<std::size_t>(param)].first != kNone;
  }
  bool quantized(std::int32_t param) const {
    return s_.adapter.lora() && s_.adapter.quantized() && param < first_adapter_ &&
           is_layer_linear(p_.params[static_cast<std::size_t>(param)]);
  }
  // The bf16 weight a GEMM of `param` reads: weight(), or for a quantized base weight a transient
  // dequantized copy (one per use, as bitsandbytes makes one in forward and one in backward).
  TensorId dense_weight(std::int32_t param, Phase phase, Pass pass, std::int32_t layer);
  std::int32_t loop_ = kNone;  // the loop being emitted
  std::vector<TensorId> weights_, grads_;
  std::vector<TensorId> states_;  // per parameter [2i, 2i+1]: (m, v), (m+v, master) or (none, master)
  std::vector<bool> grad_created_;
  std::vector<TensorId> grad_shards_;  // ZeRO-2/3: per parameter, its reduced gradient shard
  std::vector<TensorId> host_grads_;   // offload_optimizer: per parameter, the host copy of its gradient (shard)
  std::vector<TensorId> gathered_;     // ZeRO-3: per parameter, its gathered copy while in use
  std::vector<std::vector<std::int32_t>> layer_param_lists_;
  std::vector<std::int32_t> head_params_, embed_params_;
  std::vector<std::int32_t> queued_updates_;
  std::vector<LayerParams> layer_params_;
  std::vector<TensorId> host_copies_;  // per layer: the offloaded checkpoint
  std::vector<bool> prefetched_;
  std::vector<TensorId> static_outputs_;
};

// The two profiles (build_program picks one by setup.profile).
[[nodiscard]] Program build_native(const ModelSpec& model, const TrainingSetup& setup, const Plan& plan,
                                   std::int64_t seq_len, Program&& recycled);
[[nodiscard]] Program build_pytorch(const ModelSpec& model, const TrainingSetup& setup, const Plan& plan,
                                    std::int64_t seq_len, Program&& recycled);

}  // namespace mstplan::detail
