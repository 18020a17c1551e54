// Multi-GPU plans run as MPI processes on the CPU backend (Note [Ranks] in runtime/executor.h):
// run under `mpirun -np 4` (tests/CMakeLists.txt), each process one rank. Every rank's measured
// memory must equal its own prediction to the byte, and its loss, gradients and updated
// parameters must equal one device's plain step over all the ranks' micro-batches, within
// verify.h's tolerances, for each ZeRO stage.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>

#include <nlohmann/json.hpp>

#include "planner/analysis.h"
#include "planner/builder.h"
#include "planner/catalog.h"
#include "runtime/communicator.h"
#include "runtime/cpu_backend.h"
#include "runtime/verify.h"
#include "unit/test_util.h"

namespace mstplan {
namespace {

Communicator& world() {
  auto w = mpi_world();
  MSTPLAN_CHECK(w.has_value(), "{}", w.error().message);
  return **w;
}

struct RankCase {
  ZeroStage zero;
  Precision precision;
  std::int64_t grad_accum;
  bool optimizer_in_backward;
  bool mst;  // chunked MLP and LM head with every layer recomputed, else the plain step
};

std::string describe(const RankCase& c) {
  return fmt::format("ZeRO-{} {} grad_accum {} optimizer_in_backward {} {}", static_cast<int>(c.zero),
                     to_string(c.precision), c.grad_accum, c.optimizer_in_backward, c.mst ? "MST" : "plain");
}

// MST: the MLP tiled in `mlp_chunks`, the LM head recomputed in `lm_chunks`, every layer recomputed.
Plan mst_plan(std::int64_t mlp_chunks, std::int64_t lm_chunks) {
  Plan p = Plan::vanilla();
  p.mlp = ChunkSetting{mlp_chunks, {}};
  p.mlp_mode = MlpMode::tiled;
  p.lm_head = ChunkSetting{lm_chunks, {}};
  p.lm_head_mode = LmHeadMode::recompute;
  p.recompute = RecomputeKind::full;
  return p;
}

PlanFile plan_file(const RankCase& c, std::int64_t gpus, std::int64_t seq) {
  auto model = resolve_model("tiny-llama");
  MSTPLAN_CHECK(model.has_value(), "tiny-llama");
  TrainingSetup s;
  s.precision = c.precision;
  s.grad_accum = c.grad_accum;
  s.optimizer_in_backward = c.optimizer_in_backward;
  s.parallel.gpus = gpus;
  s.parallel.zero = c.zero;
  return PlanFile{*model, {}, s, c.mst ? mst_plan(5, 4) : Plan::vanilla(), seq, {}, std::nullopt};
}

TEST(Ranks, TheWorldIsTheTestsRanks) {
  EXPECT_EQ(world().size(), 4) << "run under mpirun -np 4";
  EXPECT_EQ(world().name(), "mpi");
}

// The collectives themselves: a gather in rank order, a sum in rank order on every rank, an
// all-to-all that sends block j to rank j.
TEST(Ranks, CollectivesMoveWhatTheySay) {
  Communicator& w = world();
  const int n = w.size(), r = w.rank();
  std::vector<float> mine = {static_cast<float>(r), 0.5f * static_cast<float>(r)};
  std::vector<float> all(2 * static_cast<std::size_t>(n));
  w.all_gather(mine, all);
  for (int j = 0; j < n; ++j) {
    EXPECT_EQ(all[2 * static_cast<std::size_t>(j)], static_cast<float>(j));
    EXPECT_EQ(all[2 * static_cast<std::size_t>(j) + 1], 0.5f * static_cast<float>(j));
  }
  w.all_reduce_sum(mine);  // 0 + 1 + 2 + 3 = 6 on 4 ranks
  EXPECT_EQ(mine[0], static_cast<float>(n * (n - 1) / 2));
  std::vector<float> send(static_cast<std::size_t>(n)), recv(send.size());
  for (int j = 0; j < n; ++j) send[static_cast<std::size_t>(j)] = static_cast<float>(10 * r + j);
  w.all_to_all(send, recv);
  for (int j = 0; j < n; ++j) EXPECT_EQ(recv[static_cast<std::size_t>(j)], static_cast<float>(10 * j + r));
  const std::int64_t big = (std::int64_t{1} << 40) + r;  // byte counts beyond a float's 24 bits
  std::vector<std::int64_t> bigs(static_cast<std::size_t>(n));
  w.all_gather(std::span(&big, 1), bigs);
  EXPECT_EQ(bigs[3], (std::int64_t{1} << 40) + 3);
}

class RankEquivalence : public ::testing::TestWithParam<RankCase> {};

// Each rank: memory to the byte against its own program's prediction; loss, gradients and
// parameters against one device's plain step of 4 x grad_accum micro-batches, cut to the rank's
// elements. A collective that moved nothing (each rank's own gradient, unreduced; a gathered
// weight left as garbage) fails the gradients or the loss.
// verify_plan on this rank, every check expected to pass; `what` names the case in failures.
void expect_rank_matches_one_device(const PlanFile& f, const std::string& what) {
  Communicator& w = world();
  auto cpu = make_cpu_backend();
  RunOptions options;
  options.communicator = &w;
  options.ignore_fraction = 0.25;
  auto v = verify_plan(f, *cpu, options);
  ASSERT_TRUE(v.has_value()) << what << ": " << v.error().message;
  EXPECT_TRUE(v->run.memory_ok) << what << " rank " << w.rank();
  for (const MemoryRow& row : v->run.memory) {
    EXPECT_TRUE(row.ok()) << what << " rank " << w.rank() << ": " << row.what << " predicted " << row.predicted_bytes
                          << " measured " << row.measured_bytes;
  }
  EXPECT_TRUE(v->loss_check.ok) << what << ": loss " << v->loss << " vs " << v->reference_loss;
  for (const auto& g : v->gradients) {
    EXPECT_TRUE(g.ok) << what << " rank " << w.rank() << ": gradient " << g.name << " error " << g.error << " > "
                      << g.tolerance;
  }
  for (const auto& p : v->parameters) {
    EXPECT_TRUE(p.ok) << what << " rank " << w.rank() << ": parameter " << p.name << " error " << p.error << " > "
                      << p.tolerance;
  }
}

TEST_P(RankEquivalence, EachRankMatchesOneDevice) {
  const RankCase& c = GetParam();
  expect_rank_matches_one_device(plan_file(c, world().size(), 37), describe(c));
}

std::string case_name(const ::testing::TestParamInfo<RankCase>& info) {
  const RankCase& c = info.param;
  return fmt::format("zero{}_{}_accum{}_{}_{}", static_cast<int>(c.zero), to_string(c.precision), c.grad_accum,
                     c.optimizer_in_backward ? "inbackward" : "afterbackward", c.mst ? "mst" : "plain");
}

INSTANTIATE_TEST_SUITE_P(
    ZeroStages, RankEquivalence,
    ::testing::Values(RankCase{ZeroStage::none, Precision::fp32, 1, true, false},
                      RankCase{ZeroStage::none, Precision::mixed, 2, false, true},
                      RankCase{ZeroStage::optimizer, Precision::fp32, 1, true, true},
                      RankCase{ZeroStage::optimizer, Precision::mixed, 1, false, false},
                      RankCase{ZeroStage::gradients, Precision::fp32, 2, false, true},
                      RankCase{ZeroStage::gradients, Precision::mixed, 1, true, false},
                      RankCase{ZeroStage::parameters, Precision::fp32, 1, true, true},
                      RankCase{ZeroStage::parameters, Precision::mixed, 2, false, false},
                      RankCase{ZeroStage::parameters, Precision::bf16, 1, true, true},
                      RankCase{ZeroStage::parameters, Precision::mixed, 1, true, true}),
    case_name);

// Ulysses (Note [Ranks] in runtime/executor.h): groups of sp ranks share each sequence, every
// rank S / sp positions of it outside attention and all S positions of H / sp heads inside. Each
// rank: memory to the byte; loss, gradients and parameters against one device's plain step over
// the groups' micro-batches (4 / sp groups x grad_accum). A wrong all-to-all layout, RoPE at the
// wrong positions, labels not shifted across the ranks' boundaries or the loss not averaged over
// the group fails the loss or the gradients.
struct UlyssesCase {
  const char* model;
  std::int64_t sp;
  ZeroStage zero;
  Precision precision;
  AttentionKind attention;
  std::int64_t batch, grad_accum, seq;
  bool mst;
  OptimizerKind optimizer;
};

std::string describe(const UlyssesCase& c) {
  return fmt::format("{} sp {} ZeRO-{} {} {} batch {} grad_accum {} seq {} {} {}", c.model, c.sp,
                     static_cast<int>(c.zero), to_string(c.precision), to_string(c.attention), c.batch, c.grad_accum,
                     c.seq, c.mst ? "MST" : "plain", to_string(c.optimizer));
}

class UlyssesEquivalence : public ::testing::TestWithParam<UlyssesCase> {};

TEST_P(UlyssesEquivalence, EachRankMatchesOneDevice) {
  const UlyssesCase& c = GetParam();
  auto model = resolve_model(c.model);
  ASSERT_TRUE(model.has_value()) << c.model;
  TrainingSetup s;
  s.precision = c.precision;
  s.attention = c.attention;
  s.batch = c.batch;
  s.grad_accum = c.grad_accum;
  s.optimizer = c.optimizer;
  s.parallel.gpus = world().size();
  s.parallel.sp = c.sp;
  s.parallel.zero = c.zero;
  ASSERT_FALSE(check_setup_for_model(s, *model, "test").has_value());
  const Plan p = c.mst ? mst_plan(3, 2) : Plan::vanilla();
  expect_rank_matches_one_device(PlanFile{*model, {}, s, p, c.seq, {}, std::nullopt}, describe(c));
}

std::string ulysses_name(const ::testing::TestParamInfo<UlyssesCase>& info) {
  const UlyssesCase& c = info.param;
  std::string model = c.model;
  std::replace(model.begin(), model.end(), '-', '_');
  return fmt::format("{}_sp{}_zero{}_{}_{}_batch{}_accum{}_{}_{}", model, c.sp, static_cast<int>(c.zero),
                     to_string(c.precision), c.attention == AttentionKind::eager ? "eager" : "flash", c.batch,
                     c.grad_accum, c.mst ? "mst" : "plain", to_string(c.optimizer));
}

// tiny-llama: 4 query heads over 2 key/value heads (sp 4 repeats each to 2 ranks); tiny-qwen2: 6
// over 2, q/k/v biases; tiny-gemma2: a sliding window of 64 on even layers (the sequence is
// longer), soft-capped scores and logits, head_dim 48. Shares of 11, 22, 23 and 19 positions.
// tiny-qwen2 steps SGD: AdamW's first step moves each element by about lr whatever its
// gradient's size, so the k biases' near-zero gradients (a key bias shifts all of a query's
// scores alike but for RoPE) change sign under fp32 reordering; SGD's update is linear in them.
constexpr auto adamw = OptimizerKind::adamw;
INSTANTIATE_TEST_SUITE_P(
    Ulysses, UlyssesEquivalence,
    ::testing::Values(
        UlyssesCase{"tiny-llama", 4, ZeroStage::parameters, Precision::mixed, AttentionKind::flash, 1, 1, 44, true, adamw},
        UlyssesCase{"tiny-llama", 4, ZeroStage::parameters, Precision::fp32, AttentionKind::flash, 1, 1, 44, false, adamw},
        UlyssesCase{"tiny-llama", 2, ZeroStage::none, Precision::fp32, AttentionKind::flash, 1, 2, 44, false, adamw},
        UlyssesCase{"tiny-llama", 2, ZeroStage::parameters, Precision::fp32, AttentionKind::eager, 1, 1, 44, false, adamw},
        UlyssesCase{"tiny-llama", 2, ZeroStage::optimizer, Precision::mixed, AttentionKind::flash, 1, 1, 44, true, adamw},
        UlyssesCase{"tiny-qwen2", 2, ZeroStage::gradients, Precision::fp32, AttentionKind::flash, 2, 1, 46, true,
                    OptimizerKind::sgd},
        UlyssesCase{"tiny-gemma2", 4, ZeroStage::optimizer, Precision::bf16, AttentionKind::flash, 1, 1, 76, false, adamw}),
    ulysses_name);

// ZeRO-3 by hand: a rank keeps ceil(numel / 4) of each parameter. tiny-llama's q_proj is 64 x 64
// = 4,096 elements: 1,024 per rank, 2,048 bytes in bf16 (mixed precision), 4,096 bytes of fp32
// master; the embedding, 515 x 64 = 32,960 elements: 8,240 per rank. The rank's static weights
// are the sum of its shards, so its program's weight bytes are a quarter of one device's (up to
// the padding of the last shards).
TEST(Ranks, ZeroThreeKeepsAQuarterOfTheWeights) {
  Communicator& w = world();
  RankCase c{ZeroStage::parameters, Precision::mixed, 1, true, false};
  const PlanFile f = plan_file(c, w.size(), 37);
  auto cpu = make_cpu_backend();
  RunOptions options;
  options.communicator = &w;
  auto ex = Executor::create(f.model, f.setup, f.plan, f.seq_len, *cpu, options);
  ASSERT_TRUE(ex.has_value()) << ex.error().message;
  std::int64_t weight_bytes = 0, full_bytes = 0;
  const Program& p = (*ex)->program();
  for (TensorId t : p.outputs(p.ops.front())) {
    if (p.tensors[t].kind != TensorKind::weight) continue;
    weight_bytes += p.tensors[t].bytes;
    full_bytes += 2 * p.params[static_cast<std::size_t>(p.tensors[t].param)].numel();
  }
  EXPECT_EQ(weight_bytes, [&] {
    std::int64_t sum = 0;
    for (const ParamTensor& pt : p.params) sum += 2 * ((pt.numel() + 3) / 4);
    return sum;
  }());
  EXPECT_LE(weight_bytes * 4 - full_bytes, 2 * 3 * static_cast<std::int64_t>(p.params.size()));
  ASSERT_TRUE((*ex)->step().has_value());
  // q_proj of layer 0: this rank's 1,024 elements.
  bool found = false;
  for (std::int32_t i = 0; i < static_cast<std::int32_t>(p.params.size()); ++i) {
    if (p.params[static_cast<std::size_t>(i)].name != "layer.0.attn.q.weight") continue;
    found = true;
    EXPECT_EQ((*ex)->update_range(i).first, 1024 * w.rank());
    EXPECT_EQ((*ex)->update_range(i).count, 1024);
    EXPECT_EQ((*ex)->parameter(i).size(), 1024u);
  }
  EXPECT_TRUE(found);
}

// The command a user runs: `mpirun -np 4 mst-plan verify plan.yaml` on a plan written by
// `--gpus 4 --zero 3 --out`. Rank 0 prints the report and every rank's peak; the others print
// nothing; all exit 0.
TEST(Ranks, VerifyCommandRunsEachRank) {
  using ::testing::HasSubstr;
  test::ScratchDir dir;  // one per process
  const std::string plan = (dir.path() / "p.yaml").string();
  const auto w = test::run({"--model", "tiny-llama", "--gpu", "A100-80G", "--gpus", "4", "--zero", "3", "--seq", "96",
                            "--out", plan});
  ASSERT_EQ(w.code, 0) << w.err;
  const auto v = test::run({"verify", plan});
  EXPECT_EQ(v.code, 0) << v.err;
  if (world().rank() == 0) {
    EXPECT_THAT(v.out, HasSubstr("rank 0 of 4 shown"));
    EXPECT_THAT(v.out, HasSubstr("4 ranks (MPI processes)"));
    EXPECT_THAT(v.out, HasSubstr("\n  3 "));
    EXPECT_THAT(v.out, HasSubstr("verified"));
    EXPECT_THAT(v.out, ::testing::Not(HasSubstr("FAILED")));
  } else {
    EXPECT_EQ(v.out, "");
  }
  const auto j = test::run({"verify", plan, "--json"});
  EXPECT_EQ(j.code, 0) << j.err;
  if (world().rank() == 0) {
    const auto parsed = nlohmann::json::parse(j.out);
    ASSERT_EQ(parsed["ranks"].size(), 4u);
    EXPECT_EQ(parsed["ranks"][3]["measured_peak_bytes"], parsed["ranks"][3]["predicted_peak_bytes"]);
    EXPECT_TRUE(parsed["ranks"][2]["ok"].get<bool>());
  }
  const auto r = test::run({"run", plan, "--steps", "2"});
  EXPECT_EQ(r.code, 0) << r.err;
  if (world().rank() == 0) {
    EXPECT_THAT(r.out, HasSubstr("step   2  loss"));
  }
}

// Context parallelism (Note [Context-parallel step]): groups of cp ranks share each sequence, each
// with its S / cp positions, its keys and values all-gathered for attention and their gradients
// reduce-scattered back. Each rank to the byte and against one device's plain step. Shares of 11
// (cp 4) and 22 (cp 2, two groups, accumulation); tiny-qwen2's biases (SGD, as above); tiny-gemma2's
// window of 64 across the ranks' boundaries and soft-capping; batch 2.
TEST(Ranks, ContextParallelPlansMatchOneDevice) {
  struct CpCase {
    const char* model;
    std::int64_t cp;
    ZeroStage zero;
    Precision precision;
    std::int64_t batch, grad_accum, seq;
    bool mst;
    OptimizerKind optimizer;
  };
  const std::vector<CpCase> cases = {
      {"tiny-llama", 4, ZeroStage::parameters, Precision::fp32, 1, 1, 44, true, OptimizerKind::adamw},
      {"tiny-llama", 2, ZeroStage::none, Precision::mixed, 1, 2, 44, false, OptimizerKind::adamw},
      {"tiny-llama", 4, ZeroStage::optimizer, Precision::bf16, 2, 1, 44, true, OptimizerKind::adamw},
      {"tiny-qwen2", 2, ZeroStage::gradients, Precision::fp32, 2, 1, 46, true, OptimizerKind::sgd},
      {"tiny-gemma2", 4, ZeroStage::parameters, Precision::fp32, 1, 1, 76, false, OptimizerKind::adamw},
  };
  for (const CpCase& c : cases) {
    const ModelSpec model = *resolve_model(c.model);
    TrainingSetup s;
    s.precision = c.precision;
    s.batch = c.batch;
    s.grad_accum = c.grad_accum;
    s.optimizer = c.optimizer;
    s.parallel.gpus = world().size();
    s.parallel.cp = c.cp;
    s.parallel.zero = c.zero;
    ASSERT_FALSE(check_setup_for_model(s, model, "test").has_value()) << c.model;
    const std::string what = fmt::format("{} cp {} ZeRO-{} {} batch {} grad_accum {} seq {} {}", c.model, c.cp,
                                         static_cast<int>(c.zero), to_string(c.precision), c.batch, c.grad_accum,
                                         c.seq, c.mst ? "MST" : "plain");
    expect_rank_matches_one_device(
        PlanFile{model, {}, s, c.mst ? mst_plan(3, 2) : Plan::vanilla(), c.seq, {}, std::nullopt}, what);
  }
}

// ZeRO-Offload on the ranks (Note [Offloaded optimizer]): each rank's reduced gradient shard
// copied to its host buffer, CPU Adam on the host's shard of the master, m and v, the new weight
// shard uploaded (ZeRO-2: then all-gathered). ALST's recipe shape too: ZeRO-3, Ulysses over 4,
// the optimizer and the weights offloaded, MST. Against one device's step with the optimizer on it.
TEST(Ranks, OffloadedPlansMatchOneDevice) {
  const ModelSpec model = *resolve_model("tiny-llama");
  TrainingSetup zero2;
  zero2.precision = Precision::mixed;
  zero2.grad_accum = 2;
  zero2.optimizer_in_backward = false;
  zero2.offload_optimizer = true;
  zero2.parallel.gpus = world().size();
  zero2.parallel.zero = ZeroStage::gradients;
  ASSERT_FALSE(check_offload_optimizer(zero2, "test").has_value());
  expect_rank_matches_one_device(PlanFile{model, {}, zero2, Plan::vanilla(), 37, {}, std::nullopt},
                                 "ZeRO-2 offload_optimizer mixed grad_accum 2");
  TrainingSetup alst = zero2;
  alst.precision = Precision::bf16;
  alst.grad_accum = 1;
  alst.offload_param = true;
  alst.parallel.zero = ZeroStage::parameters;
  alst.parallel.sp = 4;
  ASSERT_FALSE(check_offload_optimizer(alst, "test").has_value());
  ASSERT_FALSE(check_setup_for_model(alst, model, "test").has_value());
  expect_rank_matches_one_device(PlanFile{model, {}, alst, mst_plan(3, 2), 44, {}, std::nullopt},
                                 "ZeRO-3 Ulysses 4 offload_optimizer offload_param bf16 MST");
}

// `--gpus 4 --sp 4`: the command a user runs on a Ulysses plan, the same as for data parallelism.
TEST(Ranks, VerifyCommandRunsUlysses) {
  using ::testing::HasSubstr;
  test::ScratchDir dir;
  const std::string plan = (dir.path() / "u.yaml").string();
  const auto w = test::run({"--model", "tiny-llama", "--gpu", "A100-80G", "--gpus", "4", "--sp", "4", "--zero", "3",
                            "--seq", "96", "--out", plan});
  ASSERT_EQ(w.code, 0) << w.err;
  const auto v = test::run({"verify", plan});
  EXPECT_EQ(v.code, 0) << v.err;
  if (world().rank() == 0) {
    EXPECT_THAT(v.out, HasSubstr("4 ranks (MPI processes)"));
    EXPECT_THAT(v.out, HasSubstr("verified"));
    EXPECT_THAT(v.out, ::testing::Not(HasSubstr("FAILED")));
  }
}

}  // namespace
}  // namespace mstplan

// One process per rank: MPI is initialised before the tests and finalised at exit; ranks other
// than 0 print only failures (gtest's brief mode), each naming its rank.
int main(int argc, char** argv) {
  if (mstplan::world().rank() != 0) GTEST_FLAG_SET(brief, true);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
