#include "planner/static_memory.h"

#include <algorithm>

#include "planner/dtype.h"

namespace mstplan {
namespace {

constexpr std::int64_t kAdam8bitBlock = 256;        // bitsandbytes block-wise quantisation
constexpr std::int64_t kAdam8bitMinElements = 4096;  // bitsandbytes min_8bit_size

}  // namespace

std::int64_t adam_moment_bytes(std::int64_t numel, DType state) {
  if (state != DType::int8) return numel * dtype_bytes(state);
  if (numel < kAdam8bitMinElements) return numel * dtype_bytes(DType::fp32);
  const std::int64_t blocks = (numel + kAdam8bitBlock - 1) / kAdam8bitBlock;
  return numel * dtype_bytes(DType::int8) + blocks * dtype_bytes(DType::fp32);
}

StaticMemory static_memory(const ModelSpec& model, const TrainingSetup& setup) {
  const ParameterStorage storage = parameter_storage(setup);
  StaticMemory m;
  m.persistent_gradients = storage.gradients && persistent_gradients(setup);
  const Parallelism& par = setup.parallel;
  for (const ParamTensor& p : parameters(model)) {
    const std::int64_t n = p.numel();
    const std::int64_t shard = par.shard_numel(n);
    const std::int64_t weight_bytes = (par.shards_weights() ? shard : n) * dtype_bytes(storage.weights);
    (storage.host_weights ? m.host_bytes : m.weights_bytes) += weight_bytes;
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
