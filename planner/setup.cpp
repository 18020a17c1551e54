#include "planner/setup.h"

#include <algorithm>
#include <filesystem>

#include "planner/catalog.h"
#include "planner/model_spec.h"
#include "planner/spec_fields.h"
#include "planner/yaml_input.h"

namespace mstplan {
namespace {

std::optional<ChunkSetting> read_chunks(FieldReader& block, std::string_view what) {
  ChunkSetting c;
  c.chunks = block.optional_int("chunks", IntRange::positive(), "search");
  c.chunk_tokens = block.optional_int("chunk_tokens");
  if (c.chunks && c.chunk_tokens) {
    block.fail("chunk_tokens", fmt::format("give either chunks or chunk_tokens for the {}, not both", what));
  }
  if (!c.chunks && !c.chunk_tokens) return std::nullopt;  // the search chooses
  return c;
}

}  // namespace

std::string resolve_relative(const std::string& reference, const std::string& origin) {
  if (!names_a_path(reference)) return reference;
  const std::filesystem::path p(reference);
  if (p.is_absolute()) return reference;
  return (std::filesystem::path(origin).parent_path() / p).lexically_normal().string();
}

void read_setup_fields(FieldReader& r, TrainingSetup& s) {
  s.batch = r.optional_int("batch").value_or(s.batch);
  s.seq_len = r.optional_int("seq_len", IntRange::tokens(), "search");
  s.precision = r.optional_enum<Precision>("precision").value_or(s.precision);
  s.optimizer = r.optional_enum<OptimizerKind>("optimizer").value_or(s.optimizer);
  const std::optional<bool> in_backward = r.optional_bool("optimizer_in_backward");
  s.grad_accum = r.optional_int("grad_accum").value_or(s.grad_accum);
  s.attention = r.optional_enum<AttentionKind>("attention").value_or(s.attention);
  s.profile = r.optional_enum<Profile>("profile").value_or(s.profile);
  s.expandable_segments = r.optional_bool("expandable_segments").value_or(s.expandable_segments);
  s.framework = r.optional_enum<Framework>("framework").value_or(s.framework);
  s.hold_outputs = r.optional_bool("hold_outputs").value_or(s.hold_outputs);
  s.zero_grad_set_to_none = r.optional_bool("zero_grad_set_to_none").value_or(s.zero_grad_set_to_none);
  s.parallel.gpus = r.optional_int("gpus").value_or(s.parallel.gpus);
  s.parallel.zero = r.optional_enum<ZeroStage>("zero").value_or(s.parallel.zero);
  s.parallel.sp = r.optional_int("sp").value_or(s.parallel.sp);
  s.parallel.cp = r.optional_int("cp").value_or(s.parallel.cp);
  s.offload_optimizer = r.optional_bool("offload_optimizer").value_or(s.offload_optimizer);
  s.offload_param = r.optional_bool("offload_param").value_or(s.offload_param);
  if (auto adapter = r.optional_map("adapter")) {
    AdapterSetup& a = s.adapter;
    a.kind = adapter->optional_enum<AdapterKind>("kind").value_or(a.kind);
    a.rank = adapter->optional_int("rank").value_or(a.rank);
    a.alpha = adapter->optional_number("alpha").value_or(a.alpha);
    const std::vector<std::string> targets = adapter->optional_string_list("targets");
    if (!targets.empty()) {
      auto parsed = parse_lora_targets(targets);
      if (parsed) {
        a.targets = *parsed;
      } else {
        adapter->fail("targets", parsed.error().message);
      }
    }
    if (auto dtype = adapter->optional_enum<DType>("dtype")) a.dtype = *dtype;
    a.dropout = adapter->optional_number("dropout").value_or(a.dropout);
    a.base = adapter->optional_enum<BaseFormat>("base").value_or(a.base);
    a.double_quant = adapter->optional_bool("double_quant").value_or(a.double_quant);
    (void)adapter->finish();
  }
  // The offloaded optimizer steps after backward unless the file says otherwise (then refused).
  s.optimizer_in_backward = in_backward.value_or(s.offload_optimizer ? false : s.optimizer_in_backward);
  read_knob_fields(r, s.knobs);
}

void read_knob_fields(FieldReader& r, PlanKnobs& knobs) {
  if (auto mlp = r.optional_map("mlp")) {
    knobs.mlp_chunks = read_chunks(*mlp, "MLP");
    knobs.mlp_mode = mlp->optional_enum<MlpMode>("mode");
    (void)mlp->finish();
  }
  if (auto head = r.optional_map("lm_head")) {
    knobs.lm_head_chunks = read_chunks(*head, "LM head");
    knobs.lm_head_mode = head->optional_enum<LmHeadMode>("mode");
    (void)head->finish();
  }
  if (auto recompute = r.optional_map("recompute")) {
    knobs.recompute = recompute->optional_enum<RecomputeKind>("kind");
    knobs.recompute_layers = recompute->optional_int_list("layers", IntRange::non_negative(), "all");
    (void)recompute->finish();
  }
  knobs.offload_checkpoints = r.optional_bool("offload");
  knobs.authors_code = r.optional_bool("authors_code");
}

Expected<Scenario> parse_scenario_yaml(const std::string& text, const std::string& origin) {
  auto node = load_yaml(text, origin, "scenario");
  if (!node) return node.error();
  FieldReader r = FieldReader::root(*node, origin, "scenario");
  Scenario sc;
  sc.source = origin;
  if (auto model = r.optional_string("model")) sc.model = resolve_relative(*model, origin);
  if (auto gpu = r.optional_string("gpu")) sc.gpu = resolve_relative(*gpu, origin);
  if (auto cluster = r.optional_string("cluster")) sc.cluster = resolve_relative(*cluster, origin);
  read_setup_fields(r, sc.setup);
  if (auto error = r.finish()) return *error;
  return sc;
}

Expected<Scenario> load_scenario_file(const std::string& path) {
  return parse_file(path, parse_scenario_yaml);
}

std::string knobs_to_yaml(const PlanKnobs& knobs) {
  std::string out;
  auto block = [&](std::string_view key, const std::optional<ChunkSetting>& chunks, auto mode) {
    std::string fields;
    if (chunks && chunks->chunks) fields += fmt::format("chunks: {}", *chunks->chunks);
    if (chunks && chunks->chunk_tokens) fields += fmt::format("chunk_tokens: {}", *chunks->chunk_tokens);
    if (mode) fields += fmt::format("{}mode: {}", fields.empty() ? "" : ", ", to_string(*mode));
    if (!fields.empty()) out += fmt::format("{}: {{{}}}\n", key, fields);
  };
  block("mlp", knobs.mlp_chunks, knobs.mlp_mode);
  block("lm_head", knobs.lm_head_chunks, knobs.lm_head_mode);
  if (knobs.recompute || knobs.recompute_layers) {
    std::string fields;
    if (knobs.recompute) fields += fmt::format("kind: {}", to_string(*knobs.recompute));
    if (knobs.recompute_layers) {
      const std::string layers = knobs.recompute_layers->empty() ? std::string("all")
                                                                 : fmt::format("[{}]", fmt::join(*knobs.recompute_layers, ", "));
      fields += fmt::format("{}layers: {}", fields.empty() ? "" : ", ", layers);
    }
    out += fmt::format("recompute: {{{}}}\n", fields);
  }
  if (knobs.offload_checkpoints) out += fmt::format("offload: {}\n", *knobs.offload_checkpoints);
  if (knobs.authors_code && *knobs.authors_code) out += "authors_code: true\n";
  return out;
}

std::string setup_to_yaml(const TrainingSetup& s) {
  std::string out;
  out += fmt::format("batch: {}\n", s.batch);
  out += fmt::format("seq_len: {}\n", s.seq_len ? fmt::format("{}", *s.seq_len) : std::string("search"));
  out += fmt::format("precision: {}\n", to_string(s.precision));
  out += fmt::format("optimizer: {}\n", to_string(s.optimizer));
  out += fmt::format("optimizer_in_backward: {}\n", s.optimizer_in_backward);
  out += fmt::format("grad_accum: {}\n", s.grad_accum);
  out += fmt::format("attention: {}\n", to_string(s.attention));
  out += fmt::format("profile: {}\n", to_string(s.profile));
  if (s.expandable_segments) out += "expandable_segments: true\n";
  if (s.framework != Framework::transformers_5) out += fmt::format("framework: {}\n", to_string(s.framework));
  if (s.hold_outputs) out += "hold_outputs: true\n";
  if (!s.zero_grad_set_to_none) out += "zero_grad_set_to_none: false\n";
  if (s.parallel.gpus > 1) out += fmt::format("gpus: {}\n", s.parallel.gpus);
  if (s.parallel.zero != ZeroStage::none) out += fmt::format("zero: {}\n", to_string(s.parallel.zero));
  if (s.parallel.sp > 1) out += fmt::format("sp: {}\n", s.parallel.sp);
  if (s.parallel.cp > 1) out += fmt::format("cp: {}\n", s.parallel.cp);
  if (s.offload_optimizer) out += "offload_optimizer: true\n";
  if (s.offload_param) out += "offload_param: true\n";
  if (s.adapter != AdapterSetup{}) {
    const AdapterSetup& a = s.adapter;
    out += fmt::format("adapter: {{kind: {}, rank: {}, alpha: {}, targets: [{}]", to_string(a.kind), a.rank, a.alpha,
                       fmt::join(lora_target_names(a.targets), ", "));
    if (a.dtype) out += fmt::format(", dtype: {}", to_string(*a.dtype));
    if (a.dropout > 0) out += fmt::format(", dropout: {}", a.dropout);
    out += fmt::format(", base: {}, double_quant: {}}}\n", to_string(a.base), a.double_quant);
  }
  out += knobs_to_yaml(s.knobs);
  return out;
}

namespace {

// The largest tensor a step of `tokens` tokens per micro-batch could hold, in bytes (fp32 logits
// or MLP activations, eager attention's scores), computed in long double so that nothing wraps.
long double largest_tensor_bytes(const ModelSpec& model, const TrainingSetup& setup, long double seq) {
  const long double batch = static_cast<long double>(setup.batch);
  const long double width = static_cast<long double>(
      std::max({model.vocab_size, model.intermediate_size, model.hidden_size, model.num_heads * model.head_dim}));
  long double largest = batch * seq * width * 4;
  if (setup.attention == AttentionKind::eager) {
    largest = std::max(largest, batch * static_cast<long double>(model.num_heads) * seq * seq * 4);
  }
  return largest;
}

}  // namespace

std::optional<Error> check_setup_for_model(const TrainingSetup& setup, const ModelSpec& model,
                                           const std::string& origin) {
  if (setup.seq_len && *setup.seq_len < 2) {
    return make_error(ErrorKind::invalid,
                      "{}: field 'seq_len': {}: a training step needs at least 2 positions (each predicts the next)",
                      origin, *setup.seq_len);
  }
  // Byte counts are int64 and a step adds thousands of tensors: the largest one is held to
  // kMaxTensorBytes, so that no sum wraps (the shortest step, 2 positions, bounds the batch).
  const long double at_least = largest_tensor_bytes(model, setup, 2);
  if (at_least > static_cast<long double>(kMaxTensorBytes)) {
    return make_error(ErrorKind::invalid,
                      "{}: field 'batch': {}: even 2 positions per sequence make a tensor of {:.3g} bytes, beyond the "
                      "{} bytes (128 TiB) the planner counts; give a smaller batch",
                      origin, setup.batch, static_cast<double>(at_least), kMaxTensorBytes);
  }
  if (setup.seq_len) {
    const long double largest = largest_tensor_bytes(model, setup, static_cast<long double>(*setup.seq_len));
    if (largest > static_cast<long double>(kMaxTensorBytes)) {
      return make_error(ErrorKind::invalid,
                        "{}: field 'seq_len': {} tokens (batch {}) make a tensor of {:.3g} bytes, beyond the {} bytes "
                        "(128 TiB) the planner counts; give a shorter sequence",
                        origin, *setup.seq_len, setup.batch, static_cast<double>(largest), kMaxTensorBytes);
    }
  }
  if (setup.precision == Precision::fp32 && setup.profile == Profile::pytorch) {
    return make_error(ErrorKind::invalid,
                      "{}: field 'precision': fp32 is modelled for the native profile only, not with profile pytorch",
                      origin);
  }
  if (setup.profile != Profile::pytorch) {
    // What only the pytorch profile has: refused rather than silently ignored.
    if (setup.framework != Framework::transformers_5) {
      return make_error(ErrorKind::invalid, "{}: field 'framework': {} is the pytorch profile's; give profile pytorch",
                        origin, to_string(setup.framework));
    }
    if (setup.hold_outputs || setup.expandable_segments || !setup.zero_grad_set_to_none) {
      const char* field = setup.hold_outputs ? "hold_outputs" : setup.expandable_segments ? "expandable_segments"
                                                                                        : "zero_grad_set_to_none";
      return make_error(ErrorKind::invalid, "{}: field '{}': describes PyTorch's training loop; give profile pytorch",
                        origin, field);
    }
  }
  if (setup.knobs.authors_code && *setup.knobs.authors_code && setup.profile != Profile::pytorch) {
    return make_error(ErrorKind::invalid,
                      "{}: field 'authors_code': the MST authors' code is PyTorch code; it needs profile pytorch", origin);
  }
  if (setup.parallel.zero != ZeroStage::none && setup.parallel.gpus == 1) {
    return make_error(ErrorKind::invalid, "{}: field 'zero': ZeRO-{} shards over data-parallel GPUs; give gpus > 1",
                      origin, to_string(setup.parallel.zero));
  }
  if (setup.profile == Profile::pytorch && setup.parallel.gpus > 1 &&
      (setup.parallel.zero == ZeroStage::optimizer || setup.parallel.zero == ZeroStage::gradients)) {
    return make_error(ErrorKind::invalid,
                      "{}: field 'zero': ZeRO-{} with profile pytorch is DeepSpeed's, whose bucket buffers are not "
                      "modelled; the pytorch profile models DDP (zero 0) and FSDP2 full shard (zero 3)",
                      origin, to_string(setup.parallel.zero));
  }
  if (auto error = check_sequence_parallel(setup, model, origin)) return error;
  if (auto error = check_offload_optimizer(setup, origin)) return error;
  if (auto error = check_adapter(setup, origin)) return error;
  if (setup.knobs.recompute_layers) {
    for (std::int64_t layer : *setup.knobs.recompute_layers) {
      if (layer >= model.num_layers) {
        return make_error(ErrorKind::invalid, "{}: field 'recompute.layers': layer {} does not exist ({} has layers 0 to {})",
                          origin, layer, model.name, model.num_layers - 1);
      }
    }
  }
  return std::nullopt;
}

std::optional<Error> check_sequence_parallel(const TrainingSetup& setup, const ModelSpec& model,
                                            const std::string& origin) {
  const Parallelism& par = setup.parallel;
  if (par.cp != 1) {
    auto refuse = [&](const std::string& why) {
      return make_error(ErrorKind::invalid, "{}: field 'cp': {}: {}", origin, par.cp, why);
    };
    if (par.cp < 1) return refuse("the ranks sharing a sequence are 1 or more");
    if (par.gpus % par.cp != 0) return refuse(fmt::format("does not divide the {} GPUs (gpus)", par.gpus));
    if (par.sp > 1) {
      return refuse(fmt::format("context parallelism with Ulysses (sp {}) is not modelled; give one of them",
                                par.sp));
    }
    if (setup.seq_len && *setup.seq_len % par.cp != 0) {
      return refuse(fmt::format("does not divide the sequence of {} tokens (seq_len); give a multiple of {}",
                                *setup.seq_len, par.cp));
    }
    if (setup.profile == Profile::pytorch) {
      return refuse("the pytorch profile is the Hugging Face step, whose attention is not context-parallel "
                    "(torchtitan's is not modelled); give profile native");
    }
    if (setup.attention == AttentionKind::eager) {
      return refuse("context parallelism runs a memory-efficient attention over the gathered keys; give attention "
                    "flash");
    }
    return std::nullopt;
  }
  if (par.sp == 1) return std::nullopt;
  auto refuse = [&](const std::string& why) {
    return make_error(ErrorKind::invalid, "{}: field 'sp': {}: {}", origin, par.sp, why);
  };
  if (par.sp < 1) return refuse("the ranks sharing a sequence are 1 or more");
  if (par.gpus % par.sp != 0) return refuse(fmt::format("does not divide the {} GPUs (gpus)", par.gpus));
  if (model.num_heads % par.sp != 0) {
    return refuse(fmt::format("Ulysses splits the attention heads; {} has {} query heads, which it does not divide",
                              model.name, model.num_heads));
  }
  if (model.num_kv_heads % par.sp != 0 && par.sp % model.num_kv_heads != 0) {
    return refuse(fmt::format("{} has {} key/value heads: sp must divide them or be a multiple of them", model.name,
                              model.num_kv_heads));
  }
  if (setup.seq_len && *setup.seq_len % par.sp != 0) {
    return refuse(fmt::format("does not divide the sequence of {} tokens (seq_len); give a multiple of {}",
                              *setup.seq_len, par.sp));
  }
  if (setup.profile == Profile::pytorch && setup.framework != Framework::transformers_5) {
    return refuse(fmt::format("ALST's Ulysses wraps transformers' attention-function registry (4.51 in its paper); "
                              "framework {} is not modelled with it, give transformers-5",
                              to_string(setup.framework)));
  }
  return std::nullopt;
}

std::optional<Error> check_offload_optimizer(const TrainingSetup& setup, const std::string& origin) {
  if (setup.offload_param) {
    auto refuse = [&](const std::string& why) {
      return make_error(ErrorKind::invalid, "{}: field 'offload_param': {}", origin, why);
    };
    if (!setup.offload_optimizer) {
      return refuse("DeepSpeed's parameter offload is modelled with the optimizer offloaded too; give "
                    "offload_optimizer: true (--offload-optimizer)");
    }
    if (setup.parallel.gpus > 1 && !setup.parallel.shards_weights()) {
      return refuse(fmt::format("parameter offload is ZeRO-3's (offload_param); zero is {}, give 3",
                                to_string(setup.parallel.zero)));
    }
  }
  if (!setup.offload_optimizer) return std::nullopt;
  auto refuse = [&](const std::string& why) {
    return make_error(ErrorKind::invalid, "{}: field 'offload_optimizer': {}", origin, why);
  };
  if (setup.optimizer != OptimizerKind::adamw) {
    return refuse(fmt::format("DeepSpeed's CPU Adam steps AdamW; the optimizer is {}", to_string(setup.optimizer)));
  }
  if (setup.optimizer_in_backward) {
    return refuse("the host steps the optimizer after backward; set optimizer_in_backward: false "
                  "(--no-optimizer-in-backward)");
  }
  if (setup.precision == Precision::fp32) return refuse("precision fp32 is the runtime's exact-arithmetic setup; give bf16");
  if (setup.precision == Precision::mixed && setup.profile == Profile::pytorch) {
    return refuse("DeepSpeed's bf16 mode keeps bf16 weights on the device with the fp32 master on the host, not "
                  "torch.autocast's fp32 parameters; give precision bf16");
  }
  if (setup.parallel.gpus > 1 && !setup.parallel.shards_gradients()) {
    return refuse(fmt::format("ZeRO-Offload copies each rank's reduced gradient shard to the host (ZeRO-2 and 3); "
                              "zero is {}, give 2 or 3",
                              to_string(setup.parallel.zero)));
  }
  return std::nullopt;
}

std::optional<Error> check_one_gpu(const TrainingSetup& setup, const std::string& origin, std::string_view what) {
  if (setup.parallel.gpus == 1) return std::nullopt;
  return make_error(ErrorKind::invalid,
                    "{}: field 'gpus': {}: {} cover one GPU for now; plan {} GPUs with the main command (mst-plan "
                    "--gpus N) or `mst-plan report`",
                    origin, setup.parallel.gpus, what, setup.parallel.gpus);
}

bool persistent_gradients(const TrainingSetup& s) {
  if (s.optimizer == OptimizerKind::none) return false;
  if (s.offload_optimizer) return false;  // the host copy persists; each device gradient dies once copied
  if (s.grad_accum > 1) return true;
  if (s.optimizer_in_backward) return false;
  return !(s.profile == Profile::pytorch && s.zero_grad_set_to_none);
}

Expected<std::uint32_t> parse_lora_targets(std::span<const std::string> names) {
  std::uint32_t targets = 0;
  for (const std::string& name : names) {
    const std::optional<LoraTarget> t = parse_enum<LoraTarget>(name);
    if (!t) {
      return make_error(ErrorKind::invalid, "'{}' is not a linear of a decoder layer; targets are {}", name,
                        enum_choices<LoraTarget>());
    }
    targets |= 1U << static_cast<unsigned>(*t);
  }
  if (targets == 0) return make_error(ErrorKind::invalid, "no linear to adapt; targets are {}", enum_choices<LoraTarget>());
  return targets;
}

std::vector<std::string_view> lora_target_names(std::uint32_t targets) {
  std::vector<std::string_view> names;
  for (const auto& [t, name] : EnumNames<LoraTarget>::table) {
    if ((targets & (1U << static_cast<unsigned>(t))) != 0) names.push_back(name);
  }
  return names;
}

DType adapter_dtype(const TrainingSetup& s) {
  if (s.adapter.dtype) return *s.adapter.dtype;
  return s.profile == Profile::pytorch ? DType::fp32 : DType::bf16;
}

std::optional<Error> check_adapter(const TrainingSetup& setup, const std::string& origin) {
  const AdapterSetup& a = setup.adapter;
  auto refuse = [&](std::string_view field, std::string_view value, std::string_view why) {
    return make_error(ErrorKind::invalid, "{}: field 'adapter.{}': {}: {}", origin, field, value, why);
  };
  if (!a.lora()) {
    if (a.quantized()) {
      return refuse("base", to_string(a.base),
                    "quantized base weights cannot be trained; give an adapter (kind lora, --adapter lora) or base "
                    "bf16");
    }
    return std::nullopt;
  }
  if (a.rank < 1) return refuse("rank", std::to_string(a.rank), "the adapter's rank is 1 or more");
  if (a.dtype && *a.dtype != DType::bf16 && *a.dtype != DType::fp32) {
    return refuse("dtype", to_string(*a.dtype), "adapters are bf16 or fp32");
  }
  if (a.dtype == DType::fp32 && setup.profile == Profile::native) {
    return refuse("dtype", "fp32", "the native runtime's adapters are bf16, as its activations are; give bf16 (or the "
                                   "pytorch profile, where PEFT upcasts adapters to fp32)");
  }
  if (a.dropout < 0 || a.dropout >= 1) {
    return refuse("dropout", fmt::format("{}", a.dropout), "a probability in [0, 1)");
  }
  if (a.dropout > 0 && setup.profile == Profile::native) {
    return refuse("dropout", fmt::format("{}", a.dropout),
                  "the native runtime's LoRA has no dropout; give 0 (Unsloth's default) or the pytorch profile");
  }
  if (setup.precision != Precision::bf16) {
    return make_error(ErrorKind::invalid,
                      "{}: field 'precision': {} with a LoRA adapter is not modelled: the frozen base is bf16 (or "
                      "quantized) and the adapters' own dtype is adapter.dtype; give precision bf16",
                      origin, to_string(setup.precision));
  }
  if (setup.optimizer == OptimizerKind::none) {
    return make_error(ErrorKind::invalid,
                      "{}: field 'optimizer': none trains nothing, but a LoRA adapter trains its A and B; give adamw, "
                      "adamw-8bit or sgd",
                      origin);
  }
  if (setup.offload_optimizer || setup.offload_param) {
    return make_error(ErrorKind::invalid,
                      "{}: field '{}': offloading with a LoRA adapter is not modelled (the adapters' state is small); "
                      "drop it",
                      origin, setup.offload_param ? "offload_param" : "offload_optimizer");
  }
  if (a.quantized() && setup.parallel.shards_weights()) {
    return refuse("base", to_string(a.base),
                  "ZeRO-3 / FSDP over quantized weights (FSDP-QLoRA) is not modelled; give zero 0, 1 or 2, or base "
                  "bf16");
  }
  return std::nullopt;
}

ParameterStorage base_storage(const TrainingSetup& s) {
  if (!s.adapter.lora()) return parameter_storage(s);
  return ParameterStorage{};  // frozen bf16 weights (the decoder linears' format is base_weight_bytes')
}

ParameterStorage parameter_storage(const TrainingSetup& s) {
  if (s.adapter.lora()) {
    // The adapters: their dtype for weights, gradients and AdamW's moments (torch's AdamW keeps
    // its state in the parameter's dtype); no master copy.
    ParameterStorage p;
    p.weights = adapter_dtype(s);
    p.gradients = p.weights;
    if (s.optimizer == OptimizerKind::adamw) p.adam_state = p.weights;
    if (s.optimizer == OptimizerKind::adamw_8bit) p.adam_state = DType::int8;
    return p;
  }
  const bool mixed = s.precision == Precision::mixed;
  const bool trained = s.optimizer != OptimizerKind::none;
  ParameterStorage p;
  p.autocast = mixed && s.profile == Profile::pytorch;
  const bool fp32 = s.precision == Precision::fp32;
  p.weights = p.autocast || fp32 ? DType::fp32 : DType::bf16;
  if (mixed && trained && !p.autocast) p.master = DType::fp32;
  if (trained) p.gradients = mixed || fp32 ? DType::fp32 : DType::bf16;
  if (s.optimizer == OptimizerKind::adamw) p.adam_state = mixed || fp32 ? DType::fp32 : DType::bf16;
  if (s.optimizer == OptimizerKind::adamw_8bit) p.adam_state = DType::int8;
  if (s.offload_optimizer && trained) {
    // DeepSpeed's CPU Adam keeps fp32 master weights and fp32 m and v, whatever the device holds.
    p.host_optimizer = true;
    p.master = DType::fp32;
    if (s.optimizer == OptimizerKind::adamw) p.adam_state = DType::fp32;
    p.host_weights = s.offload_param;
  }
  return p;
}

std::string describe_setup(const TrainingSetup& s) {
  const ParameterStorage p = parameter_storage(s);
  std::string weights = p.autocast                       ? "fp32 weights under bf16 autocast"
                        : p.master                           ? "bf16 compute with fp32 master weights"
                        : s.precision == Precision::fp32 ? "fp32 weights and activations"
                                                             : "bf16 weights";
  std::string optimizer;
  switch (s.optimizer) {
    case OptimizerKind::adamw: optimizer = fmt::format("AdamW state {}", to_string(*p.adam_state)); break;
    case OptimizerKind::adamw_8bit: optimizer = "AdamW state 8-bit"; break;
    case OptimizerKind::sgd: optimizer = "SGD (no state)"; break;
    case OptimizerKind::none: optimizer = "frozen weights (no optimizer)"; break;
  }
  if (s.adapter.lora()) {
    const AdapterSetup& a = s.adapter;
    static constexpr std::array<std::string_view, 4> bases = {
        "frozen bf16 base", "frozen LLM.int8 base (bitsandbytes)", "frozen NF4 base (bitsandbytes", "frozen FP4 base (bitsandbytes"};
    std::string base(bases[static_cast<std::size_t>(a.base)]);
    if (a.base == BaseFormat::nf4 || a.base == BaseFormat::fp4) base += a.double_quant ? ", double quantization)" : ")";
    weights = fmt::format("{} + LoRA r {} (alpha {}) on {} in {}{}", base, a.rank, a.alpha,
                          fmt::join(lora_target_names(a.targets), ","),
                          to_string(p.weights), a.dropout > 0 ? fmt::format(", dropout {}", a.dropout) : std::string());
  }
  std::string out = fmt::format("{}, {}", weights, optimizer);
  if (s.optimizer != OptimizerKind::none) {
    out += s.optimizer_in_backward ? ", optimizer in backward" : ", optimizer after backward";
  }
  if (s.offload_optimizer) out += ", optimizer offloaded to the host (fp32 master, m, v; CPU Adam)";
  if (s.offload_param) out += ", weights offloaded to the host (uploaded block by block)";
  if (s.grad_accum > 1) out += fmt::format(", {} micro-batches accumulated", s.grad_accum);
  if (s.parallel.gpus > 1) {
    const std::string stage = s.parallel.zero == ZeroStage::none ? std::string(" (DDP)")
                                                                 : fmt::format(" with ZeRO-{}", to_string(s.parallel.zero));
    if (s.parallel.sp > 1) {
      out += fmt::format(", {} GPUs{}, Ulysses sequence parallelism over {} (each sequence split in {})", s.parallel.gpus,
                         stage, s.parallel.sp, s.parallel.sp);
    } else if (s.parallel.cp > 1) {
      out += fmt::format(", {} GPUs{}, context parallelism over {} (each sequence split in {}, keys and values "
                         "all-gathered)",
                         s.parallel.gpus, stage, s.parallel.cp, s.parallel.cp);
    } else {
      out += fmt::format(", {} data-parallel GPUs{}", s.parallel.gpus, stage);
    }
  }
  out += fmt::format(", batch {}, {} attention, profile {}", s.batch, to_string(s.attention), to_string(s.profile));
  if (s.profile == Profile::pytorch) {
    if (s.framework != Framework::transformers_5) out += fmt::format(", {}", to_string(s.framework));
    if (s.hold_outputs) out += ", outputs held through backward";
    if (!s.zero_grad_set_to_none) out += ", gradients zeroed in place";
    if (s.expandable_segments) out += ", expandable segments";
  }
  return out;
}

}  // namespace mstplan
