#include "planner/setup.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include "test_util.h"

namespace mstplan {
namespace {

TEST(Scenario, DefaultsAreTheMstReferenceSetup) {
  const TrainingSetup s;
  EXPECT_EQ(s.batch, 1);
  EXPECT_FALSE(s.seq_len.has_value());
  EXPECT_EQ(s.precision, Precision::bf16);
  EXPECT_EQ(s.optimizer, OptimizerKind::adamw);
  EXPECT_TRUE(s.optimizer_in_backward);
  EXPECT_EQ(s.attention, AttentionKind::flash);
  EXPECT_EQ(describe_setup(s),
            "bf16 weights, AdamW state bf16, optimizer in backward, batch 1, flash attention, profile native");
}

TEST(Scenario, ReadsEveryFieldOfTheExamples) {
  auto sc = load_scenario_file(std::string(MSTPLAN_SOURCE_DIR) + "/scenarios/examples/llama3-8b-mixed-knobs.yaml");
  ASSERT_TRUE(sc) << sc.error().message;
  EXPECT_EQ(sc->model, "llama3-8b");
  EXPECT_EQ(sc->gpu, "H100-80G");
  const TrainingSetup& s = sc->setup;
  EXPECT_EQ(s.batch, 2);
  EXPECT_EQ(s.seq_len, 32768);
  EXPECT_EQ(s.precision, Precision::mixed);
  EXPECT_EQ(s.optimizer, OptimizerKind::adamw_8bit);
  EXPECT_FALSE(s.optimizer_in_backward);
  EXPECT_EQ(s.grad_accum, 4);
  EXPECT_EQ(s.profile, Profile::pytorch);
  ASSERT_TRUE(s.knobs.mlp_chunks);
  EXPECT_EQ(s.knobs.mlp_chunks->chunks, 8);
  EXPECT_EQ(s.knobs.mlp_mode, MlpMode::tiled);
  ASSERT_TRUE(s.knobs.lm_head_chunks);
  EXPECT_EQ(s.knobs.lm_head_chunks->chunk_tokens, 4096);
  EXPECT_EQ(s.knobs.lm_head_mode, LmHeadMode::recompute);
  EXPECT_EQ(s.knobs.recompute, RecomputeKind::full);
  ASSERT_TRUE(s.knobs.recompute_layers.has_value());  // `layers: all` fixes the layers: every one
  EXPECT_TRUE(s.knobs.recompute_layers->empty());
  EXPECT_EQ(s.knobs.offload_checkpoints, false);
  EXPECT_EQ(describe_setup(s),
            "fp32 weights under bf16 autocast, AdamW state 8-bit, optimizer after backward, 4 micro-batches "
            "accumulated, batch 2, flash attention, profile pytorch");
}

TEST(Scenario, KnobsLeftOutAreSearched) {
  auto sc = parse_scenario_yaml("mlp: {mode: paper}\nlm_head: {chunks: search}\n", "s.yaml");
  ASSERT_TRUE(sc) << sc.error().message;
  EXPECT_FALSE(sc->setup.knobs.mlp_chunks.has_value());
  EXPECT_EQ(sc->setup.knobs.mlp_mode, MlpMode::paper);
  EXPECT_FALSE(sc->setup.knobs.lm_head_chunks.has_value());
  EXPECT_FALSE(sc->setup.knobs.recompute.has_value());
}

TEST(Scenario, SequenceLengthsTakeSizeSuffixes) {
  EXPECT_EQ(parse_scenario_yaml("seq_len: 128K\n", "s.yaml")->setup.seq_len, 131072);
  EXPECT_EQ(parse_scenario_yaml("seq_len: 1M\n", "s.yaml")->setup.seq_len, 1048576);
  EXPECT_FALSE(parse_scenario_yaml("batch: 2K\n", "s.yaml"));  // only lengths take suffixes
}

TEST(Scenario, FilePathsAreRelativeToTheScenario) {
  auto sc = parse_scenario_yaml("model: ../models/x.yaml\ngpu: A100-80G\n", "/data/scenarios/s.yaml");
  ASSERT_TRUE(sc);
  EXPECT_EQ(sc->model, "/data/models/x.yaml");
  EXPECT_EQ(sc->gpu, "A100-80G");  // a name stays a name
}

RC_GTEST_PROP(ScenarioProperty, SetupYamlRoundTrip, ()) {
  TrainingSetup s;
  s.batch = *rc::gen::inRange<std::int64_t>(1, 64);
  if (*rc::gen::arbitrary<bool>()) s.seq_len = *rc::gen::inRange<std::int64_t>(1, 1 << 22);
  s.precision = *rc::gen::element(Precision::bf16, Precision::mixed);
  s.optimizer = *rc::gen::element(OptimizerKind::adamw, OptimizerKind::adamw_8bit, OptimizerKind::sgd, OptimizerKind::none);
  s.optimizer_in_backward = *rc::gen::arbitrary<bool>();
  s.grad_accum = *rc::gen::inRange<std::int64_t>(1, 16);
  s.attention = *rc::gen::element(AttentionKind::flash, AttentionKind::eager);
  s.profile = *rc::gen::element(Profile::native, Profile::pytorch);
  if (*rc::gen::arbitrary<bool>()) {
    ChunkSetting c;
    if (*rc::gen::arbitrary<bool>()) {
      c.chunks = *rc::gen::inRange<std::int64_t>(1, 128);
    } else {
      c.chunk_tokens = *rc::gen::inRange<std::int64_t>(1, 65536);
    }
    s.knobs.mlp_chunks = c;
  }
  if (*rc::gen::arbitrary<bool>()) s.knobs.mlp_mode = *rc::gen::element(MlpMode::paper, MlpMode::tiled);
  if (*rc::gen::arbitrary<bool>()) s.knobs.lm_head_chunks = ChunkSetting{*rc::gen::inRange<std::int64_t>(1, 128), {}};
  if (*rc::gen::arbitrary<bool>()) s.knobs.lm_head_mode = *rc::gen::element(LmHeadMode::recompute, LmHeadMode::forward_grad);
  if (*rc::gen::arbitrary<bool>()) {
    s.knobs.recompute = *rc::gen::element(RecomputeKind::none, RecomputeKind::full, RecomputeKind::selective);
  }
  if (*rc::gen::arbitrary<bool>()) {
    s.knobs.recompute_layers = *rc::gen::container<std::vector<std::int64_t>>(rc::gen::inRange<std::int64_t>(0, 80));
  }
  if (*rc::gen::arbitrary<bool>()) s.knobs.offload_checkpoints = *rc::gen::arbitrary<bool>();

  auto parsed = parse_scenario_yaml(setup_to_yaml(s), "roundtrip.yaml");
  RC_ASSERT(parsed.has_value());
  RC_ASSERT(parsed->setup == s);
}

}  // namespace
}  // namespace mstplan
