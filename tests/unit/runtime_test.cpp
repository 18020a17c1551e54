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
#include "runtime/executor.h"
#include "planner/static_memory.h"
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

// LoRA over a frozen bf16 base (issue 17): through the knobs' diagonal, every adapter's gradient
// and update equal the plain step's, the base weights stay as they were, and the measured memory
// equals the prediction; all seven linears adapted, then q and v only at another rank and scale.
TEST(RuntimeLora, EveryPlanMatchesThePlainStep) {
  const ModelSpec model = catalog_model("tiny-llama");
  TrainingSetup setup;
  setup.adapter.kind = AdapterKind::lora;
  setup.adapter.rank = 4;
  setup.adapter.alpha = 8;
  RunOptions options;
  options.ignore_fraction = 0.25;
  for (const Case& c : knob_matrix(29, false)) expect_verified(model, setup, c, 29, options);
  setup.adapter.rank = 3;
  setup.adapter.alpha = 2;
  setup.adapter.targets = (1U << static_cast<unsigned>(LoraTarget::q)) | (1U << static_cast<unsigned>(LoraTarget::v));
  setup.optimizer_in_backward = false;
  for (const Case& c : knob_matrix(23, false)) expect_verified(model, setup, c, 23, options);
}

// QLoRA and LoRA over LLM.int8 and fp4 bases: the base weights dequantized for each GEMM (and
// the bf16 copies' bytes in the measured memory), the adapters' gradients and updates equal to
// the plain step's through the knobs' diagonal.
TEST(RuntimeLora, QuantizedBasesMatchThePlainStep) {
  const ModelSpec model = catalog_model("tiny-llama");
  for (const auto& [base, dq] : {std::pair{BaseFormat::nf4, true}, std::pair{BaseFormat::fp4, false},
                                 std::pair{BaseFormat::int8, true}}) {
    TrainingSetup setup;
    setup.adapter.kind = AdapterKind::lora;
    setup.adapter.rank = 3;
    setup.adapter.base = base;
    setup.adapter.double_quant = dq;
    RunOptions options;
    options.ignore_fraction = 0.1;
    for (const Case& c : knob_matrix(27, false)) expect_verified(model, setup, c, 27, options);
  }
}

// The verification holds the adapters, not only the base: 2 x 7 x 2 adapter gradients checked,
// and none of the frozen base's (which has none).
TEST(RuntimeLora, VerifyChecksTheAdaptersGradients) {
  const ModelSpec model = catalog_model("tiny-llama");
  TrainingSetup setup;
  setup.adapter.kind = AdapterKind::lora;
  setup.adapter.rank = 2;
  PlanFile f{model, {}, setup, Plan::mst_reference(model), 31, {}, std::nullopt};
  auto cpu = make_cpu_backend();
  auto v = verify_plan(f, *cpu, RunOptions{});
  ASSERT_TRUE(v.has_value()) << v.error().message;
  ASSERT_EQ(v->gradients.size(), 2u * 7 * 2);
  for (const auto& g : v->gradients) {
    EXPECT_NE(g.name.find("lora_"), std::string::npos) << g.name;
    EXPECT_TRUE(g.ok) << g.name << " " << g.error;
  }
  EXPECT_EQ(v->parameters.size(), parameters(model).size() + 2u * 7 * 2);
}

// The LoRA step against an independent oracle, the merged weight: with W' = W + s B A (s = alpha
// / r) in a full fine-tune of the same model, the loss is the same, and the chain rule gives the
// adapters' gradients from the full step's dL/dW' = G: dB = s G A^T, dA = s B^T G. SGD at learning
// rate 0 keeps every parameter where the first step left it; the comparison is of the second
// step. Tolerances cover bf16: the merged weight is rounded once where the adapter's branch
// rounds its own products.
void expect_merged_weight_oracle(BaseFormat base) {
  const ModelSpec model = catalog_model("tiny-llama");
  const std::int64_t r = 2, seq = 33;
  const double s = 4.0 / static_cast<double>(r);
  TrainingSetup lora;
  lora.optimizer = OptimizerKind::sgd;
  lora.adapter.kind = AdapterKind::lora;
  lora.adapter.rank = r;
  lora.adapter.alpha = 4;
  lora.adapter.targets = 1U << static_cast<unsigned>(LoraTarget::q);
  lora.adapter.base = base;
  TrainingSetup full;
  full.optimizer = OptimizerKind::sgd;
  RunOptions options;
  options.learning_rate = 0.0f;
  auto cpu = make_cpu_backend();
  auto ex_lora = Executor::create(model, lora, Plan::vanilla(), seq, *cpu, options);
  auto ex_full = Executor::create(model, full, Plan::vanilla(), seq, *cpu, options);
  ASSERT_TRUE(ex_lora.has_value()) << ex_lora.error().message;
  ASSERT_TRUE(ex_full.has_value()) << ex_full.error().message;
  Executor& el = **ex_lora;
  Executor& ef = **ex_full;
  auto index_of = [](const Program& p, const std::string& name) {
    for (std::size_t i = 0; i < p.params.size(); ++i) {
      if (p.params[i].name == name) return static_cast<std::int32_t>(i);
    }
    return std::int32_t{-1};
  };
  const std::int32_t wq = index_of(el.program(), "layer.0.attn.q.weight");
  const std::int32_t pa = index_of(el.program(), "layer.0.attn.q.lora_A");
  const std::int32_t pb = index_of(el.program(), "layer.0.attn.q.lora_B");
  ASSERT_GE(wq, 0);
  ASSERT_GE(pa, 0);
  ASSERT_GE(pb, 0);
  ASSERT_EQ(index_of(ef.program(), "layer.0.attn.q.weight"), wq);
  ASSERT_TRUE(el.step().has_value());
  ASSERT_TRUE(ef.step().has_value());
  const std::vector<float> w = el.parameter(wq), a = el.parameter(pa), b = el.parameter(pb);
  if (base == BaseFormat::bf16) {
    ASSERT_EQ(w, ef.parameter(wq));  // the same base, drawn from the same seed
  } else {
    // The full step gets every linear as the quantized base's GEMMs see it (dequantized; bf16
    // holds those values exactly, as the dequantized copies do).
    for (std::size_t i = 0; i < el.program().params.size(); ++i) {
      const auto p = static_cast<std::int32_t>(i);
      if (i < ef.program().params.size() && is_layer_linear(el.program().params[i]) && p != wq) {
        ef.set_parameter(p, el.parameter(p));
      }
    }
  }
  const std::int64_t out = el.program().params[static_cast<std::size_t>(pb)].rows;
  const std::int64_t in = el.program().params[static_cast<std::size_t>(pa)].cols;
  std::vector<float> merged(w.size());
  for (std::int64_t o = 0; o < out; ++o) {
    for (std::int64_t i = 0; i < in; ++i) {
      double ba = 0;
      for (std::int64_t j = 0; j < r; ++j) ba += static_cast<double>(b[o * r + j]) * a[j * in + i];
      merged[o * in + i] = static_cast<float>(w[o * in + i] + s * ba);
    }
  }
  ef.set_parameter(wq, merged);
  std::vector<float> da, db, g;
  el.on_gradient([&](std::int32_t p, std::span<const float> v) {
    if (p == pa) da.assign(v.begin(), v.end());
    if (p == pb) db.assign(v.begin(), v.end());
  });
  ef.on_gradient([&](std::int32_t p, std::span<const float> v) {
    if (p == wq) g.assign(v.begin(), v.end());
  });
  auto step_lora = el.step();
  auto step_full = ef.step();
  ASSERT_TRUE(step_lora.has_value());
  ASSERT_TRUE(step_full.has_value());
  EXPECT_NEAR(step_lora->loss, step_full->loss, 2e-3 * std::abs(step_full->loss));
  ASSERT_EQ(da.size(), a.size());
  ASSERT_EQ(db.size(), b.size());
  ASSERT_EQ(g.size(), w.size());
  std::vector<double> want_db(b.size(), 0.0), want_da(a.size(), 0.0);
  for (std::int64_t o = 0; o < out; ++o) {
    for (std::int64_t i = 0; i < in; ++i) {
      const double gi = g[o * in + i];
      for (std::int64_t j = 0; j < r; ++j) {
        want_db[o * r + j] += s * gi * a[j * in + i];
        want_da[j * in + i] += s * b[o * r + j] * gi;
      }
    }
  }
  auto relative = [](const std::vector<float>& got, const std::vector<double>& want) {
    double diff = 0, norm = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
      diff += (got[i] - want[i]) * (got[i] - want[i]);
      norm += want[i] * want[i];
    }
    return std::sqrt(diff / norm);
  };
  EXPECT_LT(relative(db, want_db), 3e-2);
  EXPECT_LT(relative(da, want_da), 3e-2);
}


TEST(RuntimeLora, GradientsAreTheMergedWeightsThroughTheChainRule) {
  for (const BaseFormat base : {BaseFormat::bf16, BaseFormat::nf4}) {
    SCOPED_TRACE(std::string(to_string(base)));
    expect_merged_weight_oracle(base);
  }
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
