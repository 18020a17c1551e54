#include "runtime/verify.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <map>

#include "planner/analysis.h"
#include "planner/builder.h"
#include "planner/static_memory.h"
#include "planner/units.h"

namespace mstplan {
namespace {

std::vector<MemoryRow> compare(const Program& program, const Analysis& a, const MeasuredMemory& m,
                               std::int64_t host_live_peak_bytes) {
  std::vector<MemoryRow> rows;
  rows.push_back({"device peak allocated", a.peak.allocated_bytes, m.peak_allocated_bytes});
  rows.push_back({"device peak live", a.peak_live_bytes, m.peak_live_bytes});
  rows.push_back({"host peak live", a.host_peak_bytes, host_live_peak_bytes});
  for (std::size_t p = 0; p < kPhases; ++p) {
    rows.push_back({fmt::format("phase {}", to_string(static_cast<Phase>(p))), a.phase_peak_bytes[p],
                    m.phase_peak_bytes[p]});
  }
  // Predicted per layer: the largest op peak among the layer's ops.
  std::map<std::int32_t, std::int64_t> layers;
  for (OpId i = 0; i < program.ops.size(); ++i) {
    auto& v = layers[program.ops[i].layer];
    v = std::max(v, a.op_peak_bytes[i]);
  }
  for (const auto& [layer, predicted] : layers) {
    const auto slot = static_cast<std::size_t>(layer + 1);
    const std::int64_t measured = slot < m.layer_peak_bytes.size() ? m.layer_peak_bytes[slot] : 0;
    rows.push_back({layer == kNone ? std::string("outside layers") : fmt::format("layer {}", layer), predicted, measured});
  }
  if (m.device) {
    const auto tolerance = static_cast<std::int64_t>(kPoolTolerance * static_cast<double>(a.peak.allocated_bytes));
    rows.push_back({"pool used high-water", a.peak.allocated_bytes, m.device->pool_used_high_bytes, tolerance});
    rows.push_back({"pool reserved high-water", a.peak.allocated_bytes, m.device->pool_reserved_high_bytes, tolerance});
  }
  return rows;
}

std::int64_t available_memory_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  std::int64_t value = 0;
  std::string unit;
  while (in >> key >> value >> unit) {
    if (key == "MemAvailable:") return value * 1024;
  }
  return 0;  // unknown
}

}  // namespace

double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  MSTPLAN_CHECK(a.size() == b.size(), "comparing tensors of {} and {} elements", a.size(), b.size());
  double diff = 0, norm = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    diff += d * d;
    norm += static_cast<double>(b[i]) * static_cast<double>(b[i]);
  }
  if (std::isnan(diff)) return std::numeric_limits<double>::infinity();
  return norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
}

std::optional<Error> check_fits_host(const PlanFile& f, const std::string& origin, std::int64_t processes) {
  const Program program = build_program(f.model, f.setup, f.plan, f.seq_len);
  const Analysis a = analyze(program, AllocatorModel::for_profile(Profile::native));
  // A rank's device and host pools, times the ranks on this machine (tiny plans: no overflow).
  const std::int64_t need = (a.peak.allocated_bytes + a.host_peak_bytes) * std::max<std::int64_t>(processes, 1);
  const std::int64_t available = available_memory_bytes();
  if (available > 0 && need > available * 8 / 10) {
    return make_error(ErrorKind::invalid,
                      "{}: the CPU backend would need {} of this machine's memory{} and {} is available (80% may be "
                      "used); run a smaller model or sequence, or this plan on a GPU",
                      origin, format_bytes(need),
                      processes > 1 ? fmt::format(" ({} ranks here)", processes) : std::string(),
                      format_bytes(available));
  }
  return std::nullopt;
}

Expected<RunReport> run_plan(const PlanFile& f, Backend& backend, const RunOptions& options, std::int64_t steps) {
  auto ex = Executor::create(f.model, f.setup, f.plan, f.seq_len, backend, options);
  if (!ex) return ex.error();
  Executor& e = **ex;
  const Analysis a = analyze(e.program(), AllocatorModel::for_profile(Profile::native));
  RunReport r;
  r.backend = std::string(backend.name());
  r.predicted_peak_at = op_name(e.program(), a.peak_op, a.peak_iteration);
  const auto start = std::chrono::steady_clock::now();
  for (std::int64_t s = 0; s < steps; ++s) {
    Expected<StepReport> step = e.step();
    if (!step) return step.error();
    r.losses.push_back(step->loss);
    auto rows = compare(e.program(), a, step->memory, e.allocator().host().peak_live_bytes);
    for (const MemoryRow& row : rows) {
      if (!row.ok()) r.memory_ok = false;
    }
    if (s == 0) {
      r.memory = std::move(rows);
      r.device = step->memory.device;
      r.measured_peak_at = step->memory.peak_at;
    }
  }
  const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
  r.seconds_per_step = steps > 0 ? elapsed.count() / static_cast<double>(steps) : 0;
  return r;
}

Expected<VerifyReport> verify_plan(const PlanFile& f, Backend& backend, const RunOptions& options) {
  if (f.setup.optimizer == OptimizerKind::none) {
    return make_error(ErrorKind::invalid, "field 'optimizer': verify compares gradients, which a setup with optimizer "
                                          "none does not compute; use adamw or sgd");
  }
  VerifyReport v;
  // Every parameter of the step: the model's, then a LoRA adapter's (which alone train).
  std::vector<ParamTensor> specs = parameters(f.model);
  const std::size_t base_count = specs.size();
  for (ParamTensor& p : adapter_parameters(f.model, f.setup.adapter)) specs.push_back(std::move(p));
  const std::size_t n = specs.size();
  std::vector<std::vector<float>> grads(n), ref_grads(n), params(n), ref_params(n);
  // The reference keeps the optimizer on the device: an offloaded plan (CPU Adam, Note
  // [Offloaded optimizer]) is held to the same step without the offload.
  TrainingSetup on_device = f.setup;
  on_device.offload_optimizer = on_device.offload_param = false;
  auto one_step = [&](const TrainingSetup& setup, const Plan& plan, std::vector<std::vector<float>>& g,
                      std::vector<std::vector<float>>& p, RunReport* run) -> Expected<double> {
    auto ex = Executor::create(f.model, setup, plan, f.seq_len, backend, options);
    if (!ex) return ex.error();
    Executor& e = **ex;
    e.on_gradient([&](std::int32_t param, std::span<const float> values) {
      g[static_cast<std::size_t>(param)].assign(values.begin(), values.end());
    });
    const Analysis a = analyze(e.program(), AllocatorModel::for_profile(Profile::native));
    const auto start = std::chrono::steady_clock::now();
    Expected<StepReport> step = e.step();
    if (!step) return step.error();
    if (run != nullptr) {
      const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
      run->backend = std::string(backend.name());
      run->losses = {step->loss};
      run->memory = compare(e.program(), a, step->memory, e.allocator().host().peak_live_bytes);
      run->predicted_peak_at = op_name(e.program(), a.peak_op, a.peak_iteration);
      run->measured_peak_at = step->memory.peak_at;
      run->seconds_per_step = elapsed.count();
      run->device = step->memory.device;
      for (const MemoryRow& row : run->memory) {
        if (!row.ok()) run->memory_ok = false;
      }
    }
    for (std::size_t i = 0; i < n; ++i) p[i] = e.parameter(static_cast<std::int32_t>(i));
    return step->loss;
  };
  Expected<double> loss = one_step(f.setup, f.plan, grads, params, &v.run);
  if (!loss) return loss.error();
  // A rank of a multi-GPU plan (Note [Ranks] in executor.h) is held to one device's plain step
  // over all the rank groups' micro-batches (gpus / (sp x cp) groups, each sharing its sequences
  // with Ulysses or context parallelism), cut to the elements the rank updates.
  const std::int64_t ranks = f.setup.parallel.gpus;
  const int rank = ranks > 1 ? options.communicator->rank() : 0;
  Expected<double> reference = [&] {
    if (ranks == 1) return one_step(on_device, Plan::vanilla(), ref_grads, ref_params, nullptr);
    PlanFile one = f;
    one.setup = on_device;
    one.setup.parallel = Parallelism{};
    one.setup.grad_accum = f.setup.grad_accum * f.setup.parallel.data_parallel();
    RunOptions alone = options;
    alone.communicator = nullptr;
    auto ex = Executor::create(one.model, one.setup, Plan::vanilla(), one.seq_len, backend, alone);
    if (!ex) return Expected<double>(ex.error());
    Executor& e = **ex;
    e.on_gradient([&](std::int32_t param, std::span<const float> values) {
      ref_grads[static_cast<std::size_t>(param)].assign(values.begin(), values.end());
    });
    Expected<StepReport> step = e.step();
    if (!step) return Expected<double>(step.error());
    for (std::size_t i = 0; i < n; ++i) {
      ref_params[i] = e.parameter(static_cast<std::int32_t>(i));
      if (!f.setup.parallel.shards_optimizer()) continue;
      const auto [first, count] = f.setup.parallel.shard_range(static_cast<std::int64_t>(ref_params[i].size()), rank);
      for (auto* values : {&ref_grads[i], &ref_params[i]}) {
        *values = std::vector<float>(values->begin() + first, values->begin() + first + count);
      }
    }
    return Expected<double>(step->loss);
  }();
  if (!reference) return reference.error();
  v.loss = *loss;
  v.reference_loss = *reference;
  v.loss_check = {"loss", std::abs(v.loss - v.reference_loss) / std::max(std::abs(v.reference_loss), 1e-30), 1e-5, true};
  v.loss_check.ok = v.loss_check.error <= v.loss_check.tolerance;

  const ParameterStorage storage = parameter_storage(f.setup);
  const bool bf16_grads = storage.gradients == DType::bf16;
  const std::int64_t local = f.seq_len / f.setup.parallel.sequence_group();  // a rank's positions
  const std::int64_t mlp_chunks = chunk_count(f.plan.mlp, local);
  const std::int64_t lm_chunks = chunk_count(f.plan.lm_head, f.setup.parallel.sequence_group() > 1 ? local : local - 1);
  // A key/value head's gradient in shares: with Ulysses and fewer key/value heads than ranks
  // (Note [Ulysses step]) each of its r = sp / kv repeats gets its own dk and dv; with context
  // parallelism (Note [Context-parallel step]) each of the cp ranks its queries' share. Each
  // share is rounded to the activations' dtype before they are summed, where one device's
  // attention sums over every query in fp32 and rounds once. With bf16 activations that is that
  // many more roundings of dk and dv in every layer, carried into every gradient below it (and,
  // through AdamW, into the parameters).
  const std::int64_t sp = f.setup.parallel.sp, kv = f.model.num_kv_heads;
  const std::int64_t shares = (sp > kv ? sp / kv : 1) * f.setup.parallel.cp;
  const bool repeated_in_bf16 = shares > 1 && f.setup.precision != Precision::fp32;
  const double repeat_tolerance =
      repeated_in_bf16 ? static_cast<double>(shares * f.model.num_layers) * 0x1p-8 : 0.0;
  // CPU Adam: a bf16 gradient's host copy adds each micro-batch's (already rounded) gradient and
  // rounds again, where the device accumulates into it once per micro-batch: G - 1 roundings
  // more. Its fp32 master, m and v (whatever the precision) against bf16 weights updated in place
  // with bf16 state (precision bf16 on the device): the parameters differ by bf16 roundings.
  const bool offloaded = f.setup.offload_optimizer;
  const std::int64_t host_roundings = offloaded ? f.setup.grad_accum - 1 : 0;
  const bool master_differs = storage.master.has_value() != parameter_storage(on_device).master.has_value();
  const std::string lm_head_name = f.model.tied_embeddings ? "embed.weight" : "lm_head.weight";
  for (std::size_t i = 0; i < n; ++i) {
    const std::string& name = specs[i].name;
    // A frozen base weight under LoRA has no gradient in either step, and stays as it was.
    const bool frozen = f.setup.adapter.lora() && i < base_count;
    std::int64_t chunks = 1;
    if (name.find(".mlp.") != std::string::npos) chunks = mlp_chunks;
    if (name == lm_head_name) chunks = lm_chunks;
    // Across ranks, the reference adds N x G micro-batches' bf16 gradients (N x G - 1 roundings)
    // where the ranks add theirs in fp32 and round once: one 2^-8 per micro-batch more.
    const std::int64_t roundings = chunks - 1 + (ranks > 1 ? ranks * f.setup.grad_accum : 0) + host_roundings;
    const double tolerance = 1e-5 + (bf16_grads ? static_cast<double>(roundings) * 0x1p-8 : 0.0) + repeat_tolerance;
    if (!frozen) {
      TensorCheck g{name, relative_error(grads[i], ref_grads[i]), tolerance, true};
      g.ok = g.error <= g.tolerance;
      v.gradients.push_back(g);
    }
    const bool bf16_params = storage.weights == DType::bf16 && !storage.master;
    const double p_tolerance =
        1e-5 + ((bf16_params && (chunks > 1 || ranks > 1)) || repeated_in_bf16 || master_differs ? 0x1p-7 : 0.0);
    TensorCheck p{name, relative_error(params[i], ref_params[i]), p_tolerance, true};
    p.ok = p.error <= p.tolerance;
    v.parameters.push_back(p);
  }
  v.ok = v.run.memory_ok && v.loss_check.ok;
  for (const auto& c : v.gradients) v.ok = v.ok && c.ok;
  for (const auto& c : v.parameters) v.ok = v.ok && c.ok;
  return v;
}

}  // namespace mstplan
