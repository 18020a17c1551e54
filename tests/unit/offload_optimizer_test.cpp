// The offloaded optimizer (Note [Offloaded optimizer] in builder.cpp): what stays on the device,
// what lives in host memory, the copies and CPU Adam's ops, their time, and the host as a limit.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string_view>

#include "planner/builder.h"
#include "planner/catalog.h"
#include "planner/cost_model.h"
#include "planner/schedule_check.h"
#include "planner/search.h"
#include "planner/static_memory.h"
#include "runtime/cpu_backend.h"
#include "runtime/executor.h"
#include "runtime/verify.h"
#include "test_util.h"

namespace mstplan {
namespace {

using ::testing::HasSubstr;

TrainingSetup offloaded(std::int64_t gpus, ZeroStage zero) {
  TrainingSetup s;
  s.offload_optimizer = true;
  s.optimizer_in_backward = false;
  s.parallel.gpus = gpus;
  s.parallel.zero = zero;
  return s;
}

std::int64_t count_labelled(const Program& p, std::string_view label) {
  std::int64_t n = 0;
  for (const Op& op : p.ops) n += op.label == label ? 1 : 0;
  return n;
}

TEST(OffloadOptimizer, TheDeviceKeepsTheWeightsAndTheHostTheRest) {
  // llama3-8b (n = 8,030,261,248, every parameter a multiple of 8 elements) on 8 ranks with ZeRO-3:
  // the device keeps bf16 weight shards, 2 n / 8 = 2,007,565,312 bytes; the host the fp32 master
  // (4), m and v (4 + 4) and a bf16 gradient copy (2) of the shard: 14 n / 8 = 14,052,957,184.
  const ModelSpec m = *resolve_model("llama3-8b");
  const std::int64_t n = 8'030'261'248;
  const StaticMemory s = static_memory(m, offloaded(8, ZeroStage::parameters));
  EXPECT_EQ(s.weights_bytes, 2 * n / 8);
  EXPECT_EQ(s.master_weights_bytes, 0);
  EXPECT_EQ(s.optimizer_state_bytes, 0);
  EXPECT_EQ(s.gradient_bytes, 0);
  EXPECT_EQ(s.host_bytes, 14 * n / 8);
  EXPECT_EQ(s.total_bytes(), 2 * n / 8);
  // One GPU: the whole of each, 2 n on the device and 14 n on the host.
  const StaticMemory one = static_memory(m, offloaded(1, ZeroStage::none));
  EXPECT_EQ(one.total_bytes(), 2 * n);
  EXPECT_EQ(one.host_bytes, 14 * n);
}

TEST(OffloadOptimizer, GradientsGoToTheHostAndCpuAdamSendsTheWeightsBack) {
  const ModelSpec m = *resolve_model("tiny-llama");
  const auto params = static_cast<std::int64_t>(parameters(m).size());
  for (const TrainingSetup& s : {offloaded(1, ZeroStage::none), offloaded(2, ZeroStage::gradients),
                                 offloaded(4, ZeroStage::parameters)}) {
    const Program p = build_program(m, s, Plan::vanilla(), 24);
    ASSERT_EQ(check_schedule(p), std::nullopt);
    // One copy to the host, one CPU Adam step and one upload per parameter.
    EXPECT_EQ(count_labelled(p, "grad.offload"), params);
    EXPECT_EQ(count_labelled(p, "adamw.host"), params);
    EXPECT_EQ(count_labelled(p, "weight.upload"), params);
    // ZeRO-2's full weights are all-gathered from the uploaded shards; the others upload their own.
    EXPECT_EQ(count_labelled(p, "weight.all_gather"), s.parallel.zero == ZeroStage::gradients ? params : 0);
    for (TensorId t : p.outputs(p.ops.front())) {
      const Tensor& x = p.tensors[t];
      const bool host_kind = x.kind == TensorKind::master_weight || x.kind == TensorKind::optimizer_state ||
                             x.kind == TensorKind::gradient;
      EXPECT_EQ(x.device == Device::host, host_kind) << x.label;
    }
  }
}

TEST(OffloadOptimizer, CpuAdamRunsAtTheNodesRateSharedByItsRanks) {
  // llama3-8b's embedding (525,336,576 parameters) on 8 ranks of one DGX-H100 with ZeRO-3: each
  // rank steps 65,667,072 of them while the 8 share the node's 1.41e9 parameters/s.
  const ModelSpec m = *resolve_model("llama3-8b");
  const GpuSpec gpu = *resolve_gpu("H100-80G");
  const ClusterSpec cluster = *cluster_for_ranks(std::nullopt, gpu, 8);
  const Program p = build_program(m, offloaded(8, ZeroStage::parameters), Plan::vanilla(), 512);
  OpId adam = 0;
  while (p.ops[adam].label != std::string_view("adamw.host") || p.ops[adam].param != 0) ++adam;
  EXPECT_EQ(p.ops[adam].m, 65'667'072);
  EXPECT_NEAR(op_seconds(p, adam, gpu, CostOptions{}, &cluster), 65'667'072.0 * 8 / 1.41e9 + 5e-6, 1e-12);
}

TEST(OffloadOptimizer, HostMemoryPerNodeLimitsWhatFits) {
  // 8 ranks each hold 14 n / 8 bytes of host state (13.09 GiB; the Note's figure): 104.7 GiB for
  // the node. A node with 64 GiB of host memory fits no plan; DGX-H100's 2 TiB does.
  const ModelSpec m = *resolve_model("llama3-8b");
  const GpuSpec gpu = *resolve_gpu("H100-80G");
  SearchOptions options;
  options.cluster = *cluster_for_ranks(std::nullopt, gpu, 8);
  const TrainingSetup s = offloaded(8, ZeroStage::parameters);
  Evaluator roomy(m, gpu, s, options);
  const Evaluation fits = roomy.evaluate(Plan::mst_reference(m), 8192);
  EXPECT_TRUE(fits.fits);
  EXPECT_EQ(fits.host_node_bytes, fits.analysis.host_peak_bytes * 8);
  EXPECT_GE(fits.analysis.host_peak_bytes, 14 * 8'030'261'248 / 8);
  options.cluster->host_memory_bytes = std::int64_t{64} << 30;
  Evaluator tight(m, gpu, s, options);
  EXPECT_FALSE(tight.evaluate(Plan::mst_reference(m), 8192).fits);
  EXPECT_FALSE(tight.longest(Plan::mst_reference(m)).has_value());
}

TEST(OffloadOptimizerCli, PrintsTheHostRowAndRefusesWhatDeepSpeedCannotRun) {
  const auto r = test::run({"--model", "llama3-8b", "--gpu", "H100-80G", "--gpus", "8", "--zero", "3",
                            "--offload-optimizer", "--method", "mst", "--seq", "64K"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("optimizer after backward, optimizer offloaded to the host"));
  EXPECT_THAT(r.out, ::testing::ContainsRegex("host \\(offloaded\\) +13.09 GiB"));
  EXPECT_THAT(r.out, HasSubstr("host memory: "));
  struct Case {
    std::vector<std::string> args;
    const char* message;
  };
  const std::vector<Case> cases = {
      {{"--optimizer", "sgd"}, "field 'offload_optimizer': DeepSpeed's CPU Adam steps AdamW; the optimizer is sgd"},
      {{"--optimizer-in-backward"}, "field 'offload_optimizer': the host steps the optimizer after backward"},
      {{"--gpus", "8", "--zero", "1"}, "field 'offload_optimizer': ZeRO-Offload copies each rank's reduced gradient "
                                       "shard to the host (ZeRO-2 and 3); zero is 1, give 2 or 3"},
      {{"--precision", "fp32"}, "field 'offload_optimizer': precision fp32"},
      {{"--profile", "pytorch", "--precision", "mixed"}, "not torch.autocast's fp32 parameters; give precision bf16"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = {"--model", "llama3-8b", "--gpu", "H100-80G", "--offload-optimizer"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    const auto bad = test::run(args);
    EXPECT_EQ(bad.code, 3) << c.message;
    EXPECT_THAT(bad.err, HasSubstr(c.message));
    EXPECT_TRUE(bad.out.empty());
  }
}

TEST(OffloadOptimizerCli, PlanFilesCarryItAndTheRuntimeVerifiesThem) {
  test::ScratchDir dir;
  const std::string plan = (dir.path() / "p.yaml").string();
  const auto w = test::run({"--model", "tiny-llama", "--gpu", "A100-80G", "--offload-optimizer", "--seq", "128", "--out",
                            plan});
  ASSERT_EQ(w.code, 0) << w.err;
  EXPECT_THAT(test::source_file_at(plan), HasSubstr("offload_optimizer: true\n"));
  const auto verify = test::run({"verify", plan});
  EXPECT_EQ(verify.code, 0) << verify.err;
  EXPECT_THAT(verify.out, HasSubstr("host peak live"));
  EXPECT_THAT(verify.out, HasSubstr("\nverified"));
}

// The CPU runtime executes CPU Adam (Note [Offloaded optimizer]): gradients copied to their host
// buffers (added over micro-batches), AdamW on the host's fp32 master, m and v, the new weights
// staged in host memory and uploaded (or, with the weights offloaded too, written on the host and
// uploaded block by block before use). Memory, device and host, to the byte; loss, gradients and
// parameters against the same step with the optimizer on the device.
struct OffloadCase {
  Precision precision;
  std::int64_t grad_accum;
  bool mst;
  bool offload_param;
};

class OffloadRuntime : public ::testing::TestWithParam<OffloadCase> {};

TEST_P(OffloadRuntime, MatchesTheStepWithTheOptimizerOnTheDevice) {
  const OffloadCase& c = GetParam();
  TrainingSetup s = offloaded(1, ZeroStage::none);
  s.precision = c.precision;
  s.grad_accum = c.grad_accum;
  s.offload_param = c.offload_param;
  ASSERT_FALSE(check_offload_optimizer(s, "test").has_value());
  Plan p = Plan::vanilla();
  if (c.mst) {
    p.mlp = ChunkSetting{3, {}};
    p.mlp_mode = MlpMode::tiled;
    p.lm_head = ChunkSetting{2, {}};
    p.lm_head_mode = LmHeadMode::recompute;
    p.recompute = RecomputeKind::full;
  }
  const PlanFile f{*resolve_model("tiny-llama"), {}, s, p, 41, {}, std::nullopt};
  auto cpu = make_cpu_backend();
  RunOptions options;
  options.ignore_fraction = 0.25;
  const std::string what = fmt::format("{} grad_accum {} {}{}", to_string(c.precision), c.grad_accum,
                                       c.mst ? "MST" : "plain", c.offload_param ? " offload_param" : "");
  auto v = verify_plan(f, *cpu, options);
  ASSERT_TRUE(v.has_value()) << what << ": " << v.error().message;
  for (const MemoryRow& row : v->run.memory) {
    EXPECT_TRUE(row.ok()) << what << ": " << row.what << " predicted " << row.predicted_bytes << " measured "
                          << row.measured_bytes;
  }
  EXPECT_TRUE(v->loss_check.ok) << what << ": loss " << v->loss << " vs " << v->reference_loss;
  for (const auto& g : v->gradients) {
    EXPECT_TRUE(g.ok) << what << ": gradient " << g.name << " error " << g.error << " > " << g.tolerance;
  }
  for (const auto& q : v->parameters) {
    EXPECT_TRUE(q.ok) << what << ": parameter " << q.name << " error " << q.error << " > " << q.tolerance;
  }
}

std::string offload_name(const ::testing::TestParamInfo<OffloadCase>& info) {
  const OffloadCase& c = info.param;
  return fmt::format("{}_accum{}_{}{}", to_string(c.precision), c.grad_accum, c.mst ? "mst" : "plain",
                     c.offload_param ? "_param" : "");
}

INSTANTIATE_TEST_SUITE_P(Cases, OffloadRuntime,
                         ::testing::Values(OffloadCase{Precision::bf16, 1, false, false},
                                           OffloadCase{Precision::bf16, 2, true, false},
                                           OffloadCase{Precision::mixed, 1, true, true},
                                           OffloadCase{Precision::bf16, 1, true, true},
                                           OffloadCase{Precision::mixed, 2, false, false}),
                         offload_name);

// The host's bytes by hand: tiny-llama has n = 158,400 parameters, every one a multiple of 2
// elements, so no allocation rounds on the host's byte-exact count. The host keeps the fp32
// master (4 n), m and v (8 n) and a bf16 gradient copy (2 n): 14 n = 2,217,600 bytes; during the
// update the new bf16 weights of one parameter are staged there too, the largest being the
// embedding and the LM head, 515 x 64 = 32,960 elements, 65,920 bytes: a peak of 2,283,520
// live bytes. With the weights offloaded too the host keeps their bf16 copy, 2 n = 316,800, and
// CPU Adam writes it in place (nothing staged): 16 n = 2,534,400.
TEST(OffloadRuntime, TheHostHoldsFourteenBytesPerParameterAndOneStagedWeight) {
  auto cpu = make_cpu_backend();
  const ModelSpec m = *resolve_model("tiny-llama");
  ASSERT_EQ(parameter_count(m), 158'400);
  for (const bool params_too : {false, true}) {
    TrainingSetup s = offloaded(1, ZeroStage::none);
    s.offload_param = params_too;
    auto ex = Executor::create(m, s, Plan::vanilla(), 32, *cpu, {});
    ASSERT_TRUE(ex.has_value()) << ex.error().message;
    ASSERT_TRUE((*ex)->step().has_value());
    EXPECT_EQ((*ex)->allocator().host().peak_live_bytes, params_too ? 2'534'400 : 2'283'520);
  }
}

TrainingSetup params_offloaded(std::int64_t gpus, ZeroStage zero) {
  TrainingSetup s = offloaded(gpus, zero);
  s.offload_param = true;
  return s;
}

TEST(OffloadParam, TheWeightsMoveToTheHostToo) {
  // llama3-8b on 8 ranks with ZeRO-3: the host holds the bf16 weight shard (2 n / 8) beside the
  // master, m, v and gradient copy (14 n / 8): 16 n / 8 = 16,060,522,496 bytes; the device none.
  const ModelSpec m = *resolve_model("llama3-8b");
  const std::int64_t n = 8'030'261'248;
  const StaticMemory s = static_memory(m, params_offloaded(8, ZeroStage::parameters));
  EXPECT_EQ(s.weights_bytes, 0);
  EXPECT_EQ(s.total_bytes(), 0);
  EXPECT_EQ(s.host_bytes, 16 * n / 8);
  const StaticMemory one = static_memory(m, params_offloaded(1, ZeroStage::none));
  EXPECT_EQ(one.total_bytes(), 0);
  EXPECT_EQ(one.host_bytes, 16 * n);
}

TEST(OffloadParam, EachBlockIsUploadedBeforeUseAndCpuAdamWritesTheHostWeights) {
  const ModelSpec m = *resolve_model("tiny-llama");
  const auto params = static_cast<std::int64_t>(parameters(m).size());
  for (const TrainingSetup& s : {params_offloaded(1, ZeroStage::none), params_offloaded(4, ZeroStage::parameters)}) {
    const Program p = build_program(m, s, Plan::mst_reference(m), 24);
    ASSERT_EQ(check_schedule(p), std::nullopt);
    EXPECT_EQ(count_labelled(p, "adamw.host"), params);
    EXPECT_EQ(count_labelled(p, "weight.upload"), 0);  // CPU Adam wrote the host weights in place
    // Forward gathers every parameter once (21: the embedding, 2 layers of 9, the final norm and
    // the LM head), backward every layer's again (18; its recompute reads those): one upload per
    // parameter each time, and with ZeRO-3 one all-gather per block of what was uploaded.
    std::int64_t layer_params = 0;
    for (const ParamTensor& t : parameters(m)) layer_params += t.layer >= 0 ? 1 : 0;
    const std::int64_t uploads = count_labelled(p, "weights.upload");
    EXPECT_EQ(params, 21);
    EXPECT_EQ(uploads, params + layer_params);
    EXPECT_EQ(count_labelled(p, "weights.all_gather") > 0, s.parallel.gpus > 1);
    for (const Op& op : p.ops) {
      if (op.label != std::string_view("weights.upload")) continue;
      EXPECT_EQ(op.kind, OpKind::copy_to_device);
      for (TensorId t : p.inputs(op)) EXPECT_EQ(p.tensors[t].device, Device::host);
      for (TensorId t : p.outputs(op)) EXPECT_EQ(p.tensors[t].device, Device::device);
    }
    for (const Tensor& t : p.tensors) {
      if (t.kind == TensorKind::weight) {
        EXPECT_EQ(t.device, Device::host) << t.label;
      }
    }
  }
}

TEST(OffloadParam, OneH100FitsLongerThanWithTheWeightsOnIt) {
  // ALST's one-GPU run (Llama 3.1 8B, its Table 1 row with everything offloaded): the 2 n = 14.96
  // GiB of weights leave the device, so the same plan reaches further.
  const ModelSpec m = *resolve_model("llama3.1-8b");
  const GpuSpec gpu = *resolve_gpu("H100-80G");
  TrainingSetup s = offloaded(1, ZeroStage::none);
  s.profile = Profile::pytorch;
  s.attention = AttentionKind::flash_attn;
  Plan plan = Plan::mst_reference(m);
  plan.lm_head_mode = LmHeadMode::forward_grad;
  plan.offload_checkpoints = true;
  TrainingSetup params = s;
  params.offload_param = true;
  const SearchOptions options;
  Evaluator with_weights(m, gpu, s, options);
  Evaluator without(m, gpu, params, options);
  const auto a = with_weights.longest(plan), b = without.longest(plan);
  ASSERT_TRUE(a && b);
  EXPECT_GT(b->seq_len, a->seq_len);
  EXPECT_GE(b->analysis.host_peak_bytes, 16 * 8'030'261'248);
}

TEST(OffloadParamCli, ItImpliesTheOptimizerOffloadAndNeedsZero3) {
  const auto r = test::run({"--model", "llama3-8b", "--gpu", "H100-80G", "--offload-param", "--method", "mst",
                            "--seq", "64K"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("optimizer offloaded to the host (fp32 master, m, v; CPU Adam), weights offloaded"));
  EXPECT_THAT(r.out, ::testing::ContainsRegex("host \\(offloaded\\) +119.66 GiB"));  // 16 n
  const auto zero1 = test::run({"--model", "llama3-8b", "--gpu", "H100-80G", "--offload-param", "--gpus", "8",
                                "--zero", "2"});
  EXPECT_EQ(zero1.code, 3);
  EXPECT_THAT(zero1.err, HasSubstr("field 'offload_param': parameter offload is ZeRO-3's (offload_param); zero is 2"));
  test::ScratchDir dir;
  const std::string scenario = dir.write("s.yaml", "model: llama3-8b\ngpu: H100-80G\noffload_param: true\n");
  const auto alone = test::run({"--scenario", scenario});
  EXPECT_EQ(alone.code, 3);
  EXPECT_THAT(alone.err, HasSubstr("field 'offload_param': DeepSpeed's parameter offload is modelled with the "
                                   "optimizer offloaded too"));
}

}  // namespace
}  // namespace mstplan
