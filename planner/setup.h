#pragma once
// The training setup and the plan knobs: everything about one training step that is not the
// model or the GPU. A scenario file (YAML) holds a setup and may name the model and the GPU;
// command-line flags override it field by field.
//
// Defaults are the MST reference setup: bf16 weights with AdamW state in bf16, the optimizer
// applied per parameter inside backward, batch 1, flash attention, the native profile.
//
//   Expected<Scenario> scenario = load_scenario_file("scenarios/examples/llama3-8b-a100.yaml");
//   TrainingSetup setup = scenario->setup;
//   setup.batch = 2;                                  // a flag overrides the file
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "planner/dtype.h"
#include "planner/enum_names.h"
#include "planner/error.h"

namespace mstplan {

struct ModelSpec;

/// Storage of weights, gradients and optimizer state (see Note [Static bytes per parameter]).
enum class Precision {
  bf16,   ///< bf16 weights, bf16 gradients, optimizer state in bf16 (the MST reference)
  mixed,  ///< bf16 compute with fp32 master weights, fp32 gradients and fp32 optimizer state
  fp32,   ///< everything fp32: weights, gradients, state and activations (native profile only)
};
enum class OptimizerKind {
  adamw,       ///< two moments per parameter, in the precision's state dtype
  adamw_8bit,  ///< bitsandbytes-style block-wise 8-bit moments
  sgd,         ///< plain SGD without momentum: no state
  none,        ///< frozen weights: no gradients, no state (activations still back-propagate)
};
enum class AttentionKind {
  flash,      ///< memory-efficient kernel: O(S) extra memory (output and log-sum-exp); pytorch
              ///< profile: SDPA (transformers' attn_implementation="sdpa", its default)
  eager,      ///< materialises batch x heads x S x S scores and probabilities
  flash_attn, ///< pytorch profile: the flash-attn package (attn_implementation="flash_attention_2"):
              ///< no repeated key/value heads, no contiguous copy of the output; native: as flash
};
/// The transformers code the pytorch profile follows (Note [PyTorch step]): where the logits are
/// upcast and copied, and how SDPA is called.
enum class Framework {
  transformers_4_44,  ///< up to 4.45: the model upcasts all logits to fp32, slices a contiguous
                      ///< shifted fp32 copy for the loss and returns the fp32 logits; SDPA gets
                      ///< key/value heads repeated to the query heads (repeat_kv copies)
  transformers_4_46,  ///< 4.46 to 4.48: ForCausalLMLoss upcasts inside the loss and still slices a
                      ///< contiguous shifted fp32 copy; the model returns bf16 logits
  transformers_5,     ///< 4.49 and later, 5.x: the labels are shifted (padded) instead of the
                      ///< logits; SDPA with enable_gqa (no repeat_kv)
  torchtune,          ///< torchtune's own decoder (0.4, late 2024): fp32 logits from the model
                      ///< (`self.output(h).float()`), labels shifted, key/value heads expanded
                      ///< before SDPA, `del logits` after the loss
};
/// Who executes the step: decides what is saved for backward and how memory is allocated.
enum class Profile {
  native,   ///< this project's runtime
  pytorch,  ///< Hugging Face transformers on PyTorch autograd and its caching allocator
};
enum class MlpMode {
  paper,  ///< chunks run in sequence inside autograd, which keeps every chunk's intermediates
  tiled,  ///< keep only each chunk's input; recompute its intermediates in the chunk's backward
};
enum class LmHeadMode {
  keep,          ///< logits kept from forward to backward (plain autograd; the unchunked baseline)
  recompute,     ///< logits recomputed chunk by chunk in backward
  forward_grad,  ///< dX and dW computed in the forward pass; only dX kept
};
enum class RecomputeKind {
  none,       ///< keep every saved activation
  full,       ///< keep each chosen layer's input; recompute the layer in backward
  selective,  ///< recompute inside attention and the MLP only, keep the layer's other activations
};

template <>
struct EnumNames<Precision> {
  static constexpr std::array<std::pair<Precision, std::string_view>, 3> table{
      {{Precision::bf16, "bf16"}, {Precision::mixed, "mixed"}, {Precision::fp32, "fp32"}}};
};
template <>
struct EnumNames<OptimizerKind> {
  static constexpr std::array<std::pair<OptimizerKind, std::string_view>, 4> table{
      {{OptimizerKind::adamw, "adamw"},
       {OptimizerKind::adamw_8bit, "adamw-8bit"},
       {OptimizerKind::sgd, "sgd"},
       {OptimizerKind::none, "none"}}};
};
template <>
struct EnumNames<AttentionKind> {
  static constexpr std::array<std::pair<AttentionKind, std::string_view>, 3> table{
      {{AttentionKind::flash, "flash"}, {AttentionKind::eager, "eager"}, {AttentionKind::flash_attn, "flash-attn"}}};
};
template <>
struct EnumNames<Framework> {
  static constexpr std::array<std::pair<Framework, std::string_view>, 4> table{
      {{Framework::transformers_4_44, "transformers-4.44"},
       {Framework::transformers_4_46, "transformers-4.46"},
       {Framework::transformers_5, "transformers-5"},
       {Framework::torchtune, "torchtune"}}};
};
template <>
struct EnumNames<Profile> {
  static constexpr std::array<std::pair<Profile, std::string_view>, 2> table{
      {{Profile::native, "native"}, {Profile::pytorch, "pytorch"}}};
};
template <>
struct EnumNames<MlpMode> {
  static constexpr std::array<std::pair<MlpMode, std::string_view>, 2> table{
      {{MlpMode::paper, "paper"}, {MlpMode::tiled, "tiled"}}};
};
template <>
struct EnumNames<LmHeadMode> {
  static constexpr std::array<std::pair<LmHeadMode, std::string_view>, 3> table{
      {{LmHeadMode::keep, "keep"}, {LmHeadMode::recompute, "recompute"}, {LmHeadMode::forward_grad, "forward-grad"}}};
};
template <>
struct EnumNames<RecomputeKind> {
  static constexpr std::array<std::pair<RecomputeKind, std::string_view>, 3> table{
      {{RecomputeKind::none, "none"}, {RecomputeKind::full, "full"}, {RecomputeKind::selective, "selective"}}};
};

/// Parameter-efficient fine-tuning (Note [LoRA step] in builder.cpp): which adapter, if any,
/// trains in place of the base weights, and how the frozen base weights are stored.
enum class AdapterKind {
  none,  ///< full fine-tuning (or frozen weights with optimizer none)
  lora,  ///< LoRA: W x + (alpha / r) B A x per adapted linear; only A and B train
};
/// How the frozen base weights of the decoder layers' linears are stored (the embedding, the LM
/// head and the norms stay bf16, as transformers' bitsandbytes integration leaves them). Bytes per
/// weight in Note [Quantized base weights] in static_memory.h.
enum class BaseFormat {
  bf16,  ///< as trained
  int8,  ///< bitsandbytes LLM.int8 (Int8Params): int8 values and one fp32 scale per output row
  nf4,   ///< bitsandbytes 4-bit NormalFloat (Params4bit, blocks of 64), QLoRA's format
  fp4,   ///< bitsandbytes 4-bit float, same layout as nf4
};
/// The linears of a decoder layer an adapter may target (PEFT's target_modules names).
enum class LoraTarget : std::uint8_t { q, k, v, o, gate, up, down };
inline constexpr std::uint32_t kAllLoraTargets = 0x7F;

template <>
struct EnumNames<AdapterKind> {
  static constexpr std::array<std::pair<AdapterKind, std::string_view>, 2> table{
      {{AdapterKind::none, "none"}, {AdapterKind::lora, "lora"}}};
};
template <>
struct EnumNames<BaseFormat> {
  static constexpr std::array<std::pair<BaseFormat, std::string_view>, 4> table{
      {{BaseFormat::bf16, "bf16"}, {BaseFormat::int8, "int8"}, {BaseFormat::nf4, "nf4"}, {BaseFormat::fp4, "fp4"}}};
};
template <>
struct EnumNames<LoraTarget> {
  static constexpr std::array<std::pair<LoraTarget, std::string_view>, 7> table{{{LoraTarget::q, "q"},
                                                                                {LoraTarget::k, "k"},
                                                                                {LoraTarget::v, "v"},
                                                                                {LoraTarget::o, "o"},
                                                                                {LoraTarget::gate, "gate"},
                                                                                {LoraTarget::up, "up"},
                                                                                {LoraTarget::down, "down"}}};
};

struct AdapterSetup {
  AdapterKind kind = AdapterKind::none;
  std::int64_t rank = 16;      ///< r: A is r x in, B is out x r
  double alpha = 16;           ///< the update is scaled by alpha / r (no bytes depend on it)
  std::uint32_t targets = kAllLoraTargets;  ///< bit 1 << LoraTarget per adapted linear
  /// The adapters' weights, gradients and AdamW state: nullopt is the profile's default (native
  /// bf16; pytorch fp32, PEFT's autocast_adapter_dtype=True upcasting bf16 adapters).
  std::optional<DType> dtype;
  double dropout = 0;          ///< PEFT's lora_dropout (pytorch profile; 0: nn.Identity, nothing kept)
  BaseFormat base = BaseFormat::bf16;
  bool double_quant = true;    ///< nf4/fp4: bnb_4bit_use_double_quant (QLoRA's double quantization)
  [[nodiscard]] bool lora() const { return kind == AdapterKind::lora; }
  [[nodiscard]] bool adapts(LoraTarget t) const {
    return lora() && (targets & (1U << static_cast<unsigned>(t))) != 0;
  }
  [[nodiscard]] bool quantized() const { return base != BaseFormat::bf16; }
  bool operator==(const AdapterSetup&) const = default;
};

/// What data-parallel ranks shard (ZeRO's stages; PyTorch FSDP's full shard is stage 3). Each
/// stage shards what the one before it does, and more (Note [Sharded step] in builder.cpp).
enum class ZeroStage {
  none,        ///< 0: every rank holds everything; gradients all-reduced (DDP)
  optimizer,   ///< 1: optimizer state and fp32 master weights sharded; gradients all-reduced
  gradients,   ///< 2: and the gradients, reduce-scattered as backward completes them
  parameters,  ///< 3: and the weights, all-gathered layer by layer before use (FSDP full shard)
};
template <>
struct EnumNames<ZeroStage> {
  static constexpr std::array<std::pair<ZeroStage, std::string_view>, 4> table{
      {{ZeroStage::none, "0"}, {ZeroStage::optimizer, "1"}, {ZeroStage::gradients, "2"}, {ZeroStage::parameters, "3"}}};
};

/// How the step is spread over GPUs: ranks running the same step program, in groups of `sp` (or
/// `cp`) that split one micro-batch's sequence between them (Ulysses sequence parallelism: Note
/// [Ulysses step] in builder.cpp; context parallelism: Note [Context-parallel step]), gpus /
/// (sp x cp) groups each on its own micro-batch (data parallelism), with what ZeRO shards among
/// all the ranks.
struct Parallelism {
  std::int64_t gpus = 1;                ///< ranks (the world size)
  ZeroStage zero = ZeroStage::none;
  std::int64_t sp = 1;                  ///< Ulysses sequence-parallel degree: ranks sharing one sequence
  std::int64_t cp = 1;                  ///< context-parallel degree: ranks sharing one sequence (K, V all-gathered)
  /// Ranks sharing one sequence, each holding seq_len / sequence_group() positions of it.
  [[nodiscard]] std::int64_t sequence_group() const { return sp * cp; }
  /// Groups running on their own micro-batches.
  [[nodiscard]] std::int64_t data_parallel() const { return gpus / sequence_group(); }
  /// Elements of a tensor of `numel` one rank keeps when its stage shards it: ceil(numel / gpus)
  /// (FSDP2 pads each parameter's shards to equal size; DeepSpeed pads its flat buffer likewise).
  [[nodiscard]] std::int64_t shard_numel(std::int64_t numel) const { return (numel + gpus - 1) / gpus; }
  /// The elements of a numel-element tensor that rank `rank` holds as its shard: [first, first +
  /// count), first = rank x shard_numel (clamped to numel); count is 0 on the last ranks of a
  /// tensor smaller than the world, and the shard's remaining elements are padding.
  struct ShardRange {
    std::int64_t first = 0, count = 0;
  };
  [[nodiscard]] ShardRange shard_range(std::int64_t numel, std::int64_t rank) const {
    const std::int64_t shard = shard_numel(numel), first = rank * shard;
    const std::int64_t count = numel - first < 0 ? 0 : (numel - first < shard ? numel - first : shard);
    return {first < numel ? first : numel, count};
  }
  [[nodiscard]] bool shards_optimizer() const { return gpus > 1 && zero >= ZeroStage::optimizer; }
  [[nodiscard]] bool shards_gradients() const { return gpus > 1 && zero >= ZeroStage::gradients; }
  [[nodiscard]] bool shards_weights() const { return gpus > 1 && zero >= ZeroStage::parameters; }
  bool operator==(const Parallelism&) const = default;
};

/// Mini-sequences of one block: a count M, or a number of tokens per chunk.
struct ChunkSetting {
  std::optional<std::int64_t> chunks;        ///< M
  std::optional<std::int64_t> chunk_tokens;  ///< tokens per mini-sequence (M = ceil(S / this))
  bool operator==(const ChunkSetting&) const = default;
};

/// Plan knobs. Every knob left unset (nullopt) is chosen by the search.
struct PlanKnobs {
  std::optional<ChunkSetting> mlp_chunks;
  std::optional<MlpMode> mlp_mode;
  std::optional<ChunkSetting> lm_head_chunks;
  std::optional<LmHeadMode> lm_head_mode;
  std::optional<RecomputeKind> recompute;
  /// Layers recomputed when recompute is full or selective; nullopt: all layers.
  std::optional<std::vector<std::int64_t>> recompute_layers;
  std::optional<bool> offload_checkpoints;  ///< keep checkpoints in host memory
  std::optional<bool> authors_code;         ///< pytorch profile: the MST authors' code (Plan::authors_code)
  bool operator==(const PlanKnobs&) const = default;
};

struct TrainingSetup {
  std::int64_t batch = 1;
  std::optional<std::int64_t> seq_len;  ///< tokens per sequence; nullopt: search for the maximum
  Precision precision = Precision::bf16;
  OptimizerKind optimizer = OptimizerKind::adamw;
  bool optimizer_in_backward = true;    ///< update each parameter as soon as its gradient is complete
  std::int64_t grad_accum = 1;          ///< micro-batches per optimizer step
  AttentionKind attention = AttentionKind::flash;
  Profile profile = Profile::native;
  /// pytorch profile: PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (Note [Caching allocator]).
  bool expandable_segments = false;
  /// pytorch profile: the transformers version whose modelling code runs.
  Framework framework = Framework::transformers_5;
  /// pytorch profile: the training loop keeps the model's output (its logits) alive through
  /// backward and into the next step (`outputs = model(...); outputs.loss.backward()`), where the
  /// HF Trainer, and `loss = model(...).loss`, drop it once the loss is computed.
  bool hold_outputs = false;
  /// pytorch profile: optimizer.zero_grad(set_to_none=True), PyTorch's default and the HF
  /// Trainer's: the gradients are freed after each step and every one is allocated again when
  /// backward first writes it. false: they are zeroed in place and live through the training.
  bool zero_grad_set_to_none = true;
  /// ZeRO-Offload (DeepSpeed's offload_optimizer to the CPU): the fp32 master weights, AdamW's m
  /// and v and an fp32 copy of the rank's gradient shard live in host memory, and DeepSpeed's CPU
  /// Adam steps them there after backward; the device keeps the weights (Note [Offloaded
  /// optimizer] in builder.cpp).
  bool offload_optimizer = false;
  /// ZeRO-Infinity's parameter offload (DeepSpeed's offload_param to the CPU, with the optimizer
  /// offloaded): the rank's bf16 weight shard lives in host memory too, and each block's weights
  /// are uploaded (and with several ranks all-gathered) before use, as ZeRO-3 gathers them (Note
  /// [Offloaded optimizer] in builder.cpp). One GPU, or ZeRO-3.
  bool offload_param = false;
  Parallelism parallel;
  AdapterSetup adapter;
  PlanKnobs knobs;
  bool operator==(const TrainingSetup&) const = default;
};

/// A scenario file: a setup, and optionally the model and GPU it is for.
struct Scenario {
  std::optional<std::string> model;  ///< a model name, or a path relative to the scenario file
  std::optional<std::string> gpu;    ///< a GPU name, or a path relative to the scenario file
  /// a cluster name, or a path relative to the scenario file (multi-GPU setups; nullopt: the
  /// catalog's node of the GPU)
  std::optional<std::string> cluster;
  TrainingSetup setup;
  std::string source;  ///< the file, for messages
};

/// The dtypes each parameter is stored in under a setup (Note [Static bytes per parameter] in
/// static_memory.h gives the bytes). One place decides them; the static memory, the setup line
/// and the tables all read it.
struct ParameterStorage {
  DType weights = DType::bf16;       ///< what the kernels read
  std::optional<DType> master;       ///< fp32 master copy (mixed precision, native profile, trained)
  std::optional<DType> gradients;    ///< nullopt: frozen weights
  std::optional<DType> adam_state;   ///< m and v of AdamW (bf16 or fp32); int8 for adamw-8bit
  bool autocast = false;             ///< fp32 parameters cast to bf16 per op (pytorch profile, mixed)
  /// offload_optimizer: the master weights (fp32), the AdamW state (fp32) and an fp32 gradient
  /// copy are host memory.
  bool host_optimizer = false;
  /// offload_param: the weights (the rank's shard) are host memory, uploaded block by block.
  bool host_weights = false;
};
/// With a LoRA adapter, the storage of the adapters' parameters (the ones trained); the frozen
/// base weights are base_storage()'s.
[[nodiscard]] ParameterStorage parameter_storage(const TrainingSetup& setup);
/// The storage of the base model's parameters: parameter_storage() without an adapter; with one,
/// frozen (no gradients, no optimizer state, no master) bf16 weights, the decoder linears in
/// setup.adapter.base's format (their tensor bytes: base_weight_bytes in static_memory.h).
[[nodiscard]] ParameterStorage base_storage(const TrainingSetup& setup);
/// LoRA targets by name ("q", "gate", ...) as AdapterSetup::targets bits; an error names the
/// first unknown one.
[[nodiscard]] Expected<std::uint32_t> parse_lora_targets(std::span<const std::string> names);
/// The names of the linears in AdapterSetup::targets bits, in LoraTarget order.
[[nodiscard]] std::vector<std::string_view> lora_target_names(std::uint32_t targets);
/// The adapters' dtype: setup.adapter.dtype, or the profile's default.
[[nodiscard]] DType adapter_dtype(const TrainingSetup& setup);

/// Refuses an adapter setup the planner does not model (the message names the field and value);
/// part of check_setup_for_model.
[[nodiscard]] std::optional<Error> check_adapter(const TrainingSetup& setup, const std::string& origin);

/// Whether gradient buffers live through the whole step (static memory): with several
/// micro-batches accumulated, or with the optimizer after backward, except in the pytorch profile
/// with zero_grad(set_to_none=True), where each is allocated by backward and freed after the step.
[[nodiscard]] bool persistent_gradients(const TrainingSetup& setup);

/// A model or GPU reference read from a file at `origin`: a path (names_a_path) relative to
/// `origin`'s folder is made relative to the working directory; names and absolute paths stay.
[[nodiscard]] std::string resolve_relative(const std::string& reference, const std::string& origin);

/// Reads a scenario from YAML text; every field is optional, unknown fields are refused.
/// Paths in `model` and `gpu` (arguments with a '/' or a .yaml/.yml/.json ending) are taken
/// relative to `origin`'s folder.
[[nodiscard]] Expected<Scenario> parse_scenario_yaml(const std::string& text, const std::string& origin);
[[nodiscard]] Expected<Scenario> load_scenario_file(const std::string& path);
/// The setup as YAML fields of a scenario (knobs only where set).
[[nodiscard]] std::string setup_to_yaml(const TrainingSetup& setup);

/// The largest tensor, in bytes, a setup may make a step hold (128 TiB): beyond it the step's sums
/// of int64 byte counts could wrap, so check_setup_for_model refuses the batch or the length.
inline constexpr std::int64_t kMaxTensorBytes = std::int64_t{1} << 47;

/// Checks what only the model can tell (recomputed layers exist, the sequence holds at least 2
/// positions, no tensor beyond kMaxTensorBytes); `origin` names the source.
[[nodiscard]] std::optional<Error> check_setup_for_model(const TrainingSetup& setup, const ModelSpec& model,
                                                         const std::string& origin);

/// Refuses a sequence-parallel degree (setup.parallel.sp) the GPUs, the model's heads, the length
/// or the profile does not allow (Note [Ulysses step] in builder.cpp), and a context-parallel
/// degree (setup.parallel.cp; Note [Context-parallel step]) likewise; part of check_setup_for_model.
[[nodiscard]] std::optional<Error> check_sequence_parallel(const TrainingSetup& setup, const ModelSpec& model,
                                                           const std::string& origin);

/// Refuses an optimizer offload the setup cannot run (DeepSpeed's CPU Adam: AdamW after backward,
/// bf16 weights on the device, a ZeRO stage to partition by); part of check_setup_for_model.
[[nodiscard]] std::optional<Error> check_offload_optimizer(const TrainingSetup& setup, const std::string& origin);

/// Refuses a multi-GPU setup where `what` ("sweeps", "measurements") covers one GPU only.
[[nodiscard]] std::optional<Error> check_one_gpu(const TrainingSetup& setup, const std::string& origin,
                                                 std::string_view what);

/// One line for the top of every output: "bf16 weights, AdamW state bf16, optimizer in backward, ...".
[[nodiscard]] std::string describe_setup(const TrainingSetup& setup);

}  // namespace mstplan
