#include "planner/engine_export.h"

#include <filesystem>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "planner/error.h"
#include "planner/units.h"
#include "planner/yaml_input.h"

namespace mstplan {

// Note [Engine exports]
// ~~~~~~~~~~~~~~~~~~~~~
// An export is worth as much as the match between the step the engine runs and the step the
// planner predicted, so each engine admits only the plans its config can state, and the setups
// the pytorch profile models for it. Where the engine picks a size itself, the plan must pick the
// same rule. Keys were read in the engines' sources:
//
// deepspeed: an ArcticTraining recipe (snowflakedb/ArcticTraining b28638e, >= 0.6.0; its pyproject
//   needs deepspeed >= 0.18.2 and transformers 4.56 to 4.x), shaped like ALST's
//   projects/sequence-parallelism/run-h100-sp8-llama-8b.yml.
//   - sequence_parallel_size, micro_batch_size, gradient_accumulation_steps, tiled_mlp_compute and
//     activation_checkpoint_cpu_offload are trainer keys (arctic_training/config/trainer.py);
//     model.type, name_or_path, attn_implementation and disable_activation_checkpoint are model keys
//     (config/model.py); data.max_length is the length.
//   - Activation checkpointing is on unless disable_activation_checkpoint (model/hf_factory.py:
//     gradient_checkpointing_enable() on every decoder layer): full recompute of all layers or none;
//     no selective recompute, no subset of layers.
//   - activation_checkpoint_cpu_offload moves each layer's checkpointed input to the host:
//     offload_checkpoints, with full recompute.
//   - tiled_mlp_compute patches the MLP's forward with DeepSpeed's TiledMLP in
//     ceil(seqlen / hidden_size) shards of the rank's positions (model/tiled_compute.py): tiled MLP
//     chunks of hidden_size tokens exactly.
//   - The loss (trainer/sft_trainer.py): model.type liger is Liger-Kernel's fused linear
//     cross-entropy, modelled as forward-grad LM head chunks (ceil(V / d) of them, the planner's MST
//     rule; Liger sizes its chunks next_power_of_2(ceil(BT / ceil(V / H))), at most 2x larger, and
//     its fused RMSNorm, SwiGLU and RoPE are not modelled). model.type huggingface with one rank per
//     sequence is transformers' own loss: the LM head unchunked, logits kept. With Ulysses and
//     huggingface ArcticTraining runs DeepSpeed's TiledFusedLogitsLoss in ceil(fp32 logits / 1 GiB)
//     shards, a rule no plan states, so it is not exported.
//   - deepspeed.zero_optimization.stage 3 on every rank count (ALST's own one-GPU recipe runs stage 3
//     on one GPU; the planner models one GPU without the all-gathers of one layer's weights that
//     stage 3 still makes there). The pytorch profile models DeepSpeed's stage 3 only: stages 1 and 2
//     keep bucket buffers it does not model, and stage 0 (DDP) is the accelerate export's.
//   - offload_optimizer {device: cpu, pin_memory: true} with optimizer.type cpu_adam (DeepSpeed builds
//     DeepSpeedCPUAdam for it, runtime/engine.py) is ZeRO-Offload; bfloat16 {enabled} keeps the fp32
//     master and moments there; offload_param {device: cpu} (stage 3) is the parameter offload. Without offload, the planner's bf16 precision (bf16 master weights,
//     gradients and AdamW state) is bfloat16 {bf16_master_weights_and_grads, bf16_optimizer_states}
//     (DeepSpeed >= 0.18.3, PR #7700, docs/_pages/config-json.md) with optimizer.type fused_adam.
//     ArcticTraining writes bfloat16 {enabled: true} itself unless the block is given
//     (build_deepspeed_config); DeepSpeed reads "bfloat16" when "bf16" is absent (precision_config.py).
//   - DeepSpeed's own buffers (reduce and prefetch buckets, pinned bounce buffers) are not modelled
//     (README, "Many GPUs"); the recipe keeps DeepSpeed's defaults for them, as ALST ran.
//   - The planner's DeepSpeed steps the optimizer after backward; setups with the optimizer in
//     backward are refused.
//
// accelerate: an accelerate config (huggingface/accelerate 16cb6eb, >= 1.11 for FSDP2's keys as in
//   examples/torch_native_parallelism/configs/*.yaml) and the Trainer's arguments
//   (transformers TrainingArguments, as a JSON object of keyword arguments).
//   - zero 3 is FSDP2 full shard: distributed_type FSDP, fsdp_version 2, fsdp_reshard_after_forward
//     true, transformer-based wrapping (one FSDP unit per decoder layer, as the profile models).
//     zero 0 on several GPUs is DDP (MULTI_GPU); one GPU is distributed_type NO.
//   - Full recompute of all layers: fsdp_activation_checkpointing under FSDP, the Trainer's
//     gradient_checkpointing otherwise (transformers documents not to set both).
//   - Precision: mixed (fp32 parameters, bf16 autocast) is mixed_precision bf16 and the Trainer's
//     bf16; bf16 (bf16 weights, gradients and AdamW state) is the model loaded in bf16 with
//     mixed_precision no.
//   - The loss: the LM head unchunked, or use_liger_kernel (Liger, as for deepspeed above).
//   - No tiled MLP, no checkpoint offload, no Ulysses (accelerate's Ulysses is DeepSpeed's: use the
//     deepspeed export), no optimizer offload (fsdp_offload_params offloads the parameters too).
//
// torchtitan: refused. Its TOML (v0.2.2, the last release with TOML configs) would state FSDP,
//   context parallelism and activation checkpointing, but the pytorch profile is the Hugging Face
//   step: torchtitan's own model code, op-level selective checkpointing and loss are not modelled,
//   so the config would carry predictions that do not hold for it.

namespace {

std::string attention_name(AttentionKind a) {
  switch (a) {
    case AttentionKind::flash_attn: return "flash_attention_2";
    case AttentionKind::flash: return "sdpa";
    case AttentionKind::eager: return "eager";
  }
  return "sdpa";
}

bool recomputes_every_layer(const Plan& p, const ModelSpec& model) {
  return p.recompute == RecomputeKind::full &&
         (p.recompute_layers.empty() || static_cast<std::int64_t>(p.recompute_layers.size()) == model.num_layers);
}

// The LM head as Liger's fused linear cross-entropy (forward-grad in the planner's MST chunks).
bool liger_loss(const Plan& p, const ModelSpec& model) {
  return p.lm_head_mode == LmHeadMode::forward_grad && p.lm_head == Plan::mst_reference(model).lm_head;
}

bool unchunked(const ChunkSetting& c) { return c.chunks && *c.chunks == 1 && !c.chunk_tokens; }

std::string stem_of(const std::string& plan_path) {
  const std::filesystem::path p(plan_path);
  return (p.parent_path() / p.stem()).string();
}

// "# " before every line of `text`.
std::string comment(const std::string& text) {
  std::string out;
  std::size_t start = 0;
  while (start <= text.size()) {
    const std::size_t end = text.find('\n', start);
    const std::string line = text.substr(start, end == std::string::npos ? std::string::npos : end - start);
    out += line.empty() ? "#\n" : "# " + line + "\n";
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return out;
}

// What the plan predicts, for the export's header.
std::string header(const PlanFile& f, const std::string& what, const std::string& producer,
                   const std::string& plan_path) {
  const Parallelism& par = f.setup.parallel;
  std::string where = par.gpus > 1 ? fmt::format("{} x {}{}", par.gpus, f.gpu.name,
                                                 f.cluster ? fmt::format(" ({})", f.cluster->name) : std::string())
                                   : f.gpu.name;
  return fmt::format(
      "{}\n"
      "Written by {} beside {}: {} on {}, {} tokens per sequence, batch {}.\n"
      "Predicted per rank: {} allocated at the peak ({}), {} with the GPU's reserve; {} tokens/s{}.\n"
      "Plan: {}.\n",
      what, producer, plan_path, f.model.name, where, format_thousands(f.seq_len), f.setup.batch,
      format_bytes(f.predicted.peak_allocated_bytes), f.predicted.peak_at, format_bytes(f.predicted.required_bytes),
      format_thousands(static_cast<std::int64_t>(f.predicted.tokens_per_s)),
      par.gpus > 1 ? fmt::format(" over {} GPUs", par.gpus) : std::string(),
      describe_plan(f.plan, f.model, f.setup.parallel.sp > 1 ? f.seq_len / f.setup.parallel.sp : f.seq_len));
}

std::string arctic_recipe(const PlanFile& f, const std::string& plan_path, const std::string& producer) {
  const TrainingSetup& s = f.setup;
  const Plan& p = f.plan;
  const bool tiled = p.mlp_mode == MlpMode::tiled && !unchunked(p.mlp);
  const bool liger = liger_loss(p, f.model);
  const std::string recipe = stem_of(plan_path) + ".arctic.yml";
  std::string how = fmt::format(
      "How the plan maps (Note [Engine exports] in mst-plan's planner/engine_export.cpp):\n"
      "  {}\n"
      "  {}\n"
      "  {}\n"
      "  {}\n"
      "  {}\n"
      "  {}\n"
      "  {}\n"
      "Run it (ArcticTraining >= 0.6 with DeepSpeed >= 0.18.3 and transformers 4.56 to 4.x):\n"
      "  {}arctic_training {}{}\n"
      "The dataset below is ALST's recipe's: put yours in data.sources. data.max_length is the planned\n"
      "length. DeepSpeed's own buffers (its buckets) are not in the prediction.",
      s.parallel.sp > 1 ? fmt::format("Ulysses over {} ranks       -> sequence_parallel_size: {}", s.parallel.sp, s.parallel.sp)
                        : std::string("one rank per sequence      -> sequence_parallel_size: 1"),
      s.parallel.gpus > 1 ? std::string("ZeRO-3                     -> deepspeed.zero_optimization.stage: 3")
                          : std::string("one GPU                    -> stage 3 over one rank, as ALST's one-GPU recipe"),
      s.offload_param       ? std::string("optimizer, weights offload -> offload_optimizer, offload_param {device: cpu}; "
                                          "optimizer.type cpu_adam")
      : s.offload_optimizer ? std::string("optimizer offload          -> offload_optimizer {device: cpu}, optimizer.type cpu_adam")
                          : std::string("bf16 weights and AdamW     -> bfloat16 {bf16_master_weights_and_grads, bf16_optimizer_states}"),
      p.recompute == RecomputeKind::none ? "no recompute               -> model.disable_activation_checkpoint: true"
                                         : "recompute every layer      -> activation checkpointing (on by default)",
      p.offload_checkpoints ? "checkpoints on the host    -> activation_checkpoint_cpu_offload: true"
                            : "checkpoints on the device  -> activation_checkpoint_cpu_offload: false",
      tiled ? fmt::format("tiled MLP, {} tokens/chunk -> tiled_mlp_compute: true (TiledMLP: ceil(seqlen / {}) shards)",
                          f.model.hidden_size, f.model.hidden_size)
            : std::string("MLP unchunked              -> tiled_mlp_compute: false"),
      liger ? "LM head forward-grad       -> model.type: liger (Liger-Kernel's fused linear cross-entropy)"
            : "LM head unchunked          -> model.type: huggingface (transformers' loss)",
      s.expandable_segments ? "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True " : "", recipe,
      s.parallel.gpus == 1 ? " --num_gpus 1" : "");
  std::string out = comment(header(f, "ArcticTraining recipe (ALST: DeepSpeed ZeRO-3 with Ulysses sequence parallelism).",
                                   producer, plan_path) +
                            how);
  out += "type: sft\n";
  out += fmt::format("micro_batch_size: {}\n", s.batch);
  out += fmt::format("gradient_accumulation_steps: {}\n", s.grad_accum);
  out += fmt::format("sequence_parallel_size: {}\n", s.parallel.sp);
  out += fmt::format("activation_checkpoint_cpu_offload: {}\n", p.offload_checkpoints ? "true" : "false");
  out += fmt::format("tiled_mlp_compute: {}\n", tiled ? "true" : "false");
  out += "deepspeed:\n  zero_optimization:\n    stage: 3\n";
  if (s.offload_optimizer) {
    out += "    offload_optimizer:\n      device: cpu\n      pin_memory: true\n";
    if (s.offload_param) out += "    offload_param:\n      device: cpu\n      pin_memory: true\n";
    out += "  bfloat16:\n    enabled: true\n";
  } else {
    out += "  bfloat16:\n    enabled: true\n    bf16_master_weights_and_grads: true\n    bf16_optimizer_states: true\n";
  }
  if (s.parallel.sp > 1) out += "  seq_parallel_communication_data_type: bf16\n";
  out += fmt::format("optimizer:\n  type: {}\n", s.offload_optimizer ? "cpu_adam" : "fused_adam");
  out += "model:\n";
  out += fmt::format("  type: {}\n", liger ? "liger" : "huggingface");
  out += fmt::format("  name_or_path: {}\n", yaml_scalar(f.model.name_or_path));
  out += fmt::format("  attn_implementation: {}\n", attention_name(s.attention));
  if (p.recompute == RecomputeKind::none) out += "  disable_activation_checkpoint: true\n";
  out +=
      "data:\n"
      "  sources:\n"
      "    - type: huggingface_instruct\n"
      "      name_or_path: HuggingFaceH4/ultrachat_200k\n"
      "      split: train_sft\n"
      "      role_mapping:\n"
      "        user: messages.role.user\n"
      "        assistant: messages.role.assistant\n";
  out += fmt::format("  max_length: {}\n", f.seq_len);
  return out;
}

std::vector<ExportFile> accelerate_files(const PlanFile& f, const std::string& plan_path, const std::string& producer) {
  const TrainingSetup& s = f.setup;
  const Plan& p = f.plan;
  const bool fsdp = s.parallel.gpus > 1 && s.parallel.zero == ZeroStage::parameters;
  const bool recompute = p.recompute != RecomputeKind::none;
  const bool mixed = s.precision == Precision::mixed;
  const std::string stem = stem_of(plan_path);
  const std::string args_path = stem + ".training_args.json";
  const std::string config_path = stem + ".accelerate.yaml";
  const std::int64_t nodes = f.cluster && f.cluster->gpus_per_node > 0
                                 ? (s.parallel.gpus + f.cluster->gpus_per_node - 1) / f.cluster->gpus_per_node
                                 : 1;
  std::string how = fmt::format(
      "How the plan maps (Note [Engine exports] in mst-plan's planner/engine_export.cpp):\n"
      "  {}\n"
      "  {}\n"
      "  {}\n"
      "  {}\n"
      "Load the model with AutoModelForCausalLM.from_pretrained({}{}, attn_implementation=\"{}\"),\n"
      "pass TrainingArguments(**json.load(open(\"{}\"))) to the Trainer (with your output_dir and data), and launch\n"
      "  {}accelerate launch --config_file {} train.py\n"
      "(accelerate >= 1.11, transformers >= 4.46{}).",
      fsdp ? "ZeRO-3                -> FSDP2 full shard (fsdp_version 2, fsdp_reshard_after_forward: true)"
           : s.parallel.gpus > 1 ? "data parallel         -> DDP (distributed_type MULTI_GPU)"
                                 : "one GPU               -> distributed_type NO",
      recompute ? (fsdp ? "recompute every layer -> fsdp_activation_checkpointing: true"
                        : "recompute every layer -> gradient_checkpointing: true")
                : "no recompute          -> no activation checkpointing",
      mixed ? "precision mixed       -> fp32 parameters with bf16 autocast (mixed_precision bf16, bf16: true)"
            : "precision bf16        -> bf16 weights, gradients and AdamW state (torch_dtype bfloat16, no autocast)",
      liger_loss(p, f.model) ? "LM head forward-grad  -> use_liger_kernel: true (Liger-Kernel's fused linear cross-entropy)"
                             : "LM head unchunked     -> transformers' loss",
      fmt::format("\"{}\"", f.model.name_or_path),
      mixed ? "" : ", torch_dtype=torch.bfloat16", attention_name(s.attention), args_path,
      s.expandable_segments ? "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True " : "", config_path,
      liger_loss(p, f.model) ? ", liger-kernel" : "");
  std::string config = comment(header(f, "accelerate config.", producer, plan_path) + how);
  config += "compute_environment: LOCAL_MACHINE\n";
  config += fmt::format("distributed_type: {}\n", fsdp ? "FSDP" : s.parallel.gpus > 1 ? "MULTI_GPU" : "'NO'");
  config += fmt::format("mixed_precision: {}\n", mixed ? "bf16" : "'no'");
  config += fmt::format("num_machines: {}\nnum_processes: {}\nmachine_rank: 0\n", nodes, s.parallel.gpus);
  if (fsdp) {
    config += "fsdp_config:\n";
    config += "  fsdp_version: 2\n";
    config += "  fsdp_reshard_after_forward: true\n";
    config += "  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP\n";
    config += fmt::format("  fsdp_activation_checkpointing: {}\n", recompute ? "true" : "false");
    config += "  fsdp_offload_params: false\n";
    config += "  fsdp_cpu_ram_efficient_loading: true\n";
    config += "  fsdp_state_dict_type: SHARDED_STATE_DICT\n";
  }
  nlohmann::ordered_json args;
  args["per_device_train_batch_size"] = s.batch;
  args["gradient_accumulation_steps"] = s.grad_accum;
  args["gradient_checkpointing"] = recompute && !fsdp;
  args["bf16"] = mixed;
  args["optim"] = "adamw_torch";
  args["use_liger_kernel"] = liger_loss(p, f.model);
  return {{config_path, config}, {args_path, args.dump(2) + "\n"}};
}

}  // namespace

std::optional<std::string> export_setup_problem(Engine engine, const ModelSpec& model, const TrainingSetup& setup) {
  const std::string name(to_string(engine));
  if (engine == Engine::torchtitan) {
    return "torchtitan is not exported: the pytorch profile models the Hugging Face step, and torchtitan's own "
           "model code, op-level selective checkpointing and loss are not modelled, so its config would carry "
           "predictions that do not hold; use --export deepspeed or accelerate";
  }
  if (setup.parallel.cp > 1) {
    return fmt::format("context parallelism (cp {}) is planned on the native profile's step, which {} does not run "
                       "(its sequence parallelism is DeepSpeed's Ulysses); give --sp instead of --cp",
                       setup.parallel.cp, name);
  }
  if (setup.profile != Profile::pytorch) {
    return fmt::format("{} runs the Hugging Face step on PyTorch, which the pytorch profile models; add --profile pytorch",
                       name);
  }
  if (setup.framework != Framework::transformers_5) {
    return fmt::format("{}'s releases run transformers 4.49 or later; give --framework transformers-5 (got {})", name,
                       to_string(setup.framework));
  }
  if (model.name_or_path.empty()) {
    return fmt::format("model '{}' has no name_or_path (the Hub id or folder from_pretrained loads); add it to its "
                       "spec, or give --model a config.json in the model's folder",
                       model.name);
  }
  if (setup.optimizer != OptimizerKind::adamw) {
    return fmt::format("the export runs AdamW; --optimizer is {}", to_string(setup.optimizer));
  }
  if (setup.optimizer_in_backward) {
    return fmt::format("{} steps the optimizer after backward; give --no-optimizer-in-backward", name);
  }
  if (setup.hold_outputs) return "--hold-outputs is a hand-written loop's; the engine's trainer drops the outputs";
  if (setup.knobs.authors_code && *setup.knobs.authors_code) return "the MST authors' code is not an engine's";
  const Parallelism& par = setup.parallel;
  if (engine == Engine::deepspeed) {
    if (par.gpus > 1 && par.zero != ZeroStage::parameters) {
      return fmt::format("the pytorch profile models DeepSpeed's ZeRO-3 only (zero is {}); give --zero 3, or "
                         "--export accelerate for DDP",
                         to_string(par.zero));
    }
    if (setup.precision != Precision::bf16) {
      return fmt::format("DeepSpeed's bf16 modes are the planner's precision bf16 (bf16 master weights, or the fp32 "
                         "master on the host with --offload-optimizer); --precision is {}",
                         to_string(setup.precision));
    }
    if (par.sp > 1 && setup.attention == AttentionKind::eager) {
      return "DeepSpeed's Ulysses wraps sdpa or flash-attn, not eager attention; give --attention flash or flash-attn";
    }
    return std::nullopt;
  }
  // accelerate
  if (par.sp > 1) return "accelerate's Ulysses is DeepSpeed's; use --export deepspeed for --sp";
  if (setup.offload_optimizer) {
    return "accelerate's FSDP offloads the parameters with the optimizer (fsdp_offload_params), which is not the "
           "optimizer offload planned; use --export deepspeed";
  }
  if (setup.precision == Precision::fp32) return "precision fp32 is the native runtime's; give bf16 or mixed";
  return std::nullopt;
}

std::optional<std::string> export_plan_problem(Engine engine, const ModelSpec& model, const TrainingSetup& setup,
                                               const Plan& p) {
  const std::string name(to_string(engine));
  if (p.authors_code) return "the MST authors' code is not an engine's";
  if (p.recompute == RecomputeKind::selective) return fmt::format("{} has no selective recompute", name);
  if (p.recompute == RecomputeKind::full && !recomputes_every_layer(p, model)) {
    return fmt::format("{} checkpoints every decoder layer or none, not {} of {}", name, p.recompute_layers.size(),
                       model.num_layers);
  }
  const bool liger = liger_loss(p, model);
  const bool plain_head = unchunked(p.lm_head) && p.lm_head_mode == LmHeadMode::keep;
  if (engine == Engine::deepspeed) {
    if (p.offload_checkpoints && p.recompute != RecomputeKind::full) {
      return "checkpoint offload without recompute is not ArcticTraining's";
    }
    const bool tiled = p.mlp_mode == MlpMode::tiled && p.mlp == ChunkSetting{{}, model.hidden_size};
    const bool plain_mlp = unchunked(p.mlp) && p.mlp_mode == MlpMode::paper;
    if (!tiled && !plain_mlp) {
      return fmt::format("DeepSpeed's TiledMLP splits the MLP in chunks of hidden_size ({}) tokens; the plan's MLP "
                         "is otherwise",
                         model.hidden_size);
    }
    if (!liger && !(plain_head && setup.parallel.sp == 1)) {
      return setup.parallel.sp > 1
                 ? "with Ulysses, ArcticTraining's LM head is Liger's fused loss (forward-grad in the planner's "
                   "chunks) or TiledFusedLogitsLoss in 1 GiB shards, which no plan states"
                 : "ArcticTraining's LM head is transformers' loss (unchunked) or Liger's fused loss (forward-grad in "
                   "the planner's chunks)";
    }
    return std::nullopt;
  }
  // accelerate
  if (p.offload_checkpoints) return "accelerate has no checkpoint offload";
  if (!(unchunked(p.mlp) && p.mlp_mode == MlpMode::paper)) return "accelerate has no chunked MLP";
  if (!liger && !plain_head) {
    return "the Trainer's LM head is transformers' loss (unchunked) or Liger's (use_liger_kernel)";
  }
  return std::nullopt;
}

std::optional<Plan> express_plan(Engine engine, const ModelSpec& model, const TrainingSetup& setup, Plan p) {
  if (p.authors_code) return std::nullopt;
  if (p.recompute != RecomputeKind::none) {
    p.recompute = RecomputeKind::full;  // every decoder layer is checkpointed, or none
    p.recompute_layers.clear();
  }
  if (p.recompute == RecomputeKind::none || engine == Engine::accelerate) p.offload_checkpoints = false;
  if (engine == Engine::deepspeed && !(unchunked(p.mlp) && p.mlp_mode == MlpMode::paper)) {
    p.mlp = ChunkSetting{{}, model.hidden_size};  // TiledMLP's shards
    p.mlp_mode = MlpMode::tiled;
  }
  if (engine == Engine::accelerate) {
    p.mlp = ChunkSetting{1, {}};
    p.mlp_mode = MlpMode::paper;
  }
  const bool plain_head = unchunked(p.lm_head) && p.lm_head_mode == LmHeadMode::keep;
  if (!plain_head || (engine == Engine::deepspeed && setup.parallel.sp > 1)) {
    p.lm_head = Plan::mst_reference(model).lm_head;  // Liger's fused loss
    p.lm_head_mode = LmHeadMode::forward_grad;
  }
  MSTPLAN_CHECK(!export_plan_problem(engine, model, setup, p), "an expressed plan the engine cannot run");
  return p;
}

std::vector<ExportFile> export_files(Engine engine, const PlanFile& f, const std::string& plan_path,
                                     const std::string& producer) {
  MSTPLAN_CHECK(!export_setup_problem(engine, f.model, f.setup), "exporting a setup the engine cannot run");
  MSTPLAN_CHECK(!export_plan_problem(engine, f.model, f.setup, f.plan), "exporting a plan the engine cannot run");
  if (engine == Engine::deepspeed) return {{stem_of(plan_path) + ".arctic.yml", arctic_recipe(f, plan_path, producer)}};
  return accelerate_files(f, plan_path, producer);
}

}  // namespace mstplan
