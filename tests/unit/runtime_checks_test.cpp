// The runtime beyond plan-by-plan equivalence (runtime_test.cpp): the LM head's weight gradient
// is not doubled, gradients agree with finite differences of the loss, training converges the
// same way with and without MST, guard bytes catch a kernel that writes out of bounds, gradient
// accumulation and both optimizer placements, and what the runtime refuses.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <numeric>

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

TrainingSetup fp32_setup(OptimizerKind optimizer = OptimizerKind::sgd) {
  TrainingSetup s;
  s.precision = Precision::fp32;
  s.optimizer = optimizer;
  return s;
}

Plan mst_plan(std::int64_t mlp_chunks, LmHeadMode lm_mode, std::int64_t lm_chunks) {
  Plan p;
  p.mlp = ChunkSetting{mlp_chunks, {}};
  p.mlp_mode = MlpMode::tiled;
  p.lm_head = ChunkSetting{lm_chunks, {}};
  p.lm_head_mode = lm_mode;
  return p;
}

std::int32_t param_index(const Program& program, const std::string& name) {
  for (std::size_t i = 0; i < program.params.size(); ++i) {
    if (program.params[i].name == name) return static_cast<std::int32_t>(i);
  }
  ADD_FAILURE() << "no parameter " << name;
  return -1;
}

// One step; returns the loss, and every parameter's gradient through the hook.
double step_with_gradients(Executor& ex, std::map<std::int32_t, std::vector<float>>* gradients) {
  if (gradients != nullptr) {
    ex.on_gradient([gradients](std::int32_t p, std::span<const float> g) { (*gradients)[p].assign(g.begin(), g.end()); });
  } else {
    ex.on_gradient({});
  }
  auto r = ex.step();
  EXPECT_TRUE(r.has_value()) << r.error().message;
  return r.has_value() ? r->loss : NAN;
}

double norm(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += static_cast<double>(x) * x;
  return std::sqrt(s);
}

// The MST reference code accumulated the LM head's weight gradient once per chunk inside the
// chunked forward and again through autograd, doubling it (MST.md, pitfalls). Both chunked modes
// must give the plain gradient: same norm (a doubled one has twice the norm) and same values.
TEST(RuntimeChecks, LmHeadWeightGradientEqualsThePlainOne) {
  const ModelSpec model = catalog_model("tiny-llama");
  const TrainingSetup setup = fp32_setup();
  RunOptions options;
  options.learning_rate = 0;  // gradients only
  auto gradient_of = [&](const Plan& plan) {
    auto cpu = make_cpu_backend();
    auto ex = Executor::create(model, setup, plan, 33, *cpu, options);
    EXPECT_TRUE(ex.has_value());
    std::map<std::int32_t, std::vector<float>> g;
    step_with_gradients(**ex, &g);
    return g[param_index((*ex)->program(), "lm_head.weight")];
  };
  const std::vector<float> plain = gradient_of(Plan::vanilla());
  ASSERT_GT(norm(plain), 0.0);
  for (LmHeadMode mode : {LmHeadMode::recompute, LmHeadMode::forward_grad}) {
    const std::vector<float> chunked = gradient_of(mst_plan(4, mode, 4));
    EXPECT_NEAR(norm(chunked) / norm(plain), 1.0, 1e-5) << to_string(mode);
    EXPECT_LT(relative_error(chunked, plain), 1e-5) << to_string(mode);
  }
}

// Central differences of the loss along a direction d: (L(w + h d) - L(w - h d)) / 2h equals
// <grad, d> up to O(h^2) and the loss's fp32 rounding. Every parameter of a 2-layer model, along
// its gradient's direction (<grad, d> = ||grad||) and along a random unit direction, through a
// chunked, recomputed plan (the plan whose gradients we least trust by construction).
//
// Error budget: the loss is ~6.2 in fp32, so one evaluation is good to ~1e-6 absolute and the
// quotient, with h = 1e-2, to ~5e-5 (seen: random-direction quotients off by up to 5e-5). The
// truncation term (h^2 / 6) L''' is relative to the directional derivative's size: seen up to
// 0.2% along the gradient (the embedding's). So |fd - <g,d>| <= 3e-3 ||g|| + 1e-4: a gradient
// off by a factor (the doubled LM head gradient of the reference code) or missing a term fails.
TEST(RuntimeChecks, GradientsMatchFiniteDifferences) {
  const ModelSpec model = catalog_model("tiny-llama");
  const TrainingSetup setup = fp32_setup();
  Plan plan = mst_plan(3, LmHeadMode::recompute, 5);
  plan.recompute = RecomputeKind::full;
  RunOptions options;
  options.learning_rate = 0;  // SGD with lr 0: the step leaves the weights alone
  options.ignore_fraction = 0.2;
  auto cpu = make_cpu_backend();
  auto created = Executor::create(model, setup, plan, 11, *cpu, options);
  ASSERT_TRUE(created.has_value()) << created.error().message;
  Executor& ex = **created;
  std::map<std::int32_t, std::vector<float>> gradients;
  const double loss = step_with_gradients(ex, &gradients);
  ASSERT_TRUE(std::isfinite(loss));
  ASSERT_EQ(gradients.size(), ex.program().params.size());

  std::uint64_t state = 12345;
  auto next_normal = [&state] {
    // Box-Muller on a 64-bit LCG: enough for a direction.
    auto u = [&state] {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      return (static_cast<double>(state >> 11) + 0.5) * 0x1.0p-53;
    };
    const double a = u(), b = u();
    return std::sqrt(-2 * std::log(a)) * std::cos(6.283185307179586 * b);
  };
  const double h = 1e-2;
  for (const auto& [param, g] : gradients) {
    const std::vector<float> w = ex.parameter(param);
    std::vector<std::vector<float>> directions(2, std::vector<float>(w.size()));
    const double gnorm = norm(g);
    for (std::size_t i = 0; i < w.size(); ++i) {
      directions[0][i] = gnorm > 0 ? static_cast<float>(g[i] / gnorm) : 0.0f;
      directions[1][i] = static_cast<float>(next_normal());
    }
    const double rnorm = norm(directions[1]);
    for (float& x : directions[1]) x = static_cast<float>(x / rnorm);
    for (const auto& d : directions) {
      const double analytic = std::inner_product(g.begin(), g.end(), d.begin(), 0.0);
      auto loss_at = [&](double sign) {
        std::vector<float> moved(w.size());
        for (std::size_t i = 0; i < w.size(); ++i) moved[i] = static_cast<float>(w[i] + sign * h * d[i]);
        ex.set_parameter(param, moved);
        return step_with_gradients(ex, nullptr);
      };
      const double fd = (loss_at(+1) - loss_at(-1)) / (2 * h);
      ex.set_parameter(param, w);
      EXPECT_NEAR(fd, analytic, 3e-3 * gnorm + 1e-4)
          << ex.program().params[static_cast<std::size_t>(param)].name << " (||g|| " << gnorm << ")";
    }
  }
}

// 20 AdamW steps on one fixed synthetic batch: the loss falls, and it falls the same way with MST
// chunking (fp32: the chunked step sums the same terms in another order, so the losses agree to
// float rounding, amplified a little over 20 steps; seen: 5e-7 relative, bound 2e-5). AdamW at
// 3e-3 overshoots once around step 4, so the test asks for the fall over the run, not per step.
TEST(RuntimeChecks, LossFallsIdenticallyWithAndWithoutChunking) {
  const ModelSpec model = catalog_model("tiny-llama");
  const TrainingSetup setup = fp32_setup(OptimizerKind::adamw);
  RunOptions options;
  options.learning_rate = 3e-3f;
  auto losses_of = [&](const Plan& plan) {
    auto cpu = make_cpu_backend();
    PlanFile f{model, {}, setup, plan, 24, {}, std::nullopt};
    auto r = run_plan(f, *cpu, options, 20);
    EXPECT_TRUE(r.has_value()) << r.error().message;
    EXPECT_TRUE(r->memory_ok);
    return r->losses;
  };
  const std::vector<double> plain = losses_of(Plan::vanilla());
  Plan chunked = mst_plan(4, LmHeadMode::forward_grad, 3);
  chunked.recompute = RecomputeKind::full;
  const std::vector<double> mst = losses_of(chunked);
  ASSERT_EQ(plain.size(), 20u);
  ASSERT_EQ(mst.size(), 20u);
  EXPECT_LT(plain.back(), 0.5 * plain.front()) << "the loss did not fall: " << plain.front() << " -> " << plain.back();
  for (std::size_t i = 0; i < plain.size(); ++i) EXPECT_NEAR(mst[i], plain[i], 2e-5 * plain[i]) << "step " << i;
}

// A backend whose residual add writes one byte past its output's allocation.
class OverrunningBackend : public CpuBackend {
 public:
  void add(const View& a, const View& b, const View& out) override {
    CpuBackend::add(a, b, out);
    const std::int64_t bytes = out.seqs * out.positions * out.cols * dtype_bytes(out.dtype);
    static_cast<unsigned char*>(out.data)[(bytes + 255) / 256 * 256] = 0;
  }
};

TEST(RuntimeChecks, GuardBytesCatchAnOutOfBoundsWriteAndNameTheOp) {
  const ModelSpec model = catalog_model("tiny-llama");
  RunOptions options;
  options.guard_bytes = 64;
  OverrunningBackend bad;
  auto ex = Executor::create(model, fp32_setup(), Plan::vanilla(), 16, bad, options);
  ASSERT_TRUE(ex.has_value());
  auto r = (*ex)->step();
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message.find("after layer.0."), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find("guard byte 1 after"), std::string::npos) << r.error().message;

  // The same plan on the honest backend passes its guards.
  CpuBackend good;
  auto ok = Executor::create(model, fp32_setup(), Plan::vanilla(), 16, good, options);
  ASSERT_TRUE(ok.has_value());
  EXPECT_TRUE((*ok)->step().has_value());
}

struct OptimizerCase {
  OptimizerKind optimizer;
  bool in_backward;
  std::int64_t grad_accum;
  Precision precision;
};

class RuntimeOptimizers : public ::testing::TestWithParam<OptimizerCase> {};

// Gradient accumulation over micro-batches and the optimizer at the end or inside backward give
// the plain step's gradients and updates; memory still matches to the byte.
TEST_P(RuntimeOptimizers, MatchThePlainStep) {
  const OptimizerCase& c = GetParam();
  TrainingSetup setup;
  setup.precision = c.precision;
  setup.optimizer = c.optimizer;
  setup.optimizer_in_backward = c.in_backward;
  setup.grad_accum = c.grad_accum;
  Plan plan = mst_plan(3, LmHeadMode::forward_grad, 4);
  plan.recompute = RecomputeKind::full;
  plan.offload_checkpoints = true;
  PlanFile f{catalog_model("tiny-qwen2"), {}, setup, plan, 21, {}, std::nullopt};
  RunOptions options;
  options.ignore_fraction = 0.1;
  auto cpu = make_cpu_backend();
  auto v = verify_plan(f, *cpu, options);
  ASSERT_TRUE(v.has_value()) << v.error().message;
  EXPECT_TRUE(v->ok);
  EXPECT_TRUE(v->run.memory_ok);
  EXPECT_TRUE(v->loss_check.ok) << v->loss << " vs " << v->reference_loss;
  for (const auto& g : v->gradients) EXPECT_TRUE(g.ok) << g.name << " " << g.error;
  for (const auto& p : v->parameters) EXPECT_TRUE(p.ok) << p.name << " " << p.error;
}

INSTANTIATE_TEST_SUITE_P(Setups, RuntimeOptimizers,
                         ::testing::Values(OptimizerCase{OptimizerKind::sgd, false, 1, Precision::fp32},
                                           OptimizerCase{OptimizerKind::sgd, true, 3, Precision::fp32},
                                           OptimizerCase{OptimizerKind::adamw, false, 2, Precision::fp32},
                                           OptimizerCase{OptimizerKind::adamw, true, 2, Precision::mixed},
                                           OptimizerCase{OptimizerKind::adamw, false, 2, Precision::bf16}));

// Gradient accumulation against a bigger batch: sequence g of a step is the same whichever
// micro-batch holds it, so batch 1 x 2 micro-batches and batch 2 x 1 see the same two sequences.
// With every label kept both have 2 (S - 1) targets, split evenly, so the step's loss (the mean
// of the micro-batch means) and every gradient equal those of the bigger batch, to fp32
// summation order.
TEST(RuntimeChecks, GradientAccumulationEqualsTheBiggerBatch) {
  const ModelSpec model = catalog_model("tiny-llama");
  TrainingSetup accumulated = fp32_setup();
  accumulated.grad_accum = 2;
  TrainingSetup batched = fp32_setup();
  batched.batch = 2;
  RunOptions options;
  options.learning_rate = 0;
  auto cpu = make_cpu_backend();
  auto a = Executor::create(model, accumulated, mst_plan(2, LmHeadMode::recompute, 3), 13, *cpu, options);
  auto b = Executor::create(model, batched, Plan::vanilla(), 13, *cpu, options);
  ASSERT_TRUE(a.has_value() && b.has_value());
  std::map<std::int32_t, std::vector<float>> ga, gb;
  const double la = step_with_gradients(**a, &ga);
  const double lb = step_with_gradients(**b, &gb);
  EXPECT_NEAR(la, lb, 1e-5 * lb);
  ASSERT_EQ(ga.size(), gb.size());
  for (const auto& [p, g] : gb) {
    EXPECT_LT(relative_error(ga[p], g), 1e-5) << (*b)->program().params[static_cast<std::size_t>(p)].name;
  }
}

// Memory-only runs allocate and free exactly as the full step does: the same rows, to the byte,
// with no kernel run (the loss stays 0).
TEST(RuntimeChecks, MemoryOnlyRunsAllocateAsTheFullStep) {
  Plan plan = mst_plan(4, LmHeadMode::recompute, 3);
  plan.recompute = RecomputeKind::full;
  plan.offload_checkpoints = true;
  PlanFile f{catalog_model("tiny-gemma2"), {}, TrainingSetup{}, plan, 40, {}, std::nullopt};
  auto cpu = make_cpu_backend();
  auto full = run_plan(f, *cpu, RunOptions{}, 1);
  RunOptions memory_only;
  memory_only.memory_only = true;
  auto dry = run_plan(f, *cpu, memory_only, 1);
  ASSERT_TRUE(full.has_value() && dry.has_value());
  EXPECT_TRUE(dry->memory_ok);
  ASSERT_EQ(full->memory.size(), dry->memory.size());
  for (std::size_t i = 0; i < full->memory.size(); ++i) {
    EXPECT_EQ(full->memory[i].measured_bytes, dry->memory[i].measured_bytes) << full->memory[i].what;
  }
  EXPECT_GT(full->losses[0], 0.0);
  EXPECT_EQ(dry->losses[0], 0.0);
}

// Ranks on one machine share its memory: tiny-llama's step (about 34 MB per rank) fits once, and
// not a million times over (34 TB), and the refusal names the ranks.
TEST(RuntimeChecks, HostMemoryCheckCountsTheRanksOnThisMachine) {
  const PlanFile f{catalog_model("tiny-llama"), {}, fp32_setup(), Plan::vanilla(), 64, {}, std::nullopt};
  EXPECT_FALSE(check_fits_host(f, "p.yaml"));
  auto refused = check_fits_host(f, "p.yaml", 1'000'000);
  ASSERT_TRUE(refused.has_value());
  EXPECT_NE(refused->message.find("(1000000 ranks here)"), std::string::npos) << refused->message;
}

TEST(RuntimeChecks, RefusesWhatItDoesNotExecute) {
  auto cpu = make_cpu_backend();
  const ModelSpec llama = catalog_model("tiny-llama");
  TrainingSetup pytorch;
  pytorch.profile = Profile::pytorch;
  auto e1 = Executor::create(llama, pytorch, Plan::vanilla(), 16, *cpu, {});
  ASSERT_FALSE(e1.has_value());
  EXPECT_NE(e1.error().message.find("field 'profile'"), std::string::npos) << e1.error().message;

  TrainingSetup eight_bit;
  eight_bit.optimizer = OptimizerKind::adamw_8bit;
  auto e2 = Executor::create(llama, eight_bit, Plan::vanilla(), 16, *cpu, {});
  ASSERT_FALSE(e2.has_value());
  EXPECT_NE(e2.error().message.find("field 'optimizer'"), std::string::npos) << e2.error().message;

  TrainingSetup eager;
  eager.attention = AttentionKind::eager;
  auto e3 = Executor::create(catalog_model("tiny-gemma2"), eager, Plan::vanilla(), 16, *cpu, {});
  ASSERT_FALSE(e3.has_value());
  EXPECT_NE(e3.error().message.find("soft-capped"), std::string::npos) << e3.error().message;
  // Eager attention without soft-capping runs, and matches the plain step like any plan.
  auto ok = Executor::create(llama, eager, Plan::vanilla(), 16, *cpu, {});
  ASSERT_TRUE(ok.has_value());
  EXPECT_TRUE((*ok)->step().has_value());

  auto e4 = Executor::create(llama, {}, Plan::vanilla(), 1, *cpu, {});
  ASSERT_FALSE(e4.has_value());
  EXPECT_NE(e4.error().message.find("field 'seq_len'"), std::string::npos) << e4.error().message;

  // A rank of a 4-GPU plan needs a world of 4 (tests/mpi/ranks_test.cpp runs one), a Ulysses
  // rank too.
  TrainingSetup four;
  four.parallel.gpus = 4;
  four.parallel.zero = ZeroStage::parameters;
  auto e5 = Executor::create(llama, four, Plan::vanilla(), 16, *cpu, {});
  ASSERT_FALSE(e5.has_value());
  EXPECT_NE(e5.error().message.find("field 'gpus': 4: a multi-GPU plan runs one rank per process, here one process"),
            std::string::npos)
      << e5.error().message;
  auto alone = make_self_communicator();
  RunOptions one_rank;
  one_rank.communicator = alone.get();
  auto e6 = Executor::create(llama, four, Plan::vanilla(), 16, *cpu, one_rank);
  ASSERT_FALSE(e6.has_value());
  EXPECT_NE(e6.error().message.find("here 1 rank;"), std::string::npos) << e6.error().message;
  // Another backend's ranks would need NCCL: refused by the backend's name before the world.
  struct NamedCuda : CpuBackend {
    [[nodiscard]] std::string_view name() const override { return "cuda"; }
  } cuda;
  auto e8 = Executor::create(llama, four, Plan::vanilla(), 16, cuda, {});
  ASSERT_FALSE(e8.has_value());
  EXPECT_NE(e8.error().message.find("the cuda backend runs one rank; its collectives would be NCCL's"), std::string::npos)
      << e8.error().message;
  // CPU Adam runs on the host's tensors on the CPU backend; another backend names what it lacks.
  TrainingSetup offloaded;
  offloaded.offload_optimizer = true;
  offloaded.optimizer_in_backward = false;
  auto e9 = Executor::create(llama, offloaded, Plan::vanilla(), 16, cuda, {});
  ASSERT_FALSE(e9.has_value());
  EXPECT_NE(e9.error().message.find("field 'offload_optimizer': the cuda backend has no host-side AdamW"),
            std::string::npos)
      << e9.error().message;
  EXPECT_TRUE(Executor::create(llama, offloaded, Plan::vanilla(), 16, *cpu, {}).has_value());
  TrainingSetup ulysses = four;
  ulysses.parallel.sp = 2;
  auto e7 = Executor::create(llama, ulysses, Plan::vanilla(), 16, *cpu, {});
  ASSERT_FALSE(e7.has_value());
  EXPECT_NE(e7.error().message.find("field 'gpus'"), std::string::npos) << e7.error().message;
}

}  // namespace
}  // namespace mstplan
