#include "cli/plan_output.h"

#include <ostream>

#include <fmt/format.h>
#include <fmt/ostream.h>

#include "planner/json_output.h"
#include "planner/static_memory.h"
#include "planner/units.h"

namespace mstplan::cli {

namespace {

std::string model_summary(const ModelSpec& m) {
  std::string shape = fmt::format("{} family, {} layers, hidden {}, MLP {} ({}), {} heads / {} KV heads x {}, vocabulary {}",
                                  to_string(m.family), m.num_layers, m.hidden_size, m.intermediate_size,
                                  m.mlp_activation == MlpActivation::swiglu ? "SwiGLU" : "GeGLU", m.num_heads,
                                  m.num_kv_heads, m.head_dim, m.vocab_size);
  if (m.tied_embeddings) shape += ", tied embeddings";
  if (m.qkv_bias) shape += ", q/k/v bias";
  if (m.sliding_window) {
    shape += fmt::format(", window {} ({} layers)", m.sliding_window->size,
                         m.sliding_window->layers == SlidingLayers::all ? "all" : "even");
  }
  if (m.final_logit_softcap) shape += fmt::format(", logits soft-capped at {}", *m.final_logit_softcap);
  return shape;
}

}  // namespace

bool print_static(std::ostream& out, const ModelSpec& model, const GpuSpec& gpu, const TrainingSetup& setup) {
  const ParameterCounts counts = count_parameters(model);
  const StaticMemory m = static_memory(model, setup);
  fmt::print(out, "{} ({} parameters) on {} ({} GiB as CUDA reports it, {} GiB reserved for context/workspace)\n",
             model.name, format_count(counts.total), gpu.name, format_gib(gpu.capacity_bytes),
             format_gib(gpu.reserve_bytes));
  fmt::print(out, "setup: {}\n", describe_setup(setup));
  fmt::print(out, "sequence: {}\n\n",
             setup.seq_len ? fmt::format("{} tokens", *setup.seq_len) : std::string("search for the maximum"));

  fmt::print(out, "model       {}\n", model_summary(model));
  fmt::print(out, "parameters  {} = embedding {} + attention {} + MLP {} + norms {}{}\n\n",
             format_thousands(counts.total), format_thousands(counts.embedding), format_thousands(counts.attention),
             format_thousands(counts.mlp), format_thousands(counts.norms),
             counts.lm_head > 0 ? fmt::format(" + LM head {}", format_thousands(counts.lm_head)) : " (LM head tied)");

  const ParameterStorage storage = parameter_storage(setup);
  const Parallelism& par = setup.parallel;
  fmt::print(out, "static memory{} (independent of the sequence length)\n",
             par.gpus > 1 ? fmt::format(" per rank, of {} GPUs", par.gpus) : std::string());
  auto row = [&](std::string_view what, std::int64_t bytes, const std::string& note) {
    fmt::print(out, "  {:<17} {:>9} GiB   {}\n", what, format_gib(bytes), note);
  };
  // ", a 1/8 shard (ZeRO-3)" after what a sharded row holds.
  auto sharded = [&](bool is_sharded) {
    return is_sharded ? fmt::format(", a 1/{} shard (ZeRO-{})", par.gpus, to_string(par.zero)) : std::string();
  };
  const AdapterSetup& adapter = setup.adapter;
  const std::string base_note =
      !adapter.lora()                  ? std::string()
      : adapter.base == BaseFormat::bf16 ? std::string("frozen bf16 base")
                                       : fmt::format("frozen base, the layers' linears in {}{} (the embedding, LM head "
                                                     "and norms bf16)",
                                                     to_string(adapter.base),
                                                     adapter.base == BaseFormat::int8 ? " with fp32 row scales"
                                                     : adapter.double_quant           ? " with double-quantized block scales"
                                                                                      : " with fp32 block scales");
  const std::string weights_note =
      adapter.lora() ? fmt::format("{}; LoRA adapters {} GiB in {} ({} parameters, the trained ones)", base_note,
                                   format_gib(m.adapter_weights_bytes), to_string(storage.weights),
                                   format_thousands(m.adapter_parameters))
      : storage.autocast ? std::string("fp32 parameters (autocast makes bf16 copies per op)")
                         : std::string(to_string(storage.weights));
  row("weights", m.weights_bytes,
      weights_note +
          sharded(par.shards_weights()) +
          (storage.host_weights ? "; in host memory, each layer's uploaded before use"
           : par.shards_weights() ? "; each layer's are all-gathered before use"
                                  : ""));
  if (storage.host_optimizer) {
    row("host (offloaded)", m.host_bytes,
        fmt::format("fp32 master weights, AdamW m and v in fp32{} and a {} copy of the gradients{}, in host memory "
                    "(DeepSpeed's CPU Adam; not in the device total)",
                    storage.host_weights ? fmt::format(", the {} weights", to_string(storage.weights)) : std::string(),
                    to_string(*storage.gradients), sharded(par.shards_optimizer())));
  } else if (storage.master) {
    row("master weights", m.master_weights_bytes, std::string(to_string(*storage.master)) + sharded(par.shards_optimizer()));
  }
  std::string state_note;
  switch (setup.optimizer) {
    case OptimizerKind::adamw: state_note = fmt::format("AdamW m and v in {}", to_string(*storage.adam_state)); break;
    case OptimizerKind::adamw_8bit: state_note = "AdamW m and v in 8 bits with fp32 scales per 256 elements"; break;
    case OptimizerKind::sgd: state_note = "SGD keeps no state"; break;
    case OptimizerKind::none: state_note = "frozen weights"; break;
  }
  if (setup.optimizer == OptimizerKind::adamw || setup.optimizer == OptimizerKind::adamw_8bit) {
    state_note += sharded(par.shards_optimizer());
  }
  if (!storage.host_optimizer) row("optimizer state", m.optimizer_state_bytes, state_note);
  if (setup.optimizer == OptimizerKind::none) {
    row("gradients", 0, "none: weights are frozen");
  } else if (m.persistent_gradients) {
    row("gradients", m.gradient_bytes,
        fmt::format("{}, kept {}{}", to_string(*storage.gradients),
                    setup.grad_accum > 1 ? fmt::format("across {} micro-batches", setup.grad_accum)
                                         : std::string("until the optimizer step"),
                    sharded(par.shards_gradients())));
  } else if (storage.host_optimizer) {
    row("gradients", 0, "none kept on the device: each is copied to the host once reduced");
  } else if (!setup.optimizer_in_backward) {
    row("gradients", 0,
        fmt::format("none kept across steps: each allocated by backward, freed after the optimizer step "
                    "(zero_grad(set_to_none=True)); the step program counts them there"));
  } else {
    row("gradients", 0,
        fmt::format("none kept: each applied in backward (the largest, {}, is {} GiB while it lives)",
                    m.largest_gradient_name, format_gib(m.largest_gradient_bytes)));
  }
  if (m.communication_bytes > 0) {
    row("DDP buckets", m.communication_bytes, "a flat copy of every gradient for the all-reduce (gradient_as_bucket_view=False)");
  }
  const std::int64_t left = gpu.usable_bytes() - m.total_bytes();
  if (left >= 0) {
    row("total", m.total_bytes(),
        fmt::format("of {} GiB usable: {} GiB left for activations and transients", format_gib(gpu.usable_bytes()),
                    format_gib(left)));
    return true;
  }
  row("total", m.total_bytes(), fmt::format("of {} GiB usable", format_gib(gpu.usable_bytes())));
  fmt::print(out, "\ndoes not fit: the static state alone is {} GiB over the usable {} GiB\n", format_gib(-left),
             format_gib(gpu.usable_bytes()));
  const auto fixes = static_fixes(model, gpu, setup);
  if (fixes.empty()) {
    fmt::print(out, "no change of precision or optimizer makes it fit on one {}; a larger GPU or sharding "
                    "(--gpus N --zero 3) is needed\n", gpu.name);
  }
  for (const SetupChange& fix : fixes) {
    fmt::print(out, "would fit with {}: static {} GiB, {} GiB left\n", fix.flags, format_gib(fix.static_bytes),
               format_gib(gpu.usable_bytes() - fix.static_bytes));
  }
  return false;
}


namespace {

std::string gib(std::int64_t bytes) { return format_gib(bytes); }

// "49.1 GiB": breakdown of the device bytes at the peak by kind, skipping empty kinds.
std::string breakdown(const MemoryState& m) {
  std::string out;
  for (std::size_t k = 0; k < kTensorKinds; ++k) {
    if (gib(m.by_kind[k]) == "0.00") continue;
    out += fmt::format("{}{} {}", out.empty() ? "" : " | ", to_string(static_cast<TensorKind>(k)), gib(m.by_kind[k]));
  }
  return out + " GiB";
}

std::string tokens_per_s(double value) { return value > 0 ? format_thousands(static_cast<std::int64_t>(value + 0.5)) : "-"; }

}  // namespace

void print_search(std::ostream& out, const ModelSpec& model, const GpuSpec& gpu, const TrainingSetup& setup,
                  const SearchResult& result, Method chosen_method, const Evaluation* chosen,
                  const std::string& plan_path) {
  const std::optional<std::int64_t> request = setup.seq_len;
  // The pytorch profile decides on the simulated caching allocator: its reserved bytes are shown too.
  const bool pool = setup.profile == Profile::pytorch;
  fmt::print(out, "\nlongest sequence per method (multiples of 64 tokens; peak = device bytes the step allocates, "
                  "of {} GiB usable{})\n", gib(gpu.usable_bytes()),
             pool ? "; reserved = what PyTorch's caching allocator holds then, which decides" : "");
  const std::string reserved_header = pool ? fmt::format(" {:>9}", "reserved") : "";
  if (request) {
    fmt::print(out, "{:<13} {:>10} {:>9}{}  {:<36} {:>9}   {:>6} {:>9} {:>9}\n", "method", "max length", "peak GiB",
               reserved_header, "peak at", "tokens/s", fmt::format("at {}", format_thousands(*request)), "peak GiB",
               "tokens/s");
  } else {
    fmt::print(out, "{:<13} {:>10} {:>9}{}  {:<36} {:>9}\n", "method", "max length", "peak GiB", reserved_header,
               "peak at", "tokens/s");
  }
  for (const MethodResult& m : result.methods) {
    std::string row;
    if (m.at_max) {
      const Evaluation& e = *m.at_max;
      const std::string reserved =
          pool ? fmt::format(" {:>9}", e.pool ? gib(e.pool->peak_reserved_bytes) : std::string("-")) : "";
      row = fmt::format("{:<13} {:>10} {:>9}{}  {:<36} {:>9}", to_string(m.method), format_thousands(e.seq_len),
                        gib(e.analysis.peak.allocated_bytes), reserved, e.peak_at, tokens_per_s(e.time.tokens_per_s));
    } else {
      row = fmt::format("{:<13} {:>10} {:>9}{}  {:<36} {:>9}", to_string(m.method), "none fits", "-",
                        pool ? fmt::format(" {:>9}", "-") : "", "-", "-");
    }
    if (request) {
      if (m.at_request) {
        const Evaluation& r = *m.at_request;
        row += fmt::format("   {:>6} {:>9} {:>9}", r.fits ? "fits" : "no", gib(r.analysis.peak.allocated_bytes),
                           r.fits ? tokens_per_s(r.time.tokens_per_s) : "-");
      } else {
        row += fmt::format("   {:>6} {:>9} {:>9}", "no", "-", "-");
      }
    }
    fmt::print(out, "{}\n", row);
  }
  if (!chosen) {
    if (request) {
      fmt::print(out, "\nno plan of {} fits {} tokens on {}\n", to_string(chosen_method), format_thousands(*request),
                 gpu.name);
    }
    return;
  }
  const Evaluation& c = *chosen;
  fmt::print(out, "\n{} plan at {} tokens: {}\n", to_string(chosen_method), format_thousands(c.seq_len),
             describe_plan(c.plan, model, c.positions));
  fmt::print(out, "  peak {} GiB (+ {} GiB reserve = {} GiB of {} GiB) during {} ({})\n",
             gib(c.analysis.peak.allocated_bytes), gib(gpu.reserve_bytes), gib(c.required_bytes),
             gib(gpu.capacity_bytes), c.peak_at, to_string(c.peak_phase));
  fmt::print(out, "  at the peak: {}\n", breakdown(c.analysis.peak));
  if (c.pool) {
    const CachingAllocatorResult& a = *c.pool;
    const std::int64_t fragmentation = a.reserved_at_peak_allocated_bytes - a.peak_allocated_bytes;
    fmt::print(out,
               "  PyTorch's caching allocator (simulated, {}): {} GiB allocated at most in whole blocks, {} GiB reserved "
               "then ({} GiB, {:.1f}%, fragmentation), {} GiB at most{}\n",
               setup.expandable_segments ? "expandable segments" : "default segments", gib(a.peak_allocated_bytes),
               gib(a.reserved_at_peak_allocated_bytes), gib(fragmentation),
               a.peak_allocated_bytes > 0 ? 100.0 * static_cast<double>(fragmentation) / static_cast<double>(a.peak_allocated_bytes) : 0.0,
               gib(a.peak_reserved_bytes),
               a.cache_flushes == 1   ? std::string("; its cache was emptied once to make room")
               : a.cache_flushes > 1 ? fmt::format("; its cache was emptied {} times to make room", a.cache_flushes)
                                     : std::string());
  }
  if (c.analysis.host_peak_bytes > 0) {
    const bool several = setup.parallel.gpus > 1;
    fmt::print(out, "  host memory: {} GiB at most{} (offloaded checkpoints{}){}\n", gib(c.analysis.host_peak_bytes),
               several ? " per rank" : "", parameter_storage(setup).host_optimizer ? " and optimizer" : "",
               several ? fmt::format(", {} GiB for the ranks of a node", gib(c.host_node_bytes)) : std::string());
  }
  const double mfu = c.time.step_seconds > 0 ? c.time.model_flops / c.time.step_seconds / (gpu.bf16_tflops * 1e12) : 0.0;
  const std::string step = c.time.step_seconds >= 100 ? format_thousands(static_cast<std::int64_t>(c.time.step_seconds + 0.5))
                                                       : fmt::format("{:.2f}", c.time.step_seconds);
  const std::int64_t gpus = setup.parallel.gpus;
  fmt::print(out, "  estimated {} tokens/s{} (step {} s, model FLOPs at {:.0f}% of the bf16 peak{})\n",
             tokens_per_s(c.time.tokens_per_s), gpus > 1 ? fmt::format(" over {} GPUs", gpus) : std::string(), step,
             100.0 * mfu, gpus > 1 ? " per GPU" : "");
  if (gpus > 1) {
    fmt::print(out, "  collectives: {:.3f} s per step on the communication stream, {:.3f} s of it not hidden behind "
                    "compute\n",
               c.time.comm_seconds, c.time.exposed_comm_seconds);
  }
  if (chosen_method == Method::automatic && !request && result.pareto.size() > 1) {
    fmt::print(out, "\nauto's trade-offs (longest sequence against speed, none better on both):\n");
    for (const Evaluation& e : result.pareto) {
      fmt::print(out, "  {:>11} tokens {:>9} tokens/s  {}\n", format_thousands(e.seq_len), tokens_per_s(e.time.tokens_per_s),
                 describe_plan(e.plan, model, e.positions));
    }
  }
  if (plan_path.empty()) {
    fmt::print(out, "\nwrite it with --out plan.yaml; check it with `mst-plan show plan.yaml`\n");
  } else {
    fmt::print(out, "\nplan file: {} (check it with `mst-plan show {}`, run it with `mst-plan run {}`)\n", plan_path,
               plan_path, plan_path);
  }
}

void print_layouts(std::ostream& out, const ModelSpec& model, const TrainingSetup& setup,
                   const std::vector<LayoutResult>& layouts) {
  if (layouts.empty()) return;
  const std::optional<std::int64_t> request = setup.seq_len;
  fmt::print(out,
             "\nlayouts on {} GPUs (auto's longest sequence under each ZeRO stage, Ulysses degree (sp) and "
             "context-parallel degree (cp); --zero, --sp and --cp pick one)\n",
             setup.parallel.gpus);
  fmt::print(out, "  {:<4} {:>4} {:>4} {:>16} {:>11} {:>9} {:>9}{}\n", "zero", "sp", "cp", "static GiB/rank", "max length", "peak GiB",
             "tokens/s",
             request ? fmt::format("   {:>9} {:>9}", fmt::format("at {}", format_thousands(*request)), "tokens/s") : "");
  for (const LayoutResult& l : layouts) {
    const bool this_setup = l.zero == setup.parallel.zero && l.sp == setup.parallel.sp && l.cp == setup.parallel.cp;
    const std::string mark = this_setup ? "  (this setup)" : "";
    std::string row;
    if (l.longest) {
      row = fmt::format("  {:<4} {:>4} {:>4} {:>16} {:>11} {:>9} {:>9}", to_string(l.zero), l.sp, l.cp, gib(l.static_bytes),
                        format_thousands(l.longest->seq_len), gib(l.longest->analysis.peak.allocated_bytes),
                        tokens_per_s(l.longest->time.tokens_per_s));
    } else {
      row = fmt::format("  {:<4} {:>4} {:>4} {:>16} {:>11} {:>9} {:>9}", to_string(l.zero), l.sp, l.cp, gib(l.static_bytes),
                        "none fits", "-", "-");
    }
    if (request) {
      row += l.at_request ? fmt::format("   {:>9} {:>9}", "fits", tokens_per_s(l.at_request->time.tokens_per_s))
                          : fmt::format("   {:>9} {:>9}", "no", "-");
    }
    fmt::print(out, "{}{}\n", row, mark);
  }
  const std::vector<LayoutPoint> front = layouts_pareto(layouts);
  if (front.size() < 2) return;
  fmt::print(out, "\ntrade-offs over the layouts (longest sequence against speed, none better on both):\n");
  for (const LayoutPoint& p : front) {
    fmt::print(out, "  {:>13} tokens {:>12} tokens/s  ZeRO-{}{}: {}\n", format_thousands(p.plan.seq_len),
               tokens_per_s(p.plan.time.tokens_per_s), to_string(p.zero),
               describe_sharing(p.sp, p.cp),
               describe_plan(p.plan.plan, model, p.plan.positions));
  }
}

std::optional<Error> check_recorded_prediction(const std::string& path, const PlanFile& file, const Evaluation& now) {
  const Prediction& was = file.predicted;
  if (now.analysis.peak.allocated_bytes != was.peak_allocated_bytes) {
    return make_error(ErrorKind::invalid,
                      "{}: field 'predicted.peak_allocated_bytes': {}: the step the file describes peaks at {} bytes (the "
                      "file was edited, or written by another version); plan it again",
                      path, was.peak_allocated_bytes, now.analysis.peak.allocated_bytes);
  }
  if (now.analysis.peak_live_bytes != was.peak_live_bytes) {
    return make_error(ErrorKind::invalid,
                      "{}: field 'predicted.peak_live_bytes': {}: the step the file describes holds {} live bytes at its "
                      "peak (the file was edited, or written by another version); plan it again",
                      path, was.peak_live_bytes, now.analysis.peak_live_bytes);
  }
  if (now.peak_at != was.peak_at) {
    return make_error(ErrorKind::invalid,
                      "{}: field 'predicted.peak_at': {}: the step the file describes peaks during {} (the file was "
                      "edited, or written by another version); plan it again",
                      path, was.peak_at, now.peak_at);
  }
  if (!now.fits) {
    return make_error(ErrorKind::invalid,
                      "{}: field 'gpu.capacity_bytes': {}: the step needs {} bytes with the reserve, which it does not "
                      "hold (a plan file is written only for a step that fits: the file was edited); plan it again",
                      path, file.gpu.capacity_bytes, now.required_bytes);
  }
  return std::nullopt;
}

}  // namespace mstplan::cli
