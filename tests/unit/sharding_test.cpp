// Data-parallel steps (Note [Sharded step] in builder.cpp): what one rank keeps under each ZeRO
// stage, the collectives its step program gains, their time, and the commands' answers.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <string_view>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "planner/builder.h"
#include "planner/catalog.h"
#include "planner/collectives.h"
#include "planner/cost_model.h"
#include "planner/liveness.h"
#include "planner/schedule_check.h"
#include "planner/search.h"
#include "planner/static_memory.h"
#include "test_util.h"

namespace mstplan {
namespace {

using ::testing::HasSubstr;

ModelSpec model(const char* name) { return *resolve_model(name); }

TrainingSetup ranks(std::int64_t gpus, ZeroStage zero) {
  TrainingSetup s;
  s.parallel.gpus = gpus;
  s.parallel.zero = zero;
  return s;
}

std::int64_t count_ops(const Program& p, OpCode code) {
  std::int64_t n = 0;
  for (const Op& op : p.ops) n += op.code == code ? 1 : 0;
  return n;
}

TEST(Sharding, StaticBytesPerRankOfLlama3_8bOnEightGpus) {
  // llama3-8b has 8,030,261,248 parameters; every parameter's size is a multiple of 8, so a
  // 1/8 shard is exact. bf16 weights (2 bytes), bf16 m and v (2 + 2), bf16 gradients (2).
  const ModelSpec m = model("llama3-8b");
  const std::int64_t n = 8'030'261'248;
  const StaticMemory none = static_memory(m, ranks(8, ZeroStage::none));
  EXPECT_EQ(none.weights_bytes, 2 * n);          // 16,060,522,496
  EXPECT_EQ(none.optimizer_state_bytes, 4 * n);  // nothing sharded: as on one GPU
  const StaticMemory one = static_memory(m, ranks(8, ZeroStage::optimizer));
  EXPECT_EQ(one.weights_bytes, 2 * n);
  EXPECT_EQ(one.optimizer_state_bytes, 4 * n / 8);  // 4,015,130,624
  // ZeRO-2 with the optimizer after backward keeps a gradient shard per parameter: 2 n / 8.
  TrainingSetup two = ranks(8, ZeroStage::gradients);
  two.optimizer_in_backward = false;
  EXPECT_EQ(static_memory(m, two).gradient_bytes, 2 * n / 8);  // 2,007,565,312
  two.parallel.zero = ZeroStage::optimizer;                     // ZeRO-1 keeps them whole
  EXPECT_EQ(static_memory(m, two).gradient_bytes, 2 * n);
  const StaticMemory three = static_memory(m, ranks(8, ZeroStage::parameters));
  EXPECT_EQ(three.weights_bytes, 2 * n / 8);
  EXPECT_EQ(three.total_bytes(), 6 * n / 8);  // 6,022,695,936: weights and state, no gradients kept
  // Mixed precision: the fp32 master copy is optimizer state to ZeRO (4 n / 8 bytes per rank).
  TrainingSetup mixed = ranks(8, ZeroStage::optimizer);
  mixed.precision = Precision::mixed;
  EXPECT_EQ(static_memory(m, mixed).master_weights_bytes, 4 * n / 8);
}

TEST(Sharding, ShardsRoundUpPerParameter) {
  // tiny-llama on 3 ranks: embed.weight is 515 x 64 = 32,960 elements, ceil(32,960 / 3) = 10,987
  // elements per rank, 21,974 bytes in bf16; a 64-element norm weight keeps ceil(64 / 3) = 22.
  const ModelSpec m = model("tiny-llama");
  const Program p = build_program(m, ranks(3, ZeroStage::parameters), Plan::vanilla(), 16);
  bool saw_embed = false, saw_norm = false;
  for (TensorId t : p.outputs(p.ops.front())) {
    const Tensor& x = p.tensors[t];
    if (x.kind != TensorKind::weight) continue;
    const ParamTensor& param = p.params[static_cast<std::size_t>(x.param)];
    if (param.name == "embed.weight") {
      EXPECT_EQ(x.elements, 10'987);
      EXPECT_EQ(x.bytes, 21'974);
      saw_embed = true;
    }
    if (param.name == "final_norm.weight") {
      EXPECT_EQ(x.elements, 22);
      saw_norm = true;
    }
  }
  EXPECT_TRUE(saw_embed && saw_norm);
}

TEST(Sharding, ZeroThreeGathersEachBlockAndReduceScattersEachGradient) {
  // tiny-llama, 2 layers, untied head. All-gathers: forward embed, layer 0, layer 1, the head
  // (final norm + LM head); backward layer 1, layer 0: 6. One reduce-scatter per parameter.
  const ModelSpec m = model("tiny-llama");
  const Program p = build_program(m, ranks(4, ZeroStage::parameters), Plan::vanilla(), 33);
  ASSERT_EQ(check_schedule(p), std::nullopt);
  EXPECT_EQ(count_ops(p, OpCode::all_gather), 6);
  EXPECT_EQ(count_ops(p, OpCode::reduce_scatter), static_cast<std::int64_t>(p.params.size()));
  EXPECT_EQ(count_ops(p, OpCode::all_reduce), 0);
  for (const Op& op : p.ops) {
    if (op.code != OpCode::reduce_scatter) continue;
    const Tensor& full = p.tensors[p.inputs(op)[0]];
    const Tensor& shard = p.tensors[p.outputs(op)[0]];
    EXPECT_EQ(shard.elements, (full.elements + 3) / 4);
    EXPECT_EQ(op.m, 4);
    EXPECT_EQ(op.n, full.bytes);  // nccl-tests' size of a reduce-scatter: the full input
  }
  // Gathered copies are the full parameters, and at most two blocks are gathered at once (the
  // block running and the next one, prefetched).
  const Lifetimes lt = lifetimes(p);
  for (std::size_t i = 0; i < lt.instances.size(); ++i) {
    const Tensor& x = p.tensors[lt.instances[i].tensor];
    if (std::string_view(x.label) != "gathered") continue;
    EXPECT_EQ(x.elements, p.params[static_cast<std::size_t>(x.param)].numel());
  }
  // Count the gather ops whose outputs are still live after each flat op.
  std::vector<std::int64_t> live(lt.op.size(), 0);
  for (std::size_t i = 0; i < lt.instances.size(); ++i) {
    const Tensor& x = p.tensors[lt.instances[i].tensor];
    const bool block_marker = std::string_view(x.label) == "gathered" &&
                              (p.params[static_cast<std::size_t>(x.param)].name.find("attn_norm") != std::string::npos ||
                               p.params[static_cast<std::size_t>(x.param)].name == "embed.weight" ||
                               p.params[static_cast<std::size_t>(x.param)].name == "final_norm.weight");
    if (!block_marker) continue;
    for (std::int64_t f = lt.first_op[i]; f <= lt.last_op[i]; ++f) ++live[static_cast<std::size_t>(f)];
  }
  EXPECT_EQ(*std::max_element(live.begin(), live.end()), 2);
}

TEST(Sharding, DdpAllReducesInPlaceAndZeroOneRegathersUpdatedWeights) {
  const ModelSpec m = model("tiny-llama");
  const auto n = static_cast<std::int64_t>(parameters(m).size());
  const Program ddp = build_program(m, ranks(2, ZeroStage::none), Plan::vanilla(), 20);
  ASSERT_EQ(check_schedule(ddp), std::nullopt);
  EXPECT_EQ(count_ops(ddp, OpCode::all_reduce), n);
  EXPECT_EQ(count_ops(ddp, OpCode::all_gather), 0);
  const Program one = build_program(m, ranks(2, ZeroStage::optimizer), Plan::vanilla(), 20);
  EXPECT_EQ(count_ops(one, OpCode::all_reduce), n);
  EXPECT_EQ(count_ops(one, OpCode::all_gather), n);  // each updated weight, refilled in place
  for (const Op& op : one.ops) {
    if (op.code != OpCode::adamw) continue;
    EXPECT_EQ(op.m, (one.params[static_cast<std::size_t>(op.param)].numel() + 1) / 2);  // its shard
  }
  // One GPU: no collective at all, and the same program as without the parallel fields.
  const Program single = build_program(m, TrainingSetup{}, Plan::vanilla(), 20);
  for (const Op& op : single.ops) EXPECT_NE(op.kind, OpKind::collective);
}

TEST(Sharding, CommunicationTimeIsTheCollectivesOnTheNodesLinks) {
  // llama3-8b, ZeRO-3 over one DGX-H100 node (8 ranks, NVLink 450 GB/s at 90%). Per step: the
  // forward all-gathers every parameter once, the backward all-gathers the layers' again (the
  // head's stay gathered through the LM head block, the embedding's backward reads no weight),
  // and every gradient is reduce-scattered once. Each moves 7/8 of its bytes over NVLink.
  const ModelSpec m = model("llama3-8b");
  const ClusterSpec cluster = *cluster_for_ranks(std::nullopt, *resolve_gpu("H100-80G"), 8);
  ASSERT_EQ(cluster.name, "DGX-H100");
  const Program p = build_program(m, ranks(8, ZeroStage::parameters), Plan::vanilla(), 1024);
  const StepTime t = estimate_time(p, *resolve_gpu("H100-80G"), 1, CostOptions{}, &cluster);
  const double all = 2.0 * 8'030'261'248;  // bf16 bytes of every parameter
  const double outside_layers = 2.0 * (2 * 525'336'576 + 4096);  // embedding, LM head, final norm
  const double link = 450e9 * 0.90;
  std::int64_t collectives = 0;
  for (const Op& op : p.ops) collectives += op.kind == OpKind::collective ? 1 : 0;
  const double expected = 7.0 / 8.0 * (all + (all - outside_layers) + all) / link + 5e-6 * static_cast<double>(collectives);
  EXPECT_NEAR(t.comm_seconds, expected, 1e-9 * expected);
  EXPECT_GE(t.exposed_comm_seconds, 0.0);
  EXPECT_LE(t.exposed_comm_seconds, t.comm_seconds);
  // Tokens/s counts every rank's micro-batch: 8 x 1,024 tokens per step.
  const double amortised = t.step_seconds;  // one micro-batch: nothing amortised
  EXPECT_NEAR(t.tokens_per_s, 8.0 * 1024.0 / amortised, 1e-9 * t.tokens_per_s);
}

TEST(Sharding, PytorchDdpKeepsItsBucketsAndRefusesDeepSpeedStages) {
  // DDP's buckets: a second copy of every gradient, 2 x 8,030,261,248 bytes in bf16.
  TrainingSetup s = ranks(8, ZeroStage::none);
  s.profile = Profile::pytorch;
  EXPECT_EQ(static_memory(model("llama3-8b"), s).communication_bytes, 2 * 8'030'261'248);
  s.parallel.zero = ZeroStage::gradients;
  const auto error = check_setup_for_model(s, model("llama3-8b"), "s.yaml");
  ASSERT_TRUE(error.has_value());
  EXPECT_THAT(error->message, HasSubstr("s.yaml: field 'zero': ZeRO-2 with profile pytorch"));
}

TEST(Sharding, MoreRanksNeverRaiseTheStaticBytesOfARank) {
  const ModelSpec m = model("llama3-70b");
  for (ZeroStage zero : {ZeroStage::optimizer, ZeroStage::gradients, ZeroStage::parameters}) {
    std::int64_t previous = static_memory(m, TrainingSetup{}).total_bytes();
    for (std::int64_t gpus : {2, 4, 8, 16, 64}) {
      const std::int64_t bytes = static_memory(m, ranks(gpus, zero)).total_bytes();
      EXPECT_LT(bytes, previous) << to_string(zero) << " " << gpus;
      previous = bytes;
    }
  }
}

TEST(Sharding, LayoutsSearchEveryStageTheProfileModels) {
  const ModelSpec m = model("llama3-8b");
  const GpuSpec gpu = *resolve_gpu("H100-80G");
  SearchOptions options;
  options.cluster = *cluster_for_ranks(std::nullopt, gpu, 8);
  TrainingSetup s = ranks(8, ZeroStage::none);
  const std::vector<LayoutResult> native = search_layouts(m, gpu, s, options);
  // Group sizes 1, 2, 4, 8: Ulysses at each (all divide the 32 query and 8 key/value heads), then
  // context parallelism at 2, 4, 8; 7 sharings, each with 4 stages.
  const std::vector<SequenceSharing> sharings = {{1, 1}, {2, 1}, {1, 2}, {4, 1}, {1, 4}, {8, 1}, {1, 8}};
  EXPECT_EQ(sequence_sharings(m, s), sharings);
  ASSERT_EQ(native.size(), 28u);
  for (std::size_t i = 0; i < native.size(); ++i) {
    EXPECT_EQ(native[i].zero, static_cast<ZeroStage>(i % 4));
    EXPECT_EQ((SequenceSharing{native[i].sp, native[i].cp}), sharings[i / 4]);
    TrainingSetup staged = s;
    staged.parallel.zero = native[i].zero;
    EXPECT_EQ(native[i].static_bytes, static_memory(m, staged).total_bytes());  // sharing a sequence shards no state
    ASSERT_TRUE(native[i].longest.has_value());
    // Each stage shards more, so auto reaches at least as far (the state it frees is activations'
    // room); a sequence split over more ranks leaves each fewer positions.
    if (i % 4 > 0) {
      EXPECT_GE(native[i].longest->seq_len, native[i - 1].longest->seq_len);
    }
    if (i >= 12) {  // against the same sharing at half the group
      EXPECT_GT(native[i].longest->seq_len, native[i - 8].longest->seq_len);
    }
    if (native[i].cp > 1) {
      // Each context-parallel rank keeps the gathered keys and values of every position, which a
      // Ulysses rank of the same group does not: Ulysses reaches further.
      EXPECT_LT(native[i].longest->seq_len, native[i - 4].longest->seq_len) << i;
    }
  }
  // On 64 GPUs Ulysses stops at the 32 query heads; context parallelism is not bounded by them.
  const std::vector<SequenceSharing> wide = sequence_sharings(m, ranks(64, ZeroStage::none));
  EXPECT_EQ(wide.back(), (SequenceSharing{1, 64}));
  EXPECT_EQ(std::count(wide.begin(), wide.end(), SequenceSharing{64, 1}), 0);
  EXPECT_EQ(std::count(wide.begin(), wide.end(), SequenceSharing{32, 1}), 1);
  // Eager attention has no context-parallel form.
  TrainingSetup eager = s;
  eager.attention = AttentionKind::eager;
  for (const SequenceSharing& sh : sequence_sharings(m, eager)) EXPECT_EQ(sh.cp, 1);
  s.profile = Profile::pytorch;
  const std::vector<LayoutResult> pytorch = search_layouts(m, gpu, s, options);
  ASSERT_EQ(pytorch.size(), 8u);
  EXPECT_EQ(pytorch[0].zero, ZeroStage::none);
  EXPECT_EQ(pytorch[1].zero, ZeroStage::parameters);
  EXPECT_EQ(pytorch[7].sp, 8);
  for (const LayoutResult& l : pytorch) EXPECT_EQ(l.cp, 1);  // the Hugging Face step has no context parallelism
  // transformers 4.44's attention is not the registry ALST wraps: no Ulysses degrees but 1.
  s.framework = Framework::transformers_4_44;
  EXPECT_EQ(sequence_parallel_degrees(m, s), std::vector<std::int64_t>{1});
  EXPECT_TRUE(search_layouts(m, gpu, TrainingSetup{}, options).empty());
}

// search_layouts starts each stage's searches where the sharing's first stage ended
// (LengthHint): the answers must be those of searching each layout on its own, in fewer
// evaluations, for both profiles (the pytorch profile refines the seeded allocated-bytes answer
// on its caching allocator).
TEST(Sharding, SeededLayoutSearchesAnswerAsEachLayoutSearchedAlone) {
  const ModelSpec m = model("llama3-8b");
  const GpuSpec gpu = *resolve_gpu("H100-80G");
  SearchOptions options;
  options.cluster = *cluster_for_ranks(std::nullopt, gpu, 8);
  for (Profile profile : {Profile::native, Profile::pytorch}) {
    TrainingSetup s = ranks(8, ZeroStage::none);
    s.profile = profile;
    const std::vector<LayoutResult> layouts = search_layouts(m, gpu, s, options);
    std::int64_t seeded = 0, alone = 0;
    for (const LayoutResult& l : layouts) {
      TrainingSetup staged = s;
      staged.parallel.zero = l.zero;
      staged.parallel.sp = l.sp;
      staged.parallel.cp = l.cp;
      const Method automatic[] = {Method::automatic};
      const SearchResult own = search(m, gpu, staged, automatic, options);
      SCOPED_TRACE(fmt::format("{} zero {} sp {} cp {}", to_string(profile), static_cast<int>(l.zero), l.sp, l.cp));
      ASSERT_EQ(l.longest.has_value(), own.methods.front().at_max.has_value());
      if (!l.longest) continue;
      EXPECT_EQ(l.longest->seq_len, own.methods.front().at_max->seq_len);
      EXPECT_EQ(l.longest->plan, own.methods.front().at_max->plan);
      EXPECT_DOUBLE_EQ(l.longest->time.tokens_per_s, own.methods.front().at_max->time.tokens_per_s);
      ASSERT_EQ(l.pareto.size(), own.pareto.size());
      for (std::size_t k = 0; k < l.pareto.size(); ++k) {
        EXPECT_EQ(l.pareto[k].seq_len, own.pareto[k].seq_len);
        EXPECT_EQ(l.pareto[k].plan, own.pareto[k].plan);
      }
      seeded += l.evaluations;
      alone += own.evaluations;
    }
    // native: three of every four layouts seeded, each plan's search in about 4 evaluations
    // instead of 6 (1,110 of 1,543 when written). pytorch: one of every two, and most of a plan's
    // evaluations are the caching-allocator refinement the hint does not shorten (974 of 1,029).
    if (profile == Profile::native) {
      EXPECT_LT(seeded, alone * 3 / 4);
    } else {
      EXPECT_LT(seeded, alone);
    }
  }
}

// A hint only moves where a search starts: far too short, far too long, or with a slope ten
// times off, the longest length is the one found without it.
TEST(Sharding, LengthHintsFarOffStillFindTheLongestLength) {
  const ModelSpec m = model("llama3-8b");
  const GpuSpec gpu = *resolve_gpu("H100-80G");
  SearchOptions options;
  options.cluster = *cluster_for_ranks(std::nullopt, gpu, 8);
  const TrainingSetup s = ranks(8, ZeroStage::parameters);
  for (const Plan& plan : {Plan::mst_reference(m), Plan::vanilla()}) {
    Evaluator evaluator(m, gpu, s, options);
    const std::optional<Evaluation> plain = evaluator.longest(plan);
    ASSERT_TRUE(plain.has_value());
    const double per_token = evaluator.last_bytes_per_token();
    EXPECT_GT(per_token, 0);
    const std::int64_t at = plain->seq_len;
    for (const LengthHint hint : {LengthHint{at, per_token}, LengthHint{at / 8, per_token}, LengthHint{at * 8, per_token},
                                  LengthHint{at / 2, per_token * 10}, LengthHint{at * 2, per_token / 10},
                                  LengthHint{64, per_token}, LengthHint{1 << 30, per_token}}) {
      const std::optional<Evaluation> e = evaluator.longest(plan, hint);
      ASSERT_TRUE(e.has_value());
      EXPECT_EQ(e->seq_len, at) << hint.seq_len << " " << hint.bytes_per_token;
      EXPECT_DOUBLE_EQ(e->time.tokens_per_s, plain->time.tokens_per_s);
    }
  }
}

TEST(Sharding, FewestGpusIsTheFirstCountWhereALayoutFits) {
  const ModelSpec m = model("llama3-8b");
  const GpuSpec gpu = *resolve_gpu("H100-80G");
  TrainingSetup s;
  s.seq_len = 600 * 1024;  // beyond one H100 (107,456 tokens with MST, 399,872 with offload)
  auto cluster_for = [&](std::int64_t gpus) { return cluster_for_ranks(std::nullopt, gpu, gpus); };
  auto found = fewest_gpus(m, gpu, s, 1024, cluster_for);
  ASSERT_TRUE(found && found->has_value());
  const FewestGpus& f = **found;
  ASSERT_GT(f.gpus, 1);
  EXPECT_TRUE(f.plan.fits);
  EXPECT_EQ(f.plan.seq_len, 600 * 1024);
  EXPECT_EQ(f.tried.back(), f.gpus);
  // Half as many GPUs: no layout fits the length.
  TrainingSetup half = s;
  half.parallel.gpus = f.gpus / 2;
  SearchOptions options;
  if (half.parallel.gpus > 1) {
    options.cluster = *cluster_for(half.parallel.gpus);
    for (const LayoutResult& l : search_layouts(m, gpu, half, options)) EXPECT_FALSE(l.at_request.has_value());
  } else {
    const Method automatic[] = {Method::automatic};
    EXPECT_FALSE(search(m, gpu, half, automatic, options).fastest_at_request.has_value());
  }
  // The chosen stage is the fastest that fits at that count.
  TrainingSetup at = s;
  at.parallel.gpus = f.gpus;
  options.cluster = *cluster_for(f.gpus);
  for (const LayoutResult& l : search_layouts(m, gpu, at, options)) {
    if (l.at_request) {
      EXPECT_LE(l.at_request->time.tokens_per_s, f.plan.time.tokens_per_s);
    }
  }
}

TEST(ShardingCli, GpusAutoAnswersOrSaysWhyNot) {
  const auto ok = test::run({"--model", "llama3-8b", "--gpu", "H100-80G", "--gpus", "auto", "--seq", "600K"});
  ASSERT_EQ(ok.code, 0) << ok.err;
  EXPECT_THAT(ok.out, ::testing::ContainsRegex("^fewest GPUs for 614,400 tokens: [0-9]+, ZeRO-[0-3] on DGX-H100 \\(tried 1, 2"));
  // ALST's 32-GPU length needs Ulysses over all 32 ranks (llama3-8b's 32 query heads; its 8
  // key/value heads replicated).
  const auto ulysses = test::run({"--model", "llama3-8b", "--gpu", "H100-80G", "--gpus", "auto", "--seq", "15M"});
  ASSERT_EQ(ulysses.code, 0) << ulysses.err;
  EXPECT_THAT(ulysses.out, HasSubstr("fewest GPUs for 15,728,640 tokens: 32, ZeRO-3, Ulysses over 32 on DGX-H100"));
  // Past the heads, more GPUs only add data-parallel copies: the length that fits stops growing.
  const auto none = test::run({"--model", "llama3-8b", "--gpu", "H100-80G", "--gpus", "auto", "--seq", "64M"});
  EXPECT_EQ(none.code, 5);
  EXPECT_THAT(none.err, HasSubstr("67,108,864 tokens fit no layout on up to 1024 H100-80G GPUs (ZeRO stages with "
                                  "Ulysses over up to 32 ranks, the query heads, or context parallelism over up to 1024)"));
  EXPECT_TRUE(none.out.empty());
  const auto no_seq = test::run({"--model", "llama3-8b", "--gpu", "H100-80G", "--gpus", "auto"});
  EXPECT_EQ(no_seq.code, 2);
  EXPECT_THAT(no_seq.err, HasSubstr("--gpus auto: finds the fewest GPUs for a length; give --seq N"));
  const auto zero = test::run({"--model", "llama3-8b", "--gpu", "H100-80G", "--gpus", "auto", "--seq", "1M", "--zero", "3"});
  EXPECT_EQ(zero.code, 2);
}

TEST(ShardingCli, LayoutsTableNamesTheStagesThatFit) {
  // llama3-70b's static state: 394.25 GiB per rank unsharded; only ZeRO-3 (49.28 GiB) fits an H100.
  const auto r = test::run({"--model", "llama3-70b", "--gpu", "H100-80G", "--gpus", "8", "--seq", "32K"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("would fit with --zero 3"));
  EXPECT_THAT(r.out, HasSubstr("layouts on 8 GPUs"));
  EXPECT_THAT(r.out, ::testing::ContainsRegex("  0 +1 +1 +394.25 +none fits .*\\(this setup\\)"));
  EXPECT_THAT(r.out, ::testing::ContainsRegex("  3 +1 +1 +49.28 +[0-9,]+ +[0-9.]+ +[0-9,]+ +fits"));
  EXPECT_THAT(r.out, ::testing::ContainsRegex("  3 +8 +1 +49.28 +[0-9,]+ +[0-9.]+ +[0-9,]+ +fits"));
  // Context parallelism over the 8 ranks: the same static state per rank, and it fits 32K too.
  EXPECT_THAT(r.out, ::testing::ContainsRegex("  3 +1 +8 +49.28 +[0-9,]+ +[0-9.]+ +[0-9,]+ +fits"));
}

TEST(ShardingCli, ContextParallelLayoutsAreMarkedAndJsonCarriesTheirDegree) {
  const auto r = test::run({"--model", "llama3-8b", "--gpu", "H100-80G", "--gpus", "8", "--zero", "3", "--cp", "8",
                            "--method", "mst", "--seq", "1M"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, ::testing::ContainsRegex("  3 +1 +8 +5.61 [^\n]*\\(this setup\\)"));
  EXPECT_THAT(r.out, ::testing::Not(::testing::ContainsRegex("  3 +8 +1 +5.61 [^\n]*\\(this setup\\)")));
  EXPECT_THAT(r.out, HasSubstr(", context-parallel over 8: "));
  const auto j = test::run({"--model", "llama3-8b", "--gpu", "H100-80G", "--gpus", "8", "--json"});
  ASSERT_EQ(j.code, 0) << j.err;
  const nlohmann::json doc = nlohmann::json::parse(j.out);
  std::int64_t context_parallel = 0;
  for (const auto& l : doc.at("layouts")) {
    EXPECT_TRUE(l.at("sp").get<std::int64_t>() == 1 || l.at("cp").get<std::int64_t>() == 1);
    if (l.at("cp").get<std::int64_t>() > 1) ++context_parallel;
  }
  EXPECT_EQ(context_parallel, 12);  // cp 2, 4, 8 with each of the 4 stages
  for (const auto& p : doc.at("layouts_pareto")) EXPECT_TRUE(p.contains("cp"));
}

TEST(ShardingCli, EightGpusAnswerPerRankWithTheCollectives) {
  const auto r = test::run({"--model", "llama3-8b", "--gpu", "H100-80G", "--gpus", "8", "--zero", "3", "--method", "mst"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("8 data-parallel GPUs with ZeRO-3"));
  EXPECT_THAT(r.out, HasSubstr("static memory per rank, of 8 GPUs"));
  EXPECT_THAT(r.out, HasSubstr("a 1/8 shard (ZeRO-3); each layer's are all-gathered before use"));
  EXPECT_THAT(r.out, HasSubstr("tokens/s over 8 GPUs"));
  EXPECT_THAT(r.out, HasSubstr("collectives: "));
  const auto j = test::run({"--model", "llama3-8b", "--gpu", "H100-80G", "--gpus", "16", "--zero", "3", "--json"});
  ASSERT_EQ(j.code, 0) << j.err;
  EXPECT_THAT(j.out, HasSubstr("\"nodes\": 2"));
  EXPECT_THAT(j.out, HasSubstr("\"zero\": 3"));
}

TEST(ShardingCli, TheExampleScenarioPlansEightRanks) {
  // Mixed precision under ZeRO-3 on 8 ranks: fp32 master, m and v sharded (12 n / 8 bytes) plus
  // bf16 weights sharded (2 n / 8) and fp32 gradient shards kept until the step (4 n / 8):
  // 18 x 8,030,261,248 / 8 = 18,068,087,808 bytes.
  const auto r = test::run({"--scenario", std::string(MSTPLAN_SOURCE_DIR) + "/scenarios/examples/llama3-8b-8xh100-zero3.yaml",
                            "--method", "mst", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("\"total_bytes\": 18068087808"));
  EXPECT_THAT(r.out, HasSubstr("\"name\": \"DGX-H100\""));
}

TEST(ShardingCli, PlanFilesCarryTheClusterAndRunAsRanks) {
  test::ScratchDir dir;
  const std::string plan = (dir.path() / "p.yaml").string();
  const auto w = test::run({"--model", "tiny-llama", "--gpu", "A100-80G", "--gpus", "4", "--zero", "3", "--seq", "256",
                            "--out", plan});
  ASSERT_EQ(w.code, 0) << w.err;
  const std::string text = test::source_file_at(plan);
  EXPECT_THAT(text, HasSubstr("cluster:\n  name: DGX-A100"));
  EXPECT_THAT(text, HasSubstr("gpus: 4\n"));
  const auto show = test::run({"show", plan});
  ASSERT_EQ(show.code, 0) << show.err;
  EXPECT_THAT(show.out, HasSubstr(": the same"));
  const auto verify = test::run({"verify", plan});
  EXPECT_EQ(verify.code, 4);
  // Outside mpirun it says how to start the ranks (tests/mpi/ranks_test.cpp runs them).
  EXPECT_THAT(verify.err, HasSubstr("field 'gpus': 4: a multi-GPU plan runs one rank per process; start them with "
                                    "mpirun -np 4 mst-plan verify"));
  // A plan file for several GPUs without its cluster is refused, naming the section.
  std::string stripped = text.substr(0, text.find("cluster:")) + text.substr(text.find("setup:"));
  const std::string bad = dir.write("bad.yaml", stripped);
  const auto refused = test::run({"show", bad});
  EXPECT_EQ(refused.code, 3);
  EXPECT_THAT(refused.err, HasSubstr("section 'cluster': missing"));
}

TEST(ShardingCli, BadLayoutsAreRefusedWithTheFlagAndValue) {
  struct Case {
    std::vector<std::string> args;
    int code;
    const char* message;
  };
  const std::vector<Case> cases = {
      {{"--zero", "3"}, 3, "field 'zero': ZeRO-3 shards over data-parallel GPUs; give gpus > 1"},
      {{"--gpus", "2", "--zero", "4"}, 2, "--zero: expected one of 0, 1, 2, 3, got '4'"},
      {{"--gpus", "0"}, 2, "--gpus: expected a positive integer, got '0'"},
      {{"--gpus", "12"}, 3, "--gpus 12: DGX-H100 has 8 GPUs per node; give at most 8 or a multiple of 8"},
      {{"--gpus", "8", "--cluster", "DGX-A100"}, 3, "cluster DGX-A100 has A100-80G GPUs, not H100-80G"},
      {{"--gpus", "8", "--cluster", "nope"}, 3, "unknown cluster 'nope'"},
      {{"--cluster", "DGX-H100"}, 2, "--cluster: the nodes of a multi-GPU plan; give --gpus N too"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = {"--model", "tiny-llama", "--gpu", "H100-80G"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    const auto r = test::run(args);
    EXPECT_EQ(r.code, c.code) << c.message << "\n" << r.err;
    EXPECT_THAT(r.err, HasSubstr(c.message));
    EXPECT_TRUE(r.out.empty()) << r.out;
  }
}

}  // namespace
}  // namespace mstplan
