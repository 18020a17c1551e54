#include "planner/static_memory.h"

#include <algorithm>

#include <array>

#include <fmt/format.h>

#include "planner/dtype.h"

namespace mstplan {
namespace {

constexpr std::int64_t kAdam8bitBlock = 256;        // bitsandbytes block-wise quantisation
constexpr std::int64_t kAdam8bitMinElements = 4096;  // bitsandbytes min_8bit_size
constexpr std::int64_t kQuant4bitBlock = 64;        // bitsandbytes Params4bit's blocksize
constexpr std::int64_t kNestedBlock = 256;          // double quantization's second-level blocks

}  // namespace

std::int64_t adam_moment_bytes(std::int64_t numel, DType state) {
  if (state != DType::int8) return numel * dtype_bytes(state);
  if (numel < kAdam8bitMinElements) return numel * dtype_bytes(DType::fp32);
  const std::int64_t blocks = (numel + kAdam8bitBlock - 1) / kAdam8bitBlock;
  return numel * dtype_bytes(DType::int8) + blocks * dtype_bytes(DType::fp32);
}

std::int64_t base_weight_bytes(const ParamTensor& p, const AdapterSetup& adapter) {
  const std::int64_t n = p.numel();
  if (!is_layer_linear(p) || adapter.base == BaseFormat::bf16) return n * dtype_bytes(DType::bf16);
  if (adapter.base == BaseFormat::int8) return n + p.rows * dtype_bytes(DType::fp32);
  const std::int64_t blocks = (n + kQuant4bitBlock - 1) / kQuant4bitBlock;
  const std::int64_t packed = (n + 1) / 2;
  if (!adapter.double_quant) return packed + blocks * dtype_bytes(DType::fp32);
  const std::int64_t nested = (blocks + kNestedBlock - 1) / kNestedBlock;
  return packed + blocks + nested * dtype_bytes(DType::fp32) + dtype_bytes(DType::fp32);
}

std::vector<ParamTensor> adapter_parameters(const ModelSpec& model, const AdapterSetup& adapter) {
  std::vector<ParamTensor> out;
  if (!adapter.lora()) return out;
  const std::int64_t d = model.hidden_size, q = model.num_heads * model.head_dim;
  const std::int64_t kv = model.num_kv_heads * model.head_dim, inter = model.intermediate_size;
  struct Linear {
    LoraTarget target;
    const char* name;
    std::int64_t out, in;
  };
  const std::array<Linear, 7> linears = {{{LoraTarget::q, "attn.q", q, d},
                                          {LoraTarget::k, "attn.k", kv, d},
                                          {LoraTarget::v, "attn.v", kv, d},
                                          {LoraTarget::o, "attn.o", d, q},
                                          {LoraTarget::gate, "mlp.gate", inter, d},
                                          {LoraTarget::up, "mlp.up", inter, d},
                                          {LoraTarget::down, "mlp.down", d, inter}}};
  for (std::int64_t l = 0; l < model.num_layers; ++l) {
    for (const Linear& lin : linears) {
      if (!adapter.adapts(lin.target)) continue;
      out.push_back({fmt::format("layer.{}.{}.lora_A", l, lin.name), l, adapter.rank, lin.in});
      out.push_back({fmt::format("layer.{}.{}.lora_B", l, lin.name), l, lin.out, adapter.rank});
    }
  }
  return out;
}

StaticMemory static_memory(const ModelSpec& model, const TrainingSetup& setup) {
  StaticMemory m;
  const ParameterStorage trained = parameter_storage(setup);
  m.persistent_gradients = trained.gradients && persistent_gradients(setup);
  const Parallelism& par = setup.parallel;
  const bool lora = setup.adapter.lora();
  std::vector<ParamTensor> params = parameters(model);
  const std::size_t base_count = params.size();
  for (ParamTensor& p : adapter_parameters(model, setup.adapter)) params.push_back(std::move(p));
  for (std::size_t i = 0; i < params.size(); ++i) {
    const ParamTensor& p = params[i];
    const bool base = i < base_count;
    const ParameterStorage storage = base ? base_storage(setup) : trained;
    const std::int64_t n = p.numel();
    const std::int64_t shard = par.shard_numel(n);
    const std::int64_t weight_bytes = lora && base && !par.shards_weights()
                                          ? base_weight_bytes(p, setup.adapter)
                                          : (par.shards_weights() ? shard : n) * dtype_bytes(storage.weights);
    (storage.host_weights ? m.host_bytes : m.weights_bytes) += weight_bytes;
    if (!base) {
      m.adapter_weights_bytes += weight_bytes;
      m.adapter_parameters += n;
    }
    const std::int64_t kept = par.shards_optimizer() ? shard : n;  // of the optimizer's state
    if (storage.host_optimizer) {
      m.host_bytes += kept * (dtype_bytes(*storage.master) + dtype_bytes(*storage.gradients)) +
                      2 * adam_moment_bytes(kept, *storage.adam_state);
      if (n * dtype_bytes(*storage.gradients) > m.largest_gradient_bytes) {
        m.largest_gradient_bytes = n * dtype_bytes(*storage.gradients);
        m.largest_gradient_name = p.name;
      }
      continue;
    }
    if (storage.master) m.master_weights_bytes += kept * dtype_bytes(*storage.master);
    if (!storage.gradients) continue;
    const std::int64_t grad_bytes = n * dtype_bytes(*storage.gradients);
    if (m.persistent_gradients) m.gradient_bytes += (par.shards_gradients() ? shard : n) * dtype_bytes(*storage.gradients);
    if (grad_bytes > m.largest_gradient_bytes) {
      m.largest_gradient_bytes = grad_bytes;
      m.largest_gradient_name = p.name;
    }
    if (storage.adam_state) {
      m.optimizer_state_bytes += 2 * adam_moment_bytes(par.shards_optimizer() ? shard : n, *storage.adam_state);
    }
    // DDP's buckets (pytorch profile, gradient_as_bucket_view=False, its default): a flat copy of
    // every gradient that the all-reduce runs on, alive for the whole training.
    if (setup.profile == Profile::pytorch && par.gpus > 1 && par.zero == ZeroStage::none) {
      m.communication_bytes += grad_bytes;
    }
  }
  return m;
}

std::vector<SetupChange> static_fixes(const ModelSpec& model, const GpuSpec& gpu, const TrainingSetup& setup) {
  if (static_memory(model, setup).total_bytes() <= gpu.usable_bytes()) return {};
  // Changes that keep the training task (frozen weights would change it), each with a cost:
  // how much it alters the training (1: storage or timing only; 2: effective batch or a lossier
  // optimizer state; 4: a different optimizer).
  struct Change {
    std::string flags;
    bool applies;
    int cost;
    bool changes_optimizer;
    void (*apply)(TrainingSetup&);
  };
  const bool adam = setup.optimizer == OptimizerKind::adamw;
  const bool trained = setup.optimizer != OptimizerKind::none;
  const std::vector<Change> changes = {
      {"--zero 3", setup.parallel.gpus > 1 && setup.parallel.zero != ZeroStage::parameters, 1, false,
       [](TrainingSetup& s) { s.parallel.zero = ZeroStage::parameters; }},
      {"--precision bf16", setup.precision != Precision::bf16 && trained, 1, false,
       [](TrainingSetup& s) { s.precision = Precision::bf16; }},
      {"--optimizer-in-backward", !setup.optimizer_in_backward && trained, 1, false,
       [](TrainingSetup& s) { s.optimizer_in_backward = true; }},
      {"--grad-accum 1", setup.grad_accum > 1 && trained, 2, false, [](TrainingSetup& s) { s.grad_accum = 1; }},
      {"--optimizer adamw-8bit", adam, 2, true, [](TrainingSetup& s) { s.optimizer = OptimizerKind::adamw_8bit; }},
      {"--optimizer sgd", adam || setup.optimizer == OptimizerKind::adamw_8bit, 4, true,
       [](TrainingSetup& s) { s.optimizer = OptimizerKind::sgd; }},
  };
  struct Candidate {
    SetupChange change;
    int cost;
  };
  std::vector<Candidate> fits;
  std::vector<bool> fits_alone(changes.size(), false);
  auto bytes_with = [&](std::initializer_list<std::size_t> picked) {
    TrainingSetup changed = setup;
    for (std::size_t i : picked) changes[i].apply(changed);
    return static_memory(model, changed).total_bytes();
  };
  for (std::size_t i = 0; i < changes.size(); ++i) {
    if (!changes[i].applies) continue;
    const std::int64_t bytes = bytes_with({i});
    if (bytes > gpu.usable_bytes()) continue;
    fits_alone[i] = true;
    fits.push_back({SetupChange{changes[i].flags, bytes}, changes[i].cost});
  }
  // Pairs, unless one of the two already fits alone (then the pair only adds a change).
  for (std::size_t i = 0; i < changes.size(); ++i) {
    for (std::size_t j = i + 1; j < changes.size(); ++j) {
      if (!changes[i].applies || !changes[j].applies || fits_alone[i] || fits_alone[j]) continue;
      if (changes[i].changes_optimizer && changes[j].changes_optimizer) continue;
      const std::int64_t bytes = bytes_with({i, j});
      if (bytes > gpu.usable_bytes()) continue;
      fits.push_back({SetupChange{changes[i].flags + " " + changes[j].flags, bytes}, changes[i].cost + changes[j].cost});
    }
  }
  std::stable_sort(fits.begin(), fits.end(), [](const Candidate& a, const Candidate& b) {
    return a.cost != b.cost ? a.cost < b.cost : a.change.static_bytes < b.change.static_bytes;
  });
  std::vector<SetupChange> out;
  for (Candidate& c : fits) out.push_back(std::move(c.change));
  return out;
}

}  // namespace mstplan
