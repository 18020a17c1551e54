// The step program and its analysis: hand-checked memory arithmetic, the schedule check, and an
// independent liveness oracle that must agree with the analysis op by op.
#include <algorithm>
#include <map>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include "planner/analysis.h"
#include "planner/builder.h"
#include "planner/catalog.h"
#include "planner/expand.h"
#include "planner/schedule_check.h"

namespace mstplan {
namespace {

const AllocatorModel kExact{1};  // no rounding: requested bytes, for hand arithmetic

// The oracle: unroll everything, give each tensor instance the interval [first op that touches
// it, last op that touches it], and sum the intervals that cover each op. No loops, no events,
// no skipping: a different algorithm from analyze() and timeline().
std::vector<std::int64_t> oracle_live_bytes(const Program& p, std::int64_t* host_peak = nullptr) {
  const FlatProgram flat = expand(p);
  const std::size_t n = flat.ops.size();
  std::vector<std::int64_t> first(flat.instances.size(), -1), last(flat.instances.size(), -1);
  for (std::size_t i = 0; i < n; ++i) {
    for (const auto* list : {&flat.ops[i].inputs, &flat.ops[i].outputs}) {
      for (std::uint32_t inst : *list) {
        if (first[inst] < 0) first[inst] = static_cast<std::int64_t>(i);
        last[inst] = static_cast<std::int64_t>(i);
      }
    }
  }
  std::vector<std::int64_t> diff(n + 1, 0), host(n + 1, 0);
  for (std::size_t inst = 0; inst < flat.instances.size(); ++inst) {
    if (first[inst] < 0) continue;
    const Tensor& t = p.tensors[flat.instances[inst].tensor];
    auto& d = t.device == Device::host ? host : diff;
    d[static_cast<std::size_t>(first[inst])] += t.bytes;
    d[static_cast<std::size_t>(last[inst]) + 1] -= t.bytes;
  }
  std::vector<std::int64_t> live(n);
  std::int64_t running = 0, host_running = 0, host_max = 0;
  for (std::size_t i = 0; i < n; ++i) {
    running += diff[i];
    host_running += host[i];
    host_max = std::max(host_max, host_running);
    live[i] = running;
  }
  if (host_peak) *host_peak = host_max;
  return live;
}

void expect_analysis_matches_oracle(const Program& p) {
  ASSERT_EQ(check_schedule(p), std::nullopt);
  std::int64_t oracle_host = 0;
  const auto oracle = oracle_live_bytes(p, &oracle_host);
  const auto line = timeline(p, kExact);
  ASSERT_EQ(line.size(), oracle.size());
  for (std::size_t i = 0; i < line.size(); ++i) {
    ASSERT_EQ(line[i].during.live_bytes, oracle[i]) << "at " << op_name(p, line[i].op, line[i].iteration);
  }
  const Analysis a = analyze(p, kExact);
  EXPECT_EQ(a.peak_live_bytes, *std::max_element(oracle.begin(), oracle.end()));
  EXPECT_EQ(a.peak.allocated_bytes, a.peak_live_bytes);  // granularity 1
  EXPECT_EQ(a.host_peak_bytes, oracle_host);
  // The peak op is one where the oracle reaches the peak.
  bool found = false;
  for (std::size_t i = 0; i < line.size(); ++i) {
    found = found || (line[i].op == a.peak_op && line[i].iteration == a.peak_iteration && oracle[i] == a.peak_live_bytes);
  }
  EXPECT_TRUE(found) << op_name(p, a.peak_op, a.peak_iteration);
}

ModelSpec model(const std::string& name) { return *resolve_model(name); }

// Bytes of `kind` during the first executed op whose name is `name`.
std::int64_t kind_bytes_at(const Program& p, const std::string& name, TensorKind kind) {
  for (const TimelinePoint& point : timeline(p, kExact)) {
    if (op_name(p, point.op, point.iteration) == name) return point.during.by_kind[static_cast<std::size_t>(kind)];
  }
  ADD_FAILURE() << "no op " << name;
  return -1;
}

// tiny-llama: d 64, qd 64, kvd 32, 4 heads, I 176, 2 layers. Per token and layer the native
// step keeps (Note [Native step]): h, n1, h_mid, n2 (4 x 2 x 64 = 512), rstd1, rstd2 (8), q, o
// (2 x 2 x 64 = 256), k, v (2 x 2 x 32 = 128), lse (4 heads x 4 = 16), gate and up (2 x 2 x 176
// = 704): A = 1624 bytes. When the final norm runs (T = 2 x 32 tokens), saved activations are
// L x A x T plus h_L (128 / token) and the norm's output and statistic (128 + 4 / token):
// 64 x (2 x 1624 + 260) = 224,512 bytes. This is MST.md's S (L A) term for the standard model.
TEST(Program, SavedActivationsMatchTheClosedForm) {
  TrainingSetup setup;
  setup.batch = 2;
  const Program p = build_program(model("tiny-llama"), setup, Plan::vanilla(), 32);
  EXPECT_EQ(kind_bytes_at(p, "final_norm.fwd", TensorKind::saved), 64 * (2 * 1624 + 260));
  EXPECT_EQ(kind_bytes_at(p, "final_norm.fwd", TensorKind::checkpoint), 0);
}

// With full recompute (S (k A) with k = L checkpoints of one hidden state each): checkpoints are
// h_0 and h_1 (2 x 128 bytes / token) and only h_L, nf and rstd are saved: 64 x 2 x 128 = 16,384
// and 64 x 260 = 16,640.
TEST(Program, CheckpointsMatchTheClosedForm) {
  TrainingSetup setup;
  setup.batch = 2;
  const Program p = build_program(model("tiny-llama"), setup, Plan::recompute_all(), 32);
  EXPECT_EQ(kind_bytes_at(p, "final_norm.fwd", TensorKind::checkpoint), 16'384);
  EXPECT_EQ(kind_bytes_at(p, "final_norm.fwd", TensorKind::saved), 16'640);
}

// The LM head of tiny-llama (V = 515, d = 64) at S = 33 (32 labelled positions), batch 1, in 4
// chunks of 8 positions, logits recomputed: during the backward loss op of chunk 0, the chunk's
// fp32 logits (8 x 515 x 4 = 16,480) and its bf16 dlogits (8 x 515 x 2 = 8,240) are transient,
// besides the fp32 loss (4) and dnf, allocated before the loop (33 x 64 x 2 = 4,224). Unchunked
// and kept, the logits of all 32 positions are saved (32 x 515 x 4 = 65,920) and their dlogits
// transient (32 x 515 x 2 = 32,960).
TEST(Program, LmHeadChunksShrinkTheLogits) {
  TrainingSetup setup;
  Plan chunked = Plan::recompute_all();
  chunked.lm_head = ChunkSetting{4, {}};
  chunked.lm_head_mode = LmHeadMode::recompute;
  const Program p = build_program(model("tiny-llama"), setup, chunked, 33);
  EXPECT_EQ(kind_bytes_at(p, "lm_head.loss.bwd[chunk 0]", TensorKind::transient), 16'480 + 8'240 + 4 + 4'224);
  EXPECT_EQ(kind_bytes_at(p, "lm_head.loss.bwd[chunk 0]", TensorKind::saved), 0 + 32 * 4 /* lse of 32 rows */ +
                                                                                     33 * (128 + 4) /* nf, rstd */ +
                                                                                     33 * 128 /* h_L */);
  const Program plain = build_program(model("tiny-llama"), setup, Plan::vanilla(), 33);
  EXPECT_EQ(kind_bytes_at(plain, "lm_head.loss.bwd[chunk 0]", TensorKind::transient), 32'960 + 4 + 4'224);
}

// Chunks of unequal length: 10 positions in 4 MLP chunks are 3, 3, 2, 2 (two loops).
TEST(Program, UnevenChunksFormTwoLoops) {
  Plan plan = Plan::vanilla();
  plan.mlp = ChunkSetting{4, {}};
  plan.mlp_mode = MlpMode::tiled;
  const Program p = build_program(model("tiny-llama"), TrainingSetup{}, plan, 10);
  std::vector<std::pair<std::int64_t, std::int64_t>> mlp;  // (rows, iterations) of layer 0's forward loops
  for (const Loop& l : p.loops) {
    if (l.block == ChunkedBlock::mlp && p.ops[l.first_op].layer == 0 && p.ops[l.first_op].pass == Pass::forward) {
      mlp.emplace_back(l.rows, l.iterations);
    }
  }
  EXPECT_THAT(mlp, ::testing::ElementsAre(std::pair<std::int64_t, std::int64_t>{3, 2},
                                          std::pair<std::int64_t, std::int64_t>{2, 2}));
  expect_analysis_matches_oracle(p);
}

TEST(Program, NamesSayWhereTensorsLive) {
  Plan plan = Plan::mst_reference(model("tiny-llama"));
  const Program p = build_program(model("tiny-llama"), TrainingSetup{}, plan, 200);
  std::vector<std::string> names;
  for (OpId i = 0; i < p.ops.size(); ++i) names.push_back(op_name(p, i, 1));
  EXPECT_THAT(names, ::testing::Contains("layer.1.bwd.mlp.down.dx[chunk 1]"));
  EXPECT_THAT(names, ::testing::Contains("layer.0.recompute.attn.q"));
  EXPECT_THAT(names, ::testing::Contains("lm_head.logits.fwd[chunk 1]"));
  EXPECT_THAT(names, ::testing::Contains("layer.1.attn.q.weight.adamw"));
  std::vector<std::string> tensors;
  for (TensorId t = 0; t < p.tensors.size(); ++t) tensors.push_back(tensor_name(p, t, 2));
  EXPECT_THAT(tensors, ::testing::Contains("layer.0.recompute.mlp.up[chunk 2]"));
  EXPECT_THAT(tensors, ::testing::Contains("lm_head.weight.grad"));
}

// Every shape, mode and setup the builder knows, against the oracle.
TEST(Program, AnalysisAgreesWithTheOracleAcrossShapesAndPlans) {
  for (const char* name : {"tiny-llama", "tiny-qwen2", "tiny-gemma2"}) {
    for (int variant = 0; variant < 8; ++variant) {
      const ModelSpec m = model(name);
      TrainingSetup setup;
      setup.batch = 1 + variant % 2;
      Plan plan = variant < 2 ? Plan::vanilla() : Plan::mst_reference(m);
      if (variant == 3) plan.mlp_mode = MlpMode::paper;
      if (variant == 4) plan.lm_head_mode = LmHeadMode::forward_grad;
      if (variant == 5) plan.offload_checkpoints = true;
      if (variant == 6) {
        plan.recompute = RecomputeKind::selective;
        setup.attention = AttentionKind::eager;
      }
      if (variant == 7) {
        plan.recompute_layers = {1};
        setup.optimizer_in_backward = false;
        setup.precision = Precision::mixed;
      }
      for (Profile profile : {Profile::native, Profile::pytorch}) {
        setup.profile = profile;
        SCOPED_TRACE(fmt::format("{} variant {} profile {}", name, variant, to_string(profile)));
        expect_analysis_matches_oracle(build_program(m, setup, plan, 37 + 11 * variant));
      }
    }
  }
}

RC_GTEST_PROP(ProgramProperty, AnalysisAgreesWithTheOracle, ()) {
  const ModelSpec m = model(*rc::gen::element<std::string>("tiny-llama", "tiny-qwen2", "tiny-gemma2"));
  TrainingSetup setup;
  setup.batch = *rc::gen::inRange<std::int64_t>(1, 3);
  setup.profile = *rc::gen::element(Profile::native, Profile::pytorch);
  setup.precision = *rc::gen::element(Precision::bf16, Precision::mixed);
  setup.optimizer = *rc::gen::element(OptimizerKind::adamw, OptimizerKind::adamw_8bit, OptimizerKind::sgd, OptimizerKind::none);
  setup.optimizer_in_backward = *rc::gen::arbitrary<bool>();
  setup.grad_accum = *rc::gen::inRange<std::int64_t>(1, 3);
  setup.attention = *rc::gen::element(AttentionKind::flash, AttentionKind::eager);
  Plan plan;
  plan.mlp = ChunkSetting{*rc::gen::inRange<std::int64_t>(1, 9), {}};
  plan.mlp_mode = *rc::gen::element(MlpMode::paper, MlpMode::tiled);
  plan.lm_head = ChunkSetting{*rc::gen::inRange<std::int64_t>(1, 9), {}};
  plan.lm_head_mode = *rc::gen::element(LmHeadMode::keep, LmHeadMode::recompute, LmHeadMode::forward_grad);
  plan.recompute = *rc::gen::element(RecomputeKind::none, RecomputeKind::full, RecomputeKind::selective);
  if (*rc::gen::arbitrary<bool>()) plan.recompute_layers = {0};
  plan.offload_checkpoints = *rc::gen::arbitrary<bool>();
  const std::int64_t seq = *rc::gen::inRange<std::int64_t>(2, 40);
  const Program p = build_program(m, setup, plan, seq);
  RC_ASSERT(!check_schedule(p).has_value());
  const auto oracle = oracle_live_bytes(p);
  const auto line = timeline(p, kExact);
  RC_ASSERT(line.size() == oracle.size());
  for (std::size_t i = 0; i < line.size(); ++i) RC_ASSERT(line[i].during.live_bytes == oracle[i]);
  RC_ASSERT(analyze(p, kExact).peak_live_bytes == *std::max_element(oracle.begin(), oracle.end()));
}

// Peak memory never decreases with the sequence length (fixed chunk counts).
RC_GTEST_PROP(ProgramProperty, PeakGrowsWithSequenceLength, ()) {
  const ModelSpec m = model(*rc::gen::element<std::string>("tiny-llama", "tiny-gemma2"));
  Plan plan = *rc::gen::element(Plan::vanilla(), Plan::recompute_all(), Plan::mst_reference(m));
  plan.mlp = ChunkSetting{*rc::gen::inRange<std::int64_t>(1, 6), {}};
  plan.lm_head = ChunkSetting{*rc::gen::inRange<std::int64_t>(1, 6), {}};
  const std::int64_t seq = *rc::gen::inRange<std::int64_t>(8, 300);
  const std::int64_t more = seq + *rc::gen::inRange<std::int64_t>(1, 50);
  const AllocatorModel native = AllocatorModel::for_profile(Profile::native);
  RC_ASSERT(analyze(build_program(m, TrainingSetup{}, plan, seq), native).peak.allocated_bytes <=
            analyze(build_program(m, TrainingSetup{}, plan, more), native).peak.allocated_bytes);
}

// With tiled MLP and recomputed LM head, more chunks never raise the live peak.
RC_GTEST_PROP(ProgramProperty, MoreChunksNeverRaiseThePeak, ()) {
  const ModelSpec m = model(*rc::gen::element<std::string>("tiny-llama", "tiny-qwen2", "tiny-gemma2"));
  Plan plan = Plan::mst_reference(m);
  const std::int64_t seq = *rc::gen::inRange<std::int64_t>(16, 400);
  const std::int64_t mlp = *rc::gen::inRange<std::int64_t>(1, 12);
  const std::int64_t lm = *rc::gen::inRange<std::int64_t>(1, 12);
  plan.mlp = ChunkSetting{mlp, {}};
  plan.lm_head = ChunkSetting{lm, {}};
  Plan more = plan;
  if (*rc::gen::arbitrary<bool>()) {
    more.mlp = ChunkSetting{mlp + *rc::gen::inRange<std::int64_t>(1, 8), {}};
  } else {
    more.lm_head = ChunkSetting{lm + *rc::gen::inRange<std::int64_t>(1, 8), {}};
  }
  RC_ASSERT(analyze(build_program(m, TrainingSetup{}, more, seq), kExact).peak_live_bytes <=
            analyze(build_program(m, TrainingSetup{}, plan, seq), kExact).peak_live_bytes);
}

// Checkpointing more layers never raises the peak.
RC_GTEST_PROP(ProgramProperty, MoreCheckpointedLayersNeverRaiseThePeak, ()) {
  const ModelSpec m = model(*rc::gen::element<std::string>("tiny-qwen2", "tiny-gemma2"));  // 3 and 4 layers
  Plan fewer = Plan::recompute_all();
  fewer.mlp_mode = *rc::gen::element(MlpMode::paper, MlpMode::tiled);
  fewer.offload_checkpoints = *rc::gen::arbitrary<bool>();
  std::vector<std::int64_t> all;
  for (std::int64_t l = 0; l < m.num_layers; ++l) all.push_back(l);
  const auto subset = *rc::gen::container<std::vector<bool>>(static_cast<std::size_t>(m.num_layers), rc::gen::arbitrary<bool>());
  for (std::int64_t l = 0; l < m.num_layers; ++l) {
    if (subset[static_cast<std::size_t>(l)]) fewer.recompute_layers.push_back(l);
  }
  RC_PRE(!fewer.recompute_layers.empty());
  Plan more = fewer;
  more.recompute_layers = all;
  const std::int64_t seq = *rc::gen::inRange<std::int64_t>(16, 300);
  RC_ASSERT(analyze(build_program(m, TrainingSetup{}, more, seq), kExact).peak_live_bytes <=
            analyze(build_program(m, TrainingSetup{}, fewer, seq), kExact).peak_live_bytes);
}

}  // namespace
}  // namespace mstplan

#include <fstream>
#include <sstream>

#include <fmt/core.h>

namespace mstplan {
namespace {

// program.h's usage example, compiled and run here; the next test holds the header to these lines.
std::string usage_example(const ModelSpec& model, const TrainingSetup& setup) {
  ::testing::internal::CaptureStdout();
  const Program p = build_program(model, setup, Plan::mst_reference(model), 65536);
  for (OpId i = 0; i < p.ops.size(); ++i) fmt::print("{} {}\n", op_name(p, i), to_string(p.ops[i].kind));
  std::fflush(stdout);
  return ::testing::internal::GetCapturedStdout();
}

TEST(ProgramHeader, UsageExampleRuns) {
  const std::string out = usage_example(*resolve_model("llama3-8b"), TrainingSetup{});
  // One line per op (the whole output would flood a failure message: compare its parts).
  EXPECT_TRUE(out.starts_with("step.begin begin\nembedding.fwd embedding\nlayer.0.fwd.attn_norm norm\n"));
  EXPECT_NE(out.find("layer.31.bwd.attention.grad attention backward\n"), std::string::npos);
  EXPECT_TRUE(out.ends_with("embed.weight.adamw optimizer\nstep.end end\n"));
}

TEST(ProgramHeader, UsageExampleIsTheOneAbove) {
  std::ifstream header(std::string(MSTPLAN_SOURCE_DIR) + "/planner/program.h");
  std::stringstream text;
  text << header.rdbuf();
  EXPECT_THAT(text.str(), ::testing::HasSubstr("//   const Program p = build_program(model, setup, Plan::mst_reference(model), 65536);\n"
                                               "//   for (OpId i = 0; i < p.ops.size(); ++i) fmt::print(\"{} {}\\n\", op_name(p, i), "
                                               "to_string(p.ops[i].kind));\n"));
}

}  // namespace
}  // namespace mstplan
