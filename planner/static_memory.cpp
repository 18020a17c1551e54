#include "planner/static_memory.h"

#include "planner/dtype.h"

namespace mstplan {
namespace {

constexpr std::int64_t kAdam8bitBlock = 256;        // bitsandbytes block-wise quantisation
constexpr std::int64_t kAdam8bitMinElements = 4096;  // bitsandbytes min_8bit_size

std::int64_t optimizer_state_bytes(std::int64_t numel, OptimizerKind optimizer, DType state_dtype) {
  switch (optimizer) {
    case OptimizerKind::adamw: return 2 * numel * dtype_bytes(state_dtype);
    case OptimizerKind::adamw_8bit: {
      if (numel < kAdam8bitMinElements) return 2 * numel * dtype_bytes(DType::fp32);
      const std::int64_t blocks = (numel + kAdam8bitBlock - 1) / kAdam8bitBlock;
      return 2 * numel * dtype_bytes(DType::int8) + 2 * blocks * dtype_bytes(DType::fp32);
    }
    case OptimizerKind::sgd:
    case OptimizerKind::none: return 0;
  }
  return 0;
}

}  // namespace

StaticMemory static_memory(const ModelSpec& model, const TrainingSetup& setup) {
  const bool mixed = setup.precision == Precision::mixed;
  const bool trained = setup.optimizer != OptimizerKind::none;
  const bool autocast = mixed && setup.profile == Profile::pytorch;
  const DType weight_dtype = autocast ? DType::fp32 : DType::bf16;
  const bool has_master = mixed && trained && !autocast;
  const DType grad_dtype = mixed ? DType::fp32 : DType::bf16;
  const DType state_dtype = mixed ? DType::fp32 : DType::bf16;

  StaticMemory m;
  m.persistent_gradients = trained && (!setup.optimizer_in_backward || setup.grad_accum > 1);
  for (const ParamTensor& p : parameters(model)) {
    const std::int64_t n = p.numel();
    m.weights_bytes += n * dtype_bytes(weight_dtype);
    if (has_master) m.master_weights_bytes += n * dtype_bytes(DType::fp32);
    if (!trained) continue;
    const std::int64_t grad_bytes = n * dtype_bytes(grad_dtype);
    if (m.persistent_gradients) m.gradient_bytes += grad_bytes;
    if (grad_bytes > m.largest_gradient_bytes) {
      m.largest_gradient_bytes = grad_bytes;
      m.largest_gradient_name = p.name;
    }
    m.optimizer_state_bytes += optimizer_state_bytes(n, setup.optimizer, state_dtype);
  }
  return m;
}

std::vector<SetupChange> static_fixes(const ModelSpec& model, const GpuSpec& gpu, const TrainingSetup& setup) {
  if (static_memory(model, setup).total_bytes() <= gpu.usable_bytes()) return {};
  // Single changes that keep the same training task (frozen weights would change it), in order of
  // preference: the ones that keep the optimizer's maths first.
  struct Step {
    std::string flags;
    bool applies;
    bool changes_optimizer;
    void (*apply)(TrainingSetup&);
  };
  const bool adam = setup.optimizer == OptimizerKind::adamw;
  const std::vector<Step> steps = {
      {"--precision bf16", setup.precision == Precision::mixed, false, [](TrainingSetup& s) { s.precision = Precision::bf16; }},
      {"--optimizer adamw-8bit", adam, true, [](TrainingSetup& s) { s.optimizer = OptimizerKind::adamw_8bit; }},
      {"--optimizer-in-backward", !setup.optimizer_in_backward && setup.optimizer != OptimizerKind::none, false,
       [](TrainingSetup& s) { s.optimizer_in_backward = true; }},
      {"--grad-accum 1", setup.grad_accum > 1, false, [](TrainingSetup& s) { s.grad_accum = 1; }},
      {"--optimizer sgd", adam || setup.optimizer == OptimizerKind::adamw_8bit, true,
       [](TrainingSetup& s) { s.optimizer = OptimizerKind::sgd; }},
  };
  std::vector<SetupChange> fits;
  auto consider = [&](std::string flags, TrainingSetup changed) {
    const std::int64_t bytes = static_memory(model, changed).total_bytes();
    if (bytes <= gpu.usable_bytes()) fits.push_back(SetupChange{std::move(flags), std::move(changed), bytes});
  };
  for (const Step& step : steps) {
    if (!step.applies) continue;
    TrainingSetup changed = setup;
    step.apply(changed);
    consider(step.flags, changed);
  }
  if (fits.empty()) {
    for (std::size_t i = 0; i < steps.size(); ++i) {
      for (std::size_t j = i + 1; j < steps.size(); ++j) {
        if (!steps[i].applies || !steps[j].applies) continue;
        if (steps[i].changes_optimizer && steps[j].changes_optimizer) continue;
        TrainingSetup changed = setup;
        steps[i].apply(changed);
        steps[j].apply(changed);
        consider(steps[i].flags + " " + steps[j].flags, changed);
      }
    }
  }
  return fits;
}

}  // namespace mstplan
