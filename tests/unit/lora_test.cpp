// LoRA and QLoRA (issue 17): the frozen base's bytes by format, the adapters' parameters and
// state, what the step keeps for the adapters' backward, and the refusals.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <string_view>

#include <nlohmann/json.hpp>

#include "planner/analysis.h"
#include "planner/builder.h"
#include "planner/catalog.h"
#include "planner/liveness.h"
#include "planner/schedule_check.h"
#include "planner/cluster_spec.h"
#include "planner/search.h"
#include "planner/setup.h"
#include "planner/static_memory.h"
#include "program_util.h"
#include "runtime/cpu_backend.h"
#include "runtime/executor.h"
#include "test_util.h"

namespace mstplan {
namespace {

using ::testing::HasSubstr;

// Catalog models, resolved once (a map: references stay valid as it grows).
const ModelSpec& model(const std::string& name) {
  static std::map<std::string, ModelSpec> cache;
  auto it = cache.find(name);
  if (it == cache.end()) it = cache.emplace(name, *resolve_model(name)).first;
  return it->second;
}

// The bytes of layer `layer`'s forward tensors labelled `label` that live into backward (their
// last reader is a backward op): what the step keeps of them for the adapters' gradients.
std::int64_t kept_into_backward(const Program& p, std::int32_t layer, std::string_view label) {
  TensorSpans spans;
  tensor_spans(p, spans);
  std::int64_t bytes = 0;
  for (std::size_t t = 0; t < p.tensors.size(); ++t) {
    const Tensor& tensor = p.tensors[t];
    if (tensor.pass != Pass::forward || tensor.layer != layer || std::string_view(tensor.label) != label) continue;
    if (spans.last_touch[t] >= 0 && p.ops[static_cast<std::size_t>(spans.last_touch[t])].phase == Phase::backward) {
      bytes += tensor.bytes;
    }
  }
  return bytes;
}

TrainingSetup lora(BaseFormat base = BaseFormat::bf16) {
  TrainingSetup s;
  s.adapter.kind = AdapterKind::lora;
  s.adapter.base = base;
  return s;
}

// Llama 3 8B, r 16 on all seven linears (PEFT reports 41,943,040 trainable parameters for it):
// per layer q 16 x (4096 + 4096) = 131,072, k and v 16 x (4096 + 1024) = 81,920 each, o 131,072,
// gate, up and down 16 x (4096 + 14336) = 294,912 each: 1,310,720; x 32 layers = 41,943,040.
TEST(Lora, AdapterParametersOfLlama3_8bAreThoseReportedByPeft) {
  const std::vector<ParamTensor> adapters = adapter_parameters(model("llama3-8b"), lora().adapter);
  ASSERT_EQ(adapters.size(), 32u * 7 * 2);
  std::int64_t total = 0;
  for (const ParamTensor& p : adapters) total += p.numel();
  EXPECT_EQ(total, 41'943'040);
  EXPECT_EQ(adapters[0].name, "layer.0.attn.q.lora_A");
  EXPECT_EQ(adapters[0].rows, 16);
  EXPECT_EQ(adapters[0].cols, 4096);
  EXPECT_EQ(adapters[3].name, "layer.0.attn.k.lora_B");
  EXPECT_EQ(adapters[3].rows, 1024);
  EXPECT_EQ(adapters[3].cols, 16);
  // q and v only (PEFT's default for llama): 131,072 + 81,920 per layer.
  AdapterSetup qv = lora().adapter;
  qv.targets = *parse_lora_targets(std::vector<std::string>{"q", "v"});
  total = 0;
  for (const ParamTensor& p : adapter_parameters(model("llama3-8b"), qv)) total += p.numel();
  EXPECT_EQ(total, 32 * (131'072 + 81'920));
}

// QLoRA's storage of one 4096 x 4096 weight (n = 16,777,216), bitsandbytes' blocks of 64:
//   nf4 with double quantization: n / 2 = 8,388,608 packed + 262,144 uint8 block scales + 4 x
//     ceil(262,144 / 256) = 4,096 bytes of fp32 second-level scales + the 4-byte offset = 8,654,852;
//   without it: 8,388,608 + 4 x 262,144 = 9,437,184;
//   LLM.int8: 16,777,216 + 4 x 4096 row scales = 16,793,600.
TEST(Lora, QuantizedBaseWeightBytesByHand) {
  const ParamTensor q{"layer.0.attn.q.weight", 0, 4096, 4096};
  AdapterSetup a = lora(BaseFormat::nf4).adapter;
  EXPECT_EQ(base_weight_bytes(q, a), 8'654'852);
  a.double_quant = false;
  EXPECT_EQ(base_weight_bytes(q, a), 9'437'184);
  a.base = BaseFormat::fp4;
  EXPECT_EQ(base_weight_bytes(q, a), 9'437'184);  // fp4 and nf4 share the layout
  a.base = BaseFormat::int8;
  EXPECT_EQ(base_weight_bytes(q, a), 16'793'600);
  // The embedding, the norms and the LM head stay bf16.
  EXPECT_EQ(base_weight_bytes({"embed.weight", -1, 128256, 4096}, a), 2 * 128256 * 4096);
  EXPECT_EQ(base_weight_bytes({"layer.0.attn_norm.weight", 0, 4096, 1}, a), 2 * 4096);
}

// llama3-8b under QLoRA (nf4, double quantization), bf16 adapters, AdamW, optimizer in backward:
//   per layer q and o 8,654,852 each (above); k and v (4,194,304 elements) 2,097,152 + 65,536 +
//   1,024 + 4 = 2,163,716 each; gate, up, down (58,720,256) 29,360,128 + 917,504 + 14,336 + 4 =
//   30,291,972 each: 112,513,052 per layer, 3,600,417,664 for 32;
//   the embedding and LM head (525,336,576 each) and the norms (266,240) in bf16: 2,101,878,784;
//   the adapters 2 x 41,943,040 = 83,886,080; weights in all 5,786,182,528;
//   AdamW's m and v of the adapters only, bf16: 4 x 41,943,040 = 167,772,160; no gradient buffers.
TEST(Lora, StaticBytesOfQloraLlama3_8bByHand) {
  const StaticMemory m = static_memory(model("llama3-8b"), lora(BaseFormat::nf4));
  EXPECT_EQ(m.weights_bytes, 5'786'182'528);
  EXPECT_EQ(m.adapter_weights_bytes, 83'886'080);
  EXPECT_EQ(m.adapter_parameters, 41'943'040);
  EXPECT_EQ(m.optimizer_state_bytes, 167'772'160);
  EXPECT_EQ(m.gradient_bytes, 0);
  EXPECT_EQ(m.master_weights_bytes, 0);
  EXPECT_EQ(m.largest_gradient_name, "layer.0.mlp.gate.lora_B");  // 14336 x 16 x 2 bytes, the first of the largest
  EXPECT_EQ(m.largest_gradient_bytes, 14336 * 16 * 2);
  // The pytorch profile's default fp32 adapters: 4 bytes each and fp32 m and v.
  TrainingSetup peft = lora(BaseFormat::nf4);
  peft.profile = Profile::pytorch;
  const StaticMemory p = static_memory(model("llama3-8b"), peft);
  EXPECT_EQ(p.adapter_weights_bytes, 4 * 41'943'040);
  EXPECT_EQ(p.optimizer_state_bytes, 8 * 41'943'040);
  // With the optimizer after backward the adapters' gradients persist, and only theirs.
  TrainingSetup after = lora();
  after.optimizer_in_backward = false;
  EXPECT_EQ(static_memory(model("llama3-8b"), after).gradient_bytes, 2 * 41'943'040);
}

// The step trains the adapters alone: every gradient tensor and optimizer op is an adapter's.
TEST(Lora, OnlyTheAdaptersHaveGradientsAndUpdates) {
  const ModelSpec& m = model("tiny-llama");
  for (Profile profile : {Profile::native, Profile::pytorch}) {
    TrainingSetup s = lora(BaseFormat::nf4);
    s.profile = profile;
    const Program p = build_program(m, s, Plan::mst_reference(m), 45);
    const std::size_t base = parameters(m).size();
    ASSERT_EQ(p.params.size(), base + adapter_parameters(m, s.adapter).size());
    std::int64_t updates = 0;
    for (const Op& op : p.ops) {
      if (op.kind != OpKind::optimizer) continue;
      ++updates;
      EXPECT_GE(static_cast<std::size_t>(op.param), base) << op.label;
    }
    EXPECT_EQ(updates, 2 * 7 * m.num_layers) << to_string(profile);  // A and B of 7 linears per layer
    for (const Tensor& t : p.tensors) {
      if (t.kind == TensorKind::gradient) {
        EXPECT_GE(static_cast<std::size_t>(t.param), base) << p.params[static_cast<std::size_t>(t.param)].name;
      }
    }
  }
}

// Every GEMM over a 4-bit base weight reads a bf16 copy made for it (bitsandbytes dequantizes in
// forward and again for the input gradient), freed after the GEMM. Plain plan, no recompute: 7
// linears per layer in forward and 7 input gradients in backward.
TEST(Lora, QuantizedWeightsAreDequantizedForEachGemm) {
  const ModelSpec& m = model("tiny-llama");
  const Program p = build_program(m, lora(BaseFormat::nf4), Plan::vanilla(), 45);
  const std::vector<const Op*> dequantized = test::ops_with(p, OpCode::dequantize);
  EXPECT_EQ(dequantized.size(), static_cast<std::size_t>(14 * m.num_layers));
  for (const Op* op : dequantized) {
    const TensorId out = p.outputs(*op)[0];
    const ParamTensor& w = p.params[static_cast<std::size_t>(op->param)];
    EXPECT_EQ(p.tensors[out].bytes, 2 * w.numel()) << w.name;
    EXPECT_EQ(p.tensors[out].kind, TensorKind::transient);
    EXPECT_TRUE(is_layer_linear(w)) << w.name;
  }
  // With a bf16 base nothing is dequantized.
  EXPECT_TRUE(test::ops_with(build_program(m, lora(), Plan::vanilla(), 45), OpCode::dequantize).empty());
}

// The bytes the adapter adds to what lives through the forward pass, by hand. tiny-llama (d 64,
// 4 heads of 16), 37 tokens, native profile, no recompute, LoRA r 4 on q only, against the same
// frozen base without an adapter (optimizer none):
//   a frozen q keeps nothing for backward; the adapter keeps q's input (the norm's output, 37 x
//   64 x 2 = 4,736 bytes) for dA and A's output a (37 x 4 x 2 = 296) for dB: 5,032 per layer,
//   10,064 for both; the adapters themselves (A 4 x 64, B 64 x 4 per layer: 1,024 parameters)
//   2,048 bytes and AdamW's bf16 m and v 4,096. At the LM head: 16,208 more live bytes.
TEST(Lora, WhatTheAdapterKeepsThroughForwardByHand) {
  const ModelSpec& m = model("tiny-llama");
  TrainingSetup frozen;
  frozen.optimizer = OptimizerKind::none;
  TrainingSetup q = lora();
  q.adapter.rank = 4;
  q.adapter.targets = *parse_lora_targets(std::vector<std::string>{"q"});
  auto live_at_head = [&](const TrainingSetup& s) {
    const Program p = build_program(m, s, Plan::vanilla(), 37);
    for (const TimelinePoint& t : timeline(p, AllocatorModel::for_profile(s.profile))) {
      if (p.ops[t.op].phase == Phase::loss) return t.during.live_bytes;
    }
    return std::int64_t{-1};
  };
  EXPECT_EQ(live_at_head(q) - live_at_head(frozen), 16'208);
}

// Autograd's LoRA (PEFT) over a bf16 base with fp32 adapters: each adapted linear casts its input
// to fp32 and keeps the cast for dA. r 4 on q only, 37 tokens: the fp32 copy 37 x 64 x 4 = 9,472
// bytes and a in fp32 37 x 4 x 4 = 592 per layer are saved, where the bf16 adapters keep neither
// copy (the input itself, which the frozen q would not keep, and a in bf16).
TEST(Lora, PeftCastsTheInputOfEachAdaptedLinearToTheAdaptersDtype) {
  const ModelSpec& m = model("tiny-llama");
  TrainingSetup s = lora();
  s.profile = Profile::pytorch;
  s.adapter.rank = 4;
  s.adapter.targets = *parse_lora_targets(std::vector<std::string>{"q"});
  const Program fp32 = build_program(m, s, Plan::vanilla(), 37);
  EXPECT_EQ(kept_into_backward(fp32, 0, "lora.x.cast"), 9'472);
  EXPECT_EQ(kept_into_backward(fp32, 0, "lora.a"), 592);
  s.adapter.dtype = DType::bf16;
  const Program bf16 = build_program(m, s, Plan::vanilla(), 37);
  EXPECT_EQ(kept_into_backward(bf16, 0, "lora.x.cast"), 0);
  EXPECT_EQ(kept_into_backward(bf16, 0, "lora.a"), 296);
}

// Dropout (pytorch profile) keeps its mask and its output for backward: 37 x 64 bytes of mask and
// 37 x 64 x 4 of fp32 output per adapted linear.
TEST(Lora, DropoutKeepsItsMaskAndOutput) {
  const ModelSpec& m = model("tiny-llama");
  TrainingSetup s = lora();
  s.profile = Profile::pytorch;
  s.adapter.dropout = 0.05;
  s.adapter.targets = *parse_lora_targets(std::vector<std::string>{"q"});
  const Program p = build_program(m, s, Plan::vanilla(), 37);
  EXPECT_EQ(kept_into_backward(p, 0, "lora.dropout.mask"), 37 * 64);
  EXPECT_EQ(kept_into_backward(p, 0, "lora.dropout"), 37 * 64 * 4);
}

// Every MST plan shape builds and keeps the schedule's invariants with an adapter, in both
// profiles, chunked and recomputed (the adapters' tensors of each chunk class are their own).
TEST(Lora, EveryPlanOfAutoBuildsWithAdapters) {
  const ModelSpec& m = model("tiny-llama");
  for (Profile profile : {Profile::native, Profile::pytorch}) {
    for (BaseFormat base : {BaseFormat::bf16, BaseFormat::nf4, BaseFormat::int8}) {
      TrainingSetup s = lora(base);
      s.profile = profile;
      for (const Plan& plan : {Plan::vanilla(), Plan::recompute_all(), Plan::mst_reference(m)}) {
        Plan chunked = plan;
        chunked.mlp = ChunkSetting{3, {}};
        const Program p = build_program(m, s, chunked, 47);
        EXPECT_EQ(check_schedule(p), std::nullopt) << to_string(profile) << " " << to_string(base);
        const Analysis a = analyze(p, AllocatorModel::for_profile(profile));
        EXPECT_GT(a.peak.allocated_bytes, 0);
      }
    }
  }
}

TEST(Lora, SetupsTheAdapterCannotTakeAreRefusedWithFieldAndValue) {
  const ModelSpec& m = model("tiny-llama");
  auto error_of = [&](TrainingSetup s) {
    const std::optional<Error> e = check_setup_for_model(s, m, "scenario.yaml");
    return e ? e->message : std::string();
  };
  TrainingSetup s;
  s.adapter.base = BaseFormat::nf4;
  EXPECT_THAT(error_of(s), HasSubstr("field 'adapter.base': nf4: quantized base weights cannot be trained"));
  s = lora();
  s.adapter.dropout = 0.1;
  EXPECT_THAT(error_of(s), HasSubstr("field 'adapter.dropout': 0.1: the native runtime's LoRA has no dropout"));
  s = lora();
  s.adapter.dtype = DType::fp32;
  EXPECT_THAT(error_of(s), HasSubstr("field 'adapter.dtype': fp32"));
  s = lora();
  s.precision = Precision::mixed;
  EXPECT_THAT(error_of(s), HasSubstr("field 'precision': mixed with a LoRA adapter is not modelled"));
  s = lora();
  s.optimizer = OptimizerKind::none;
  EXPECT_THAT(error_of(s), HasSubstr("field 'optimizer': none trains nothing"));
  s = lora(BaseFormat::nf4);
  s.parallel.gpus = 8;
  s.parallel.zero = ZeroStage::parameters;
  EXPECT_THAT(error_of(s), HasSubstr("field 'adapter.base': nf4: ZeRO-3 / FSDP over quantized weights"));
  EXPECT_FALSE(parse_lora_targets(std::vector<std::string>{"q", "lm_head"}).has_value());
  EXPECT_THAT(parse_lora_targets(std::vector<std::string>{"q", "lm_head"}).error().message,
              HasSubstr("'lm_head' is not a linear of a decoder layer"));
}

// Over several GPUs a quantized base is not sharded (FSDP-QLoRA is not modelled): the layout
// search leaves ZeRO-3 out for it and keeps it for a bf16 base, whose frozen weights it shards.
TEST(Lora, LayoutSearchLeavesZeroThreeOutForAQuantizedBase) {
  const ModelSpec& m = model("tiny-llama");
  const GpuSpec gpu = *resolve_gpu("H100-80G");
  SearchOptions options;
  options.cluster = *cluster_for_ranks(std::nullopt, gpu, 8);
  for (BaseFormat base : {BaseFormat::bf16, BaseFormat::nf4}) {
    TrainingSetup s = lora(base);
    s.parallel.gpus = 8;
    std::size_t zero3 = 0;
    for (const LayoutResult& l : search_layouts(m, gpu, s, options)) {
      zero3 += l.zero == ZeroStage::parameters ? 1 : 0;
      EXPECT_TRUE(l.longest.has_value());
    }
    EXPECT_EQ(zero3 > 0, base == BaseFormat::bf16) << to_string(base);
  }
}

// The runtime runs LoRA over any base on one GPU (runtime_test.cpp holds it to the plain step)
// and refuses several ranks for now, with the field and the reason.
TEST(Lora, TheRuntimeRefusesSeveralRanksForNow) {
  CpuBackend backend;
  const ModelSpec& m = model("tiny-llama");
  EXPECT_TRUE(Executor::create(m, lora(BaseFormat::nf4), Plan::vanilla(), 37, backend, RunOptions{}).has_value());
  TrainingSetup ranks = lora();
  ranks.parallel.gpus = 2;
  RunOptions options;
  auto e = Executor::create(m, ranks, Plan::vanilla(), 37, backend, options);
  ASSERT_FALSE(e.has_value());
  EXPECT_THAT(e.error().message, HasSubstr("field 'adapter': LoRA steps run on one GPU for now"));
}

// The command: the longest length per method on an RTX 4090, the setup line naming the
// adapter and the base, and the static memory of the frozen base and the adapters.
TEST(LoraCli, QloraOnA4090AnswersPerMethod) {
  const auto r = test::run({"--model", "llama3-8b", "--gpu", "RTX-4090", "--adapter", "lora", "--base", "nf4"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("setup: frozen NF4 base (bitsandbytes, double quantization) + LoRA r 16 (alpha 16) on "
                               "q,k,v,o,gate,up,down in bf16"));
  EXPECT_THAT(r.out, HasSubstr("LoRA adapters 0.08 GiB in bf16 (41,943,040 parameters, the trained ones)"));
  for (const char* method : {"vanilla ", "recompute ", "mst ", "mst-offload ", "auto "}) {
    EXPECT_THAT(r.out, ::testing::ContainsRegex(std::string("\n") + method + " *[0-9,]+ ")) << method;
  }
  const auto json = test::run({"--model", "llama3-8b", "--gpu", "RTX-4090", "--adapter", "lora", "--base", "nf4",
                               "--lora-targets", "q,v", "--lora-rank", "64", "--json"});
  ASSERT_EQ(json.code, 0) << json.err;
  const nlohmann::json j = nlohmann::json::parse(json.out);
  EXPECT_EQ(j["setup"]["adapter"]["rank"], 64);
  EXPECT_EQ(j["setup"]["adapter"]["targets"], nlohmann::json::array({"q", "v"}));
  EXPECT_EQ(j["setup"]["adapter"]["base"], "nf4");
  EXPECT_EQ(j["static"]["adapter_parameters"], 32 * 64 * (4096 + 4096 + 4096 + 1024));
}

// A QLoRA plan file carries the adapter, and `show` reads it back to the same prediction.
TEST(LoraCli, PlanFilesCarryTheAdapter) {
  test::ScratchDir dir;
  const std::string plan = (dir.path() / "plan.yaml").string();
  const auto r = test::run({"--model", "tiny-llama", "--gpu", "RTX-4090", "--adapter", "lora", "--base", "nf4",
                            "--lora-rank", "8", "--seq", "4096", "--out", plan});
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string text = test::source_file_at(plan);
  EXPECT_THAT(text, HasSubstr("adapter: {kind: lora, rank: 8, alpha: 16, targets: [q, k, v, o, gate, up, down], base: "
                              "nf4, double_quant: true}"));
  const auto show = test::run({"show", plan});
  ASSERT_EQ(show.code, 0) << show.err;
  EXPECT_THAT(show.out, HasSubstr("LoRA r 8"));
}

TEST(LoraCli, BadAdapterFlagsNameTheFlagAndValue) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--adapter", "qlora"}, "--adapter: expected one of none, lora, got 'qlora'"},
      {{"--adapter", "lora", "--lora-targets", "q,proj"}, "--lora-targets: 'proj' is not a linear of a decoder layer"},
      {{"--adapter", "lora", "--lora-rank", "0"}, "--lora-rank: expected a positive integer, got '0'"},
      {{"--adapter", "lora", "--lora-alpha", "x"}, "--lora-alpha: expected a positive number, got 'x'"},
      {{"--adapter", "lora", "--lora-dropout", "1.5"}, "--lora-dropout: expected a probability in [0, 1), got '1.5'"},
      {{"--adapter", "lora", "--base", "nf2"}, "--base: expected one of bf16, int8, nf4, fp4, got 'nf2'"},
      {{"--base", "nf4"}, "field 'adapter.base': nf4: quantized base weights cannot be trained"},
  };
  for (const auto& [flags, message] : cases) {
    std::vector<std::string> args = {"--model", "llama3-8b", "--gpu", "RTX-4090"};
    args.insert(args.end(), flags.begin(), flags.end());
    const auto r = test::run(args);
    EXPECT_NE(r.code, 0) << message;
    EXPECT_THAT(r.err, HasSubstr(message));
  }
}

}  // namespace
}  // namespace mstplan
