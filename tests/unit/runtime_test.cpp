// The runtime: the executor runs the very program the planner analyses, so measured memory must
// equal the prediction to the byte, and every plan must give the loss, gradients and updated
// parameters of the plain step (no chunks, no recompute) within verify.h's tolerances.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "planner/analysis.h"
#include "planner/builder.h"
#include "planner/catalog.h"
#include "runtime/cpu_backend.h"
#include "runtime/verify.h"

namespace mstplan {
namespace {

ModelSpec catalog_model(const std::string& name) {
  auto m = resolve_model(name);
  EXPECT_TRUE(m.has_value()) << name;
  return *m;
}

struct Case {
  MlpMode mlp_mode;
  std::int64_t mlp_chunks;
  LmHeadMode lm_mode;
  std::int64_t lm_chunks;
  RecomputeKind recompute;
  std::vector<std::int64_t> layers;  // empty: all
  bool offload;
};

Plan make_plan(const Case& c) {
  Plan p;
  p.mlp = ChunkSetting{c.mlp_chunks, {}};
  p.mlp_mode = c.mlp_mode;
  p.lm_head = ChunkSetting{c.lm_chunks, {}};
  p.lm_head_mode = c.lm_mode;
  p.recompute = c.recompute;
  p.recompute_layers = c.layers;
  p.offload_checkpoints = c.offload;
  return p;
}

std::string describe(const Case& c) {
  std::string layers;
  for (auto l : c.layers) layers += std::to_string(l) + " ";
  return fmt::format("mlp {} x{}, lm_head {} x{}, recompute {} [{}], offload {}", to_string(c.mlp_mode), c.mlp_chunks,
                     to_string(c.lm_mode), c.lm_chunks, to_string(c.recompute), layers, c.offload);
}

// Every combination of the knobs (`full`), or a diagonal through them that takes every value of
// every knob at least once; chunk counts that do not divide S and that exceed it.
std::vector<Case> knob_matrix(std::int64_t seq, bool full) {
  std::vector<Case> cases;
  const std::vector<std::pair<MlpMode, std::int64_t>> mlps = {
      {MlpMode::paper, 1}, {MlpMode::paper, 5}, {MlpMode::tiled, 5}, {MlpMode::tiled, seq + 3}};
  const std::vector<std::pair<LmHeadMode, std::int64_t>> heads = {
      {LmHeadMode::keep, 1}, {LmHeadMode::recompute, 4}, {LmHeadMode::recompute, seq + 5},
      {LmHeadMode::forward_grad, 1}, {LmHeadMode::forward_grad, 6}};
  struct R {
    RecomputeKind kind;
    std::vector<std::int64_t> layers;
    bool offload;
  };
  const std::vector<R> recomputes = {{RecomputeKind::none, {}, false},       {RecomputeKind::full, {1}, false},
                                     {RecomputeKind::full, {}, false},       {RecomputeKind::full, {}, true},
                                     {RecomputeKind::full, {0}, true},       {RecomputeKind::selective, {}, false},
                                     {RecomputeKind::selective, {0}, false}};
  if (!full) {
    for (std::size_t i = 0; i < recomputes.size(); ++i) {
      const auto& [mm, mc] = mlps[i % mlps.size()];
      const auto& [lm, lc] = heads[i % heads.size()];
      cases.push_back({mm, mc, lm, lc, recomputes[i].kind, recomputes[i].layers, recomputes[i].offload});
    }
    return cases;
  }
  for (const auto& [mm, mc] : mlps) {
    for (const auto& [lm, lc] : heads) {
      for (const R& r : recomputes) cases.push_back({mm, mc, lm, lc, r.kind, r.layers, r.offload});
    }
  }
  return cases;
}

void expect_verified(const ModelSpec& model, const TrainingSetup& setup, const Case& c, std::int64_t seq,
                     const RunOptions& options) {
  PlanFile f{model, {}, setup, make_plan(c), seq, {}, std::nullopt};
  auto cpu = make_cpu_backend();
  auto v = verify_plan(f, *cpu, options);
  ASSERT_TRUE(v.has_value()) << v.error().message;
  EXPECT_TRUE(v->run.memory_ok) << describe(c);
  EXPECT_TRUE(v->loss_check.ok) << describe(c) << ": loss " << v->loss << " vs " << v->reference_loss;
  for (const auto& g : v->gradients) {
    EXPECT_TRUE(g.ok) << describe(c) << ": gradient " << g.name << " error " << g.error << " > " << g.tolerance;
  }
  for (const auto& p : v->parameters) {
    EXPECT_TRUE(p.ok) << describe(c) << ": parameter " << p.name << " error " << p.error << " > " << p.tolerance;
  }
}

struct ModelCase {
  const char* model;
  Precision precision;
  std::int64_t batch;
  std::int64_t seq;
  double ignore_fraction;
  bool every_combination;  // else a diagonal through the knobs (the CPU kernels are slow)
};

class RuntimeEquivalence : public ::testing::TestWithParam<ModelCase> {};

// Each model shape and precision, through every knob combination: same loss, gradients and
// updated parameters as the plain step, and the measured memory equal to the prediction.
TEST_P(RuntimeEquivalence, EveryPlanMatchesThePlainStep) {
  const ModelCase& mc = GetParam();
  const ModelSpec model = catalog_model(mc.model);
  TrainingSetup setup;
  setup.precision = mc.precision;
  setup.batch = mc.batch;
  RunOptions options;
  options.ignore_fraction = mc.ignore_fraction;
  for (const Case& c : knob_matrix(mc.seq, mc.every_combination)) expect_verified(model, setup, c, mc.seq, options);
}

INSTANTIATE_TEST_SUITE_P(
    Models, RuntimeEquivalence,
    ::testing::Values(ModelCase{"tiny-llama", Precision::fp32, 1, 37, 0.0, true},
                      ModelCase{"tiny-llama", Precision::bf16, 2, 29, 0.25, true},
                      ModelCase{"tiny-llama", Precision::mixed, 1, 17, 0.0, false},
                      ModelCase{"tiny-qwen2", Precision::fp32, 2, 23, 0.25, false},
                      ModelCase{"tiny-qwen2", Precision::mixed, 1, 31, 0.0, false},
                      ModelCase{"tiny-qwen2", Precision::bf16, 1, 19, 0.0, false},
                      // Gemma 2's sliding window (64 on even layers) binds at 70 positions.
                      ModelCase{"tiny-gemma2", Precision::fp32, 1, 70, 0.1, false},
                      ModelCase{"tiny-gemma2", Precision::bf16, 2, 70, 0.0, false}),
    [](const auto& param_info) {
      std::string name = fmt::format("{}_{}_b{}_s{}", param_info.param.model, to_string(param_info.param.precision), param_info.param.batch,
                                     param_info.param.seq);
      for (char& ch : name) {
        if (ch == '-' || ch == '.') ch = '_';
      }
      return name;
    });

}  // namespace
}  // namespace mstplan
