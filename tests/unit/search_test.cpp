// The search for the longest sequence, auto's Pareto set and the fastest plan at a length, and the
// time model's basic shape.
#include "planner/search.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include "planner/builder.h"
#include "planner/catalog.h"
#include "planner/cost_model.h"
#include "planner/units.h"

namespace mstplan {
namespace {

ModelSpec model(const std::string& name) { return *resolve_model(name); }
GpuSpec gpu(const std::string& name) { return *resolve_gpu(name); }

// A made-up GPU small enough for the tiny models to run out of memory at a few thousand tokens.
GpuSpec small_gpu(std::int64_t capacity_bytes) {
  GpuSpec g = gpu("A100-80G");
  g.name = "test-gpu";
  g.capacity_bytes = capacity_bytes;
  g.reserve_bytes = 0;
  return g;
}

// The longest length is the last multiple of the granularity that fits: found by brute force
// over every multiple, the answer is the same.
RC_GTEST_PROP(SearchProperty, LongestMatchesBruteForce, ()) {
  const ModelSpec m = model(*rc::gen::element<std::string>("tiny-llama", "tiny-qwen2", "tiny-gemma2"));
  Plan plan = *rc::gen::element(Plan::vanilla(), Plan::recompute_all(), Plan::mst_reference(m));
  // Capacity: the 32 MiB GEMM workspace plus room for a few thousand tokens.
  const GpuSpec g = small_gpu((std::int64_t{34} << 20) + *rc::gen::inRange<std::int64_t>(0, 3 << 20));
  const TrainingSetup setup;
  SearchOptions options;
  options.granularity = 64;
  options.max_seq_len = 4096;
  Evaluator evaluator(m, g, setup, options);
  const auto found = evaluator.longest(plan);
  std::int64_t brute = 0;
  for (std::int64_t s = 64; s <= 4096; s += 64) {
    if (evaluator.evaluate(plan, s).fits) brute = s;
  }
  RC_ASSERT((found ? found->seq_len : 0) == brute);
}

TEST(Search, LongestIsExactToTheGranularity) {
  const ModelSpec m = model("llama3-8b");
  const GpuSpec g = gpu("A100-80G");
  const TrainingSetup setup;
  const SearchOptions options;
  Evaluator evaluator(m, g, setup, options);
  for (Method method : {Method::vanilla, Method::recompute, Method::mst}) {
    const Plan plan = method_plan(method, m);
    const auto e = evaluator.longest(plan);
    ASSERT_TRUE(e) << to_string(method);
    EXPECT_EQ(e->seq_len % 64, 0);
    EXPECT_TRUE(e->fits);
    EXPECT_LE(e->required_bytes, g.capacity_bytes);
    EXPECT_FALSE(evaluator.evaluate(plan, e->seq_len + 64).fits) << to_string(method);
  }
}

// Each technique buys length: recompute beats vanilla, MST beats recompute, offload beats MST,
// and auto is at least as long as all of them.
// The pytorch profile's fit is the caching allocator's, which is not monotone in the length: its
// cache is emptied when a request would fail, and the fragmentation jumps. Llama-3-8B with FSDP2 on
// 8 H100 in mixed precision, full recompute, default segments: 20,480 tokens fit (61.63 GiB
// allocated, 74.36 GiB reserved after one cache flush), yet the search once stopped at 15,680, the
// first fitting length its line through the limit found. The answer is the longest between that
// and the limit on allocated bytes, each point simulated.
TEST(Search, PytorchLongestIsNotTheFirstFitFound) {
  const ModelSpec m = *resolve_model("llama3-8b");
  const GpuSpec gpu = *resolve_gpu("H100-80G");
  TrainingSetup s;
  s.profile = Profile::pytorch;
  s.precision = Precision::mixed;
  s.optimizer_in_backward = false;
  s.parallel = Parallelism{8, ZeroStage::parameters, 1};
  SearchOptions options;
  options.cluster = *cluster_for_ranks(std::nullopt, gpu, 8);
  Evaluator evaluator(m, gpu, s, options);
  const Plan plan = Plan::recompute_all();
  ASSERT_TRUE(evaluator.evaluate(plan, 20'480).fits);
  const std::optional<Evaluation> longest = evaluator.longest(plan);
  ASSERT_TRUE(longest.has_value());
  EXPECT_TRUE(longest->fits);
  EXPECT_GE(longest->seq_len, 20'480);
}

TEST(Search, TechniquesOrderTheLengths) {
  const SearchResult r = search(model("llama3-8b"), gpu("A100-80G"), TrainingSetup{}, all_methods());
  ASSERT_EQ(r.methods.size(), 5u);
  std::map<Method, std::int64_t> length;
  for (const MethodResult& m : r.methods) {
    ASSERT_TRUE(m.at_max) << to_string(m.method);
    length[m.method] = m.at_max->seq_len;
  }
  EXPECT_LT(length[Method::vanilla], length[Method::recompute]);
  EXPECT_LT(length[Method::recompute], length[Method::mst]);
  EXPECT_LT(length[Method::mst], length[Method::mst_offload]);
  for (const auto& [method, value] : length) EXPECT_GE(length[Method::automatic], value);
}

TEST(Search, ParetoPointsAreNotDominated) {
  const SearchResult r = search(model("llama3-8b"), gpu("H100-80G"), TrainingSetup{}, all_methods());
  ASSERT_GE(r.pareto.size(), 2u);
  for (std::size_t i = 1; i < r.pareto.size(); ++i) {
    EXPECT_LT(r.pareto[i].seq_len, r.pareto[i - 1].seq_len);                          // shorter...
    EXPECT_GT(r.pareto[i].time.tokens_per_s, r.pareto[i - 1].time.tokens_per_s);      // ...but faster
  }
}

// At a requested length, auto's plan fits and is at least as fast as every fixed method that fits.
TEST(Search, FastestPlanAtARequestedLength) {
  TrainingSetup setup;
  setup.seq_len = 32768;
  const SearchResult r = search(model("llama3-8b"), gpu("A100-80G"), setup, all_methods());
  ASSERT_TRUE(r.fastest_at_request);
  EXPECT_TRUE(r.fastest_at_request->fits);
  EXPECT_EQ(r.fastest_at_request->seq_len, 32768);
  for (const MethodResult& m : r.methods) {
    ASSERT_TRUE(m.at_request) << to_string(m.method);
    if (m.at_request->fits) {
      EXPECT_GE(r.fastest_at_request->time.tokens_per_s, m.at_request->time.tokens_per_s) << to_string(m.method);
    }
  }
}

// Knobs a scenario fixes are kept: `recompute: {kind: full, layers: all}` must not come back as
// the fewest layers that fit (the partial-recompute candidate is for unfixed layers only).
TEST(Search, FixedRecomputeLayersAreKept) {
  TrainingSetup setup;
  setup.seq_len = 50;
  setup.batch = 2;
  setup.knobs.mlp_chunks = ChunkSetting{4, {}};
  setup.knobs.lm_head_chunks = ChunkSetting{3, {}};
  setup.knobs.recompute = RecomputeKind::full;
  {
    const SearchResult free = search(model("tiny-llama"), gpu("A100-80G"), setup, all_methods());
    ASSERT_TRUE(free.fastest_at_request);
    // Unfixed, 50 tokens need no recompute at all: the fewest layers tried is one, which wins.
    EXPECT_THAT(free.fastest_at_request->plan.recompute_layers, ::testing::ElementsAre(0));
  }
  setup.knobs.recompute_layers = std::vector<std::int64_t>{};  // "all"
  const SearchResult fixed = search(model("tiny-llama"), gpu("A100-80G"), setup, all_methods());
  ASSERT_TRUE(fixed.fastest_at_request);
  EXPECT_EQ(fixed.fastest_at_request->plan.recompute, RecomputeKind::full);
  EXPECT_TRUE(fixed.fastest_at_request->plan.recompute_layers.empty());
}

TEST(Search, NothingFitsWhenTheStaticStateDoesNot) {
  TrainingSetup setup;
  setup.precision = Precision::mixed;
  const SearchResult r = search(model("llama3-70b"), gpu("A100-80G"), setup, all_methods());
  for (const MethodResult& m : r.methods) EXPECT_FALSE(m.at_max) << to_string(m.method);
  EXPECT_TRUE(r.pareto.empty());
}

// The time model: longer sequences are slower per token (attention is quadratic), recomputation
// costs time, and MST's chunks of d tokens cost little (MST.md: throughput holds while a chunk
// has about d rows).
TEST(TimeModel, ShapesOfTheCosts) {
  const ModelSpec m = model("llama3-8b");
  const GpuSpec g = gpu("A100-80G");
  const TrainingSetup setup;
  const SearchOptions options;
  Evaluator evaluator(m, g, setup, options);
  const double short_seq = evaluator.evaluate(Plan::vanilla(), 4096).time.tokens_per_s;
  const double long_seq = evaluator.evaluate(Plan::vanilla(), 16384).time.tokens_per_s;
  EXPECT_GT(short_seq, long_seq);
  const double recompute = evaluator.evaluate(Plan::recompute_all(), 16384).time.tokens_per_s;
  EXPECT_LT(recompute, long_seq);
  const double mst = evaluator.evaluate(Plan::mst_reference(m), 16384).time.tokens_per_s;
  EXPECT_GT(mst / recompute, 0.9);
  // Offloading checkpoints overlaps with compute at this size: at most a few percent slower.
  Plan offload = Plan::mst_reference(m);
  offload.offload_checkpoints = true;
  EXPECT_GT(evaluator.evaluate(offload, 16384).time.tokens_per_s / mst, 0.95);
}

// The FLOPs of a vanilla step: 6 x parameters x tokens for the matmuls of forward and backward,
// plus attention. The layers' matmul weights see all S = 4096 tokens, the LM head the 4095
// labelled ones; embeddings and norms are not matmuls.
TEST(TimeModel, FlopsCountTheMatmuls) {
  const ModelSpec m = model("llama3-8b");
  const std::int64_t tokens = 4096;
  const Program p = build_program(m, TrainingSetup{}, Plan::vanilla(), tokens);
  const StepTime t = estimate_time(p, gpu("A100-80G"));
  const ParameterCounts c = count_parameters(m);
  const double layers = 6.0 * static_cast<double>(c.attention + c.mlp) * static_cast<double>(tokens);
  const double lm_head = 6.0 * static_cast<double>(c.lm_head) * static_cast<double>(tokens - 1);
  // Causal flash attention per layer: forward 4 x heads x S x (S + 1) / 2 x head_dim, backward 2.5x.
  const double attention = 3.5 * 4.0 * 32 * 4096.0 * (4097.0 / 2.0) * 128 * 32;
  EXPECT_NEAR(t.flops, layers + lm_head + attention, 1e-9 * t.flops);
}

}  // namespace
}  // namespace mstplan
