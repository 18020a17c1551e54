// Ulysses sequence parallelism (Note [Ulysses step] in builder.cpp): each rank's slice of the
// sequence, the all-to-alls around attention, their bytes and time, and the commands' answers.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string_view>

#include "planner/builder.h"
#include "planner/catalog.h"
#include "planner/collectives.h"
#include "planner/cost_model.h"
#include "planner/gpu_spec.h"
#include "planner/schedule_check.h"
#include "program_util.h"
#include "planner/search.h"
#include "test_util.h"

namespace mstplan {
namespace {

using ::testing::HasSubstr;
using test::ops_with;
using test::saved_bytes_of_layer;

TrainingSetup ulysses(std::int64_t gpus, std::int64_t sp, ZeroStage zero = ZeroStage::none) {
  TrainingSetup s;
  s.parallel.gpus = gpus;
  s.parallel.sp = sp;
  s.parallel.zero = zero;
  return s;
}

const Tensor* first_tensor(const Program& p, std::string_view label, std::int32_t layer) {
  for (const Tensor& t : p.tensors) {
    if (t.label == label && t.layer == layer) return &t;
  }
  return nullptr;
}

TEST(Ulysses, AllToAllsAroundAttentionMoveEachRanksSlice) {
  // tiny-llama (d 64, 4 query heads and 2 key/value heads of 16) over 2 ranks, 34 positions: each
  // rank holds 17 of them. Per layer the forward sends q, k, v (17 x 64 + 2 x 17 x 32 bf16 =
  // 4,352 bytes) and gets the output back (17 x 64 x 2 = 2,176); backward the output's gradient
  // (2,176) and dq, dk, dv (4,352). Two layers: 8 all-to-alls.
  const ModelSpec m = *resolve_model("tiny-llama");
  const Program p = build_program(m, ulysses(2, 2), Plan::vanilla(), 34);
  ASSERT_EQ(check_schedule(p), std::nullopt);
  EXPECT_EQ(p.seq_len, 34);
  EXPECT_EQ(p.local_seq_len(), 17);
  const std::vector<const Op*> a2a = ops_with(p, OpCode::all_to_all);
  ASSERT_EQ(a2a.size(), 8u);
  const std::int64_t sent[] = {4'352, 2'176, 4'352, 2'176, 2'176, 4'352, 2'176, 4'352};
  for (std::size_t i = 0; i < a2a.size(); ++i) {
    EXPECT_EQ(a2a[i]->m, 2);
    EXPECT_EQ(a2a[i]->n, sent[i]) << a2a[i]->label;
  }
  // Attention runs on all 34 positions of 2 query heads; everything else on the rank's 17.
  for (const Op* op : ops_with(p, OpCode::attention)) {
    EXPECT_EQ(op->m, 2);
    EXPECT_EQ(op->n, 34);
    EXPECT_EQ(op->k, 34);
  }
  EXPECT_EQ(p.tensors[p.tokens].elements, 17);
  EXPECT_EQ(first_tensor(p, "attn.lse", 0)->elements, 2 * 34);
  // The sequence-split q dies in the all-to-all; attention saves the head-split copy.
  EXPECT_EQ(first_tensor(p, "attn.q", 0)->kind, TensorKind::transient);
  EXPECT_EQ(first_tensor(p, "attn.q.heads", 0)->kind, TensorKind::saved);
  EXPECT_EQ(first_tensor(p, "attn.q.heads", 0)->elements, 17 * 64);
  for (const Loop& loop : p.loops) EXPECT_EQ(loop.rows, 17);  // MLP and LM head: the rank's positions, all labelled
}

TEST(Ulysses, EachRankKeepsItsSliceAndTheOutputTwice) {
  // A layer's saved tensors with the sequence split over 2 ranks at 32 positions are those of one
  // rank at 16, plus the head-split copy of attention's output (16 x 64 bf16 = 2,048 bytes): q, k,
  // v are kept split by heads instead of by sequence (the same elements), and lse is 2 heads x 32
  // positions instead of 4 x 16.
  const ModelSpec m = *resolve_model("tiny-llama");
  const Program one = build_program(m, TrainingSetup{}, Plan::vanilla(), 16);
  const Program split = build_program(m, ulysses(2, 2), Plan::vanilla(), 32);
  EXPECT_EQ(saved_bytes_of_layer(split, 0), saved_bytes_of_layer(one, 0) + 2'048);
  TrainingSetup pytorch = ulysses(2, 2);
  pytorch.profile = Profile::pytorch;
  TrainingSetup pytorch_one;
  pytorch_one.profile = Profile::pytorch;
  // PyTorch keeps the output twice on one GPU already (SDPA's output and o_proj's contiguous
  // copy). Under Ulysses the head-split q, k, v replace the rotated ones, and the contiguous copy,
  // made before the all-to-all, dies in it; o_proj saves the sequence-split output instead: the
  // same bytes.
  EXPECT_EQ(saved_bytes_of_layer(build_program(m, pytorch, Plan::vanilla(), 32), 0),
            saved_bytes_of_layer(build_program(m, pytorch_one, Plan::vanilla(), 16), 0));
}

TEST(Ulysses, KeyValueHeadsAreReplicatedWhenFewerThanTheRanks) {
  // tiny-llama's 2 key/value heads over 4 ranks: each rank gets 1 query head and 1 key/value head,
  // k and v first repeated to 4 heads (8 positions x 4 x 16 = 512 elements), so each rank receives
  // all 32 positions of one head (32 x 16 = 512). The q, k, v all-to-all sends
  // (8 x 64 + 512 + 512) x 2 = 3,072 bytes.
  const ModelSpec m = *resolve_model("tiny-llama");
  const Program p = build_program(m, ulysses(4, 4), Plan::vanilla(), 32);
  ASSERT_EQ(check_schedule(p), std::nullopt);
  EXPECT_EQ(first_tensor(p, "attn.k.replicated", 0)->elements, 512);
  EXPECT_EQ(first_tensor(p, "attn.k.heads", 0)->elements, 512);
  EXPECT_EQ(ops_with(p, OpCode::all_to_all).front()->n, 3'072);
  EXPECT_EQ(ops_with(p, OpCode::attention).front()->m, 1);
  EXPECT_NE(first_tensor(p, "attn.dk.replicated", 0), nullptr);  // the repeated heads' gradients, summed
}

TEST(Ulysses, AllToAllTimeIsTheCollectiveModelAndTokensCountSequences) {
  // llama3-8b over one DGX-H100 node, all 8 ranks on one sequence of 8,192 positions: 1,024 per
  // rank. The q, k, v all-to-all sends 1,024 x (4,096 + 2 x 1,024) x 2 = 12,582,912 bytes, 7/8 of
  // them over NVLink (450 GB/s at 90%), plus the 5 us launch.
  const ModelSpec m = *resolve_model("llama3-8b");
  const GpuSpec gpu = *resolve_gpu("H100-80G");
  const ClusterSpec cluster = *cluster_for_ranks(std::nullopt, gpu, 8);
  const Program p = build_program(m, ulysses(8, 8, ZeroStage::parameters), Plan::vanilla(), 8192);
  OpId first = 0;
  while (p.ops[first].code != OpCode::all_to_all) ++first;
  EXPECT_EQ(p.ops[first].n, 12'582'912);
  const double expected = 7.0 / 8.0 * 12'582'912.0 / (450e9 * 0.90) + 5e-6;
  EXPECT_NEAR(op_seconds(p, first, gpu, CostOptions{}, &cluster), expected, 1e-12);
  // 8 ranks on one sequence: 8,192 tokens per step (not 8 x 8,192).
  const StepTime t = estimate_time(p, gpu, 1, CostOptions{}, &cluster);
  EXPECT_NEAR(t.tokens_per_s, 8192.0 / t.step_seconds, 1e-9 * t.tokens_per_s);
  // Compute waits for the all-to-alls: they are exposed, not hidden behind compute.
  EXPECT_GT(t.exposed_comm_seconds, 0.0);
}

TEST(Ulysses, SplittingTheSequenceReachesFurtherThanDataParallelism) {
  // The same 8 H100s with ZeRO-3: split over 8, one sequence's activations are spread over all
  // of them, so auto reaches (nearly) 8 times as far as with each rank on its own sequence.
  const ModelSpec m = *resolve_model("llama3-8b");
  const GpuSpec gpu = *resolve_gpu("H100-80G");
  SearchOptions options;
  options.cluster = *cluster_for_ranks(std::nullopt, gpu, 8);
  const Method automatic[] = {Method::automatic};
  const SearchResult dp = search(m, gpu, ulysses(8, 1, ZeroStage::parameters), automatic, options);
  const SearchResult sp = search(m, gpu, ulysses(8, 8, ZeroStage::parameters), automatic, options);
  ASSERT_TRUE(dp.methods.front().at_max && sp.methods.front().at_max);
  const std::int64_t longest = sp.methods.front().at_max->seq_len;
  EXPECT_EQ(longest % 8, 0);
  EXPECT_GT(longest, 7 * dp.methods.front().at_max->seq_len);
}

TEST(Ulysses, ChunkCountsAreTheRanksPositions) {
  // 65,536 tokens split over 8 ranks: each holds 8,192 positions, so MLP chunks of 4,096 tokens are
  // 2 per rank (not 16), as the builder runs them.
  const ModelSpec m = *resolve_model("llama3-8b");
  const GpuSpec gpu = *resolve_gpu("H100-80G");
  SearchOptions options;
  options.cluster = *cluster_for_ranks(std::nullopt, gpu, 8);
  const TrainingSetup s = ulysses(8, 8, ZeroStage::parameters);
  Evaluator evaluator(m, gpu, s, options);
  const Evaluation e = evaluator.evaluate(Plan::mst_reference(m), 65'536);
  EXPECT_EQ(e.positions, 8'192);
  EXPECT_EQ(e.mlp_chunks, 2);
  EXPECT_THAT(describe_plan(e.plan, m, e.positions), ::testing::StartsWith("MLP 2 chunks of 4096 tokens"));
}

TEST(Ulysses, TradeOffsOverLayoutsAreNotDominated) {
  const ModelSpec m = *resolve_model("llama3.2-1b");
  const GpuSpec gpu = *resolve_gpu("H100-80G");
  SearchOptions options;
  options.cluster = *cluster_for_ranks(std::nullopt, gpu, 8);
  TrainingSetup s = ulysses(8, 1, ZeroStage::parameters);
  s.seq_len.reset();
  const std::vector<LayoutResult> layouts = search_layouts(m, gpu, s, options);
  const std::vector<LayoutPoint> front = layouts_pareto(layouts);
  ASSERT_GE(front.size(), 2U);
  // Longest first, each faster than the one before; the first is the longest of any layout.
  std::int64_t longest = 0;
  for (const LayoutResult& l : layouts) {
    if (l.longest) longest = std::max(longest, l.longest->seq_len);
  }
  EXPECT_EQ(front.front().plan.seq_len, longest);
  for (std::size_t i = 1; i < front.size(); ++i) {
    EXPECT_LT(front[i].plan.seq_len, front[i - 1].plan.seq_len);
    EXPECT_GT(front[i].plan.time.tokens_per_s, front[i - 1].plan.time.tokens_per_s);
  }
  // No layout's point beats a point of the front on both.
  for (const LayoutResult& l : layouts) {
    for (const Evaluation& e : l.pareto) {
      for (const LayoutPoint& p : front) {
        EXPECT_FALSE(e.seq_len > p.plan.seq_len && e.time.tokens_per_s > p.plan.time.tokens_per_s);
      }
    }
  }
  const auto r = test::run({"--model", "llama3.2-1b", "--gpu", "H100-80G", "--gpus", "8", "--zero", "3"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, ::testing::HasSubstr("trade-offs over the layouts (longest sequence against speed, none better on both):"));
  EXPECT_THAT(r.out, ::testing::ContainsRegex("tokens/s  ZeRO-3, Ulysses over [248]: MLP"));
}

TEST(Ulysses, HopperAttentionRunsAtItsOwnEfficiency) {
  // The H100 spec says FlashAttention-2 reaches 35% of its bf16 peak; an A100's attention uses the
  // cost model's 50%. The same attention op costs 0.50 / 0.35 times the time at the H100's rate.
  const GpuSpec h100 = *resolve_gpu("H100-80G");
  EXPECT_DOUBLE_EQ(h100.attention_efficiency, 0.35);
  EXPECT_DOUBLE_EQ(resolve_gpu("A100-80G")->attention_efficiency, 0.0);
  const Program p = build_program(*resolve_model("llama3-8b"), TrainingSetup{}, Plan::vanilla(), 65536);
  OpId attention = 0;
  while (p.ops[attention].code != OpCode::attention) ++attention;
  GpuSpec default_rate = h100;
  default_rate.attention_efficiency = 0;
  const double at_default = op_seconds(p, attention, default_rate) - 5e-6;
  EXPECT_NEAR(op_seconds(p, attention, h100) - 5e-6, at_default * 0.50 / 0.35, 1e-9 * at_default);
  // A spec's value is a fraction of the peak.
  std::string text = gpu_to_yaml(h100);
  EXPECT_THAT(text, HasSubstr("attention_efficiency: 0.35\n"));
  text.replace(text.find("attention_efficiency: 0.35"), 26, "attention_efficiency: 1.5");
  const auto bad = parse_gpu_yaml(text, "g.yaml");
  ASSERT_FALSE(bad.has_value());
  EXPECT_THAT(bad.error().message, HasSubstr("g.yaml"));
  EXPECT_THAT(bad.error().message, HasSubstr("attention_efficiency"));
}

TEST(UlyssesCli, PlansAndRefusesWithTheFieldAndValue) {
  const auto r = test::run({"--model", "llama3-8b", "--gpu", "H100-80G", "--gpus", "8", "--zero", "3", "--sp", "8",
                            "--method", "mst", "--seq", "1M"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("8 GPUs with ZeRO-3, Ulysses sequence parallelism over 8"));
  EXPECT_THAT(r.out, ::testing::ContainsRegex("  3 +8 +1 +5.61 .*\\(this setup\\)"));
  struct Case {
    std::vector<std::string> args;
    const char* message;
  };
  const std::vector<Case> cases = {
      {{"--model", "llama3-8b", "--gpus", "8", "--sp", "3"}, "field 'sp': 3: does not divide the 8 GPUs (gpus)"},
      {{"--model", "tiny-llama", "--gpus", "8", "--sp", "8"},
       "field 'sp': 8: Ulysses splits the attention heads; tiny-llama has 4 query heads, which it does not divide"},
      {{"--model", "llama3-8b", "--gpus", "2", "--sp", "2", "--seq", "1001"},
       "field 'sp': 2: does not divide the sequence of 1001 tokens (seq_len); give a multiple of 2"},
      {{"--model", "llama3-8b", "--gpus", "2", "--sp", "2", "--profile", "pytorch", "--framework", "transformers-4.44"},
       "framework transformers-4.44 is not modelled with it, give transformers-5"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = {"--gpu", "H100-80G"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    const auto bad = test::run(args);
    EXPECT_EQ(bad.code, 3) << c.message;
    EXPECT_THAT(bad.err, HasSubstr(c.message));
    EXPECT_TRUE(bad.out.empty());
  }
  EXPECT_EQ(test::run({"--model", "llama3-8b", "--gpu", "H100-80G", "--gpus", "auto", "--seq", "1M", "--sp", "2"}).code, 2);
}

TEST(UlyssesCli, ScenariosAndPlanFilesCarryTheDegree) {
  test::ScratchDir dir;
  const std::string bad = dir.write("s.yaml", "model: llama3-8b\ngpu: H100-80G\ngpus: 4\nsp: 4\nseq_len: 1002\n");
  const auto refused = test::run({"--scenario", bad});
  EXPECT_EQ(refused.code, 3);
  EXPECT_THAT(refused.err, HasSubstr(bad + ": field 'sp': 4: does not divide the sequence of 1002 tokens"));
  const std::string plan = (dir.path() / "p.yaml").string();
  const auto w = test::run({"--model", "tiny-llama", "--gpu", "A100-80G", "--gpus", "4", "--zero", "3", "--sp", "2",
                            "--seq", "256", "--out", plan});
  ASSERT_EQ(w.code, 0) << w.err;
  EXPECT_THAT(test::source_file_at(plan), HasSubstr("sp: 2\n"));
  const auto show = test::run({"show", plan});
  ASSERT_EQ(show.code, 0) << show.err;
  EXPECT_THAT(show.out, HasSubstr(": the same"));
}

}  // namespace
}  // namespace mstplan
