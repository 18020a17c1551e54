#include "planner/static_memory.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "planner/catalog.h"

namespace mstplan {
namespace {

const ModelSpec& tiny() {
  static const ModelSpec m = *resolve_model("tiny-llama");
  return m;
}

// tiny-llama has 158,400 parameters (model_spec_test.cpp). The MST reference setup (bf16,
// AdamW, optimizer in backward, one micro-batch):
//   weights 2 x 158,400 = 316,800; m and v 4 x 158,400 = 633,600; no gradient buffers;
//   the largest gradient is the embedding's, 515 x 64 x 2 = 65,920 bytes.
TEST(StaticMemory, ReferenceSetupByHand) {
  const StaticMemory m = static_memory(tiny(), TrainingSetup{});
  EXPECT_EQ(m.weights_bytes, 316'800);
  EXPECT_EQ(m.master_weights_bytes, 0);
  EXPECT_EQ(m.optimizer_state_bytes, 633'600);
  EXPECT_EQ(m.gradient_bytes, 0);
  EXPECT_FALSE(m.persistent_gradients);
  EXPECT_EQ(m.largest_gradient_bytes, 65'920);
  EXPECT_EQ(m.largest_gradient_name, "embed.weight");
  EXPECT_EQ(m.total_bytes(), 950'400);
}

// Gradients persist when the optimizer runs after backward or across micro-batches.
TEST(StaticMemory, GradientsPersistWithoutInBackwardOrWithAccumulation) {
  TrainingSetup after;
  after.optimizer_in_backward = false;
  EXPECT_EQ(static_memory(tiny(), after).gradient_bytes, 316'800);
  TrainingSetup accumulating;
  accumulating.grad_accum = 2;
  EXPECT_EQ(static_memory(tiny(), accumulating).gradient_bytes, 316'800);
}

// Mixed precision, optimizer after backward: 2 (bf16) + 4 (master) + 4 (fp32 gradients)
// + 8 (fp32 m, v) = 18 bytes per parameter = 2,851,200 bytes.
TEST(StaticMemory, MixedPrecisionNativeIs18BytesPerParameter) {
  TrainingSetup s;
  s.precision = Precision::mixed;
  s.optimizer_in_backward = false;
  const StaticMemory m = static_memory(tiny(), s);
  EXPECT_EQ(m.weights_bytes, 316'800);
  EXPECT_EQ(m.master_weights_bytes, 633'600);
  EXPECT_EQ(m.gradient_bytes, 633'600);
  EXPECT_EQ(m.optimizer_state_bytes, 1'267'200);
  EXPECT_EQ(m.total_bytes(), 18 * 158'400);
}

// Under torch.autocast the fp32 parameters are the master copy: 4 + 4 + 8 = 16 bytes.
TEST(StaticMemory, MixedPrecisionPytorchKeepsFp32Parameters) {
  TrainingSetup s;
  s.precision = Precision::mixed;
  s.optimizer_in_backward = false;
  s.profile = Profile::pytorch;
  // 158,400 parameters: fp32 parameters (4 bytes, the master copy themselves) and fp32 m and v
  // (8); zero_grad(set_to_none=True), PyTorch's default, frees the fp32 gradients (4) after every
  // step, so they are not static: 12 x 158,400 = 1,900,800. Zeroed in place instead, they live
  // through the training: 16 x 158,400 = 2,534,400.
  const StaticMemory m = static_memory(tiny(), s);
  EXPECT_EQ(m.weights_bytes, 633'600);
  EXPECT_EQ(m.master_weights_bytes, 0);
  EXPECT_FALSE(m.persistent_gradients);
  EXPECT_EQ(m.total_bytes(), 12 * 158'400);
  s.zero_grad_set_to_none = false;
  EXPECT_EQ(static_memory(tiny(), s).total_bytes(), 16 * 158'400);
  // Accumulating two micro-batches keeps them whatever zero_grad does.
  s.zero_grad_set_to_none = true;
  s.grad_accum = 2;
  EXPECT_EQ(static_memory(tiny(), s).total_bytes(), 16 * 158'400);
}

// 8-bit AdamW (bitsandbytes): tensors under 4,096 elements keep fp32 m and v. In tiny-llama
// those are the 5 norms (5 x 64 = 320) and k, v of both layers (4 x 2,048 = 8,192): 8,512
// elements x 8 bytes = 68,096. The other 149,888 elements take 2 bytes = 299,776, plus one fp32
// absmax per 256 elements for m and for v: blocks = 129 (embed) + 129 (lm_head) + 2 x (16 q
// + 16 o) + 2 x 3 x 44 (MLP) = 586, x 2 x 4 bytes = 4,688. Total 372,560.
TEST(StaticMemory, EightBitAdamByHand) {
  TrainingSetup s;
  s.optimizer = OptimizerKind::adamw_8bit;
  EXPECT_EQ(static_memory(tiny(), s).optimizer_state_bytes, 68'096 + 299'776 + 4'688);
}

TEST(StaticMemory, FrozenAndStatelessOptimizers) {
  TrainingSetup frozen;
  frozen.optimizer = OptimizerKind::none;
  frozen.precision = Precision::mixed;  // frozen weights need no master copy
  const StaticMemory f = static_memory(tiny(), frozen);
  EXPECT_EQ(f.total_bytes(), 316'800);
  EXPECT_EQ(f.largest_gradient_bytes, 0);
  TrainingSetup sgd;
  sgd.optimizer = OptimizerKind::sgd;
  EXPECT_EQ(static_memory(tiny(), sgd).optimizer_state_bytes, 0);
}

TEST(StaticMemory, Llama3At8BytesPerParameterInTheReferenceSetup) {
  const StaticMemory m = static_memory(*resolve_model("llama3-8b"), TrainingSetup{});
  EXPECT_EQ(m.weights_bytes, 2 * 8'030'261'248);
  EXPECT_EQ(m.optimizer_state_bytes, 4 * 8'030'261'248);
}

// llama3-8b, mixed precision, on an A100-40G (39,929 MiB usable = 41,868,328,960 bytes):
// 14 bytes per parameter is 112 GB; alone, --precision bf16 (6 B: 48.2 GB), 8-bit AdamW
// (~8 B: 64.5 GB) or SGD (6 B) are not enough; bf16 with 8-bit AdamW (~4 B: 32.4 GB) or with
// SGD (2 B) fit. On an A100-80G (84.6 GB usable) each single change fits.
TEST(StaticMemory, FixesSayWhichChangeWouldFit) {
  const ModelSpec llama = *resolve_model("llama3-8b");
  TrainingSetup mixed;
  mixed.precision = Precision::mixed;
  std::vector<std::string> flags;
  for (const SetupChange& c : static_fixes(llama, *resolve_gpu("A100-40G"), mixed)) {
    flags.push_back(c.flags);
    EXPECT_LE(c.static_bytes, resolve_gpu("A100-40G")->usable_bytes());
  }
  EXPECT_THAT(flags, ::testing::ElementsAre("--precision bf16 --optimizer adamw-8bit", "--precision bf16 --optimizer sgd"));

  flags.clear();
  for (const SetupChange& c : static_fixes(llama, *resolve_gpu("A100-80G"), mixed)) flags.push_back(c.flags);
  EXPECT_THAT(flags, ::testing::ElementsAre("--precision bf16", "--optimizer adamw-8bit", "--optimizer sgd"));

  // bf16 but optimizer after backward (6 bytes per parameter, 48.2 GB) on the A100-40G: SGD alone
  // fits (4 B), but keeping AdamW with 8-bit state applied in backward (~4 B) changes less.
  TrainingSetup after;
  after.optimizer_in_backward = false;
  flags.clear();
  for (const SetupChange& c : static_fixes(llama, *resolve_gpu("A100-40G"), after)) flags.push_back(c.flags);
  EXPECT_THAT(flags, ::testing::ElementsAre("--optimizer-in-backward --optimizer adamw-8bit", "--optimizer sgd"));

  EXPECT_TRUE(static_fixes(llama, *resolve_gpu("A100-80G"), TrainingSetup{}).empty());  // already fits
  EXPECT_TRUE(static_fixes(*resolve_model("llama3-70b"), *resolve_gpu("A100-80G"), mixed).empty());  // nothing fits
}

}  // namespace
}  // namespace mstplan

#include <rapidcheck/gtest.h>

#include "planner/builder.h"
#include "planner/schedule_check.h"

namespace mstplan {
namespace {

// The closed form above decides the headline static lines and whether the search runs; the step
// program is what the analysis measures. Over the setup space they count the same bytes: the
// program's static tensors (the outputs of step.begin) by kind equal static_memory()'s fields.
RC_GTEST_PROP(StaticMemoryProperty, FormulaEqualsTheProgramsStaticTensors, ()) {
  const ModelSpec m = *resolve_model(*rc::gen::element<std::string>("tiny-llama", "tiny-qwen2", "tiny-gemma2"));
  TrainingSetup s;
  s.profile = *rc::gen::element(Profile::native, Profile::pytorch);
  s.precision = s.profile == Profile::native ? *rc::gen::element(Precision::bf16, Precision::mixed, Precision::fp32)
                                             : *rc::gen::element(Precision::bf16, Precision::mixed);
  s.optimizer = *rc::gen::element(OptimizerKind::adamw, OptimizerKind::adamw_8bit, OptimizerKind::sgd, OptimizerKind::none);
  s.optimizer_in_backward = *rc::gen::arbitrary<bool>();
  s.grad_accum = *rc::gen::inRange<std::int64_t>(1, 4);
  s.zero_grad_set_to_none = *rc::gen::arbitrary<bool>();
  // Data-parallel ranks with every ZeRO stage the profile models (pytorch: DDP and FSDP2).
  s.parallel.gpus = *rc::gen::element<std::int64_t>(1, 2, 3, 8);
  if (s.parallel.gpus > 1) {
    s.parallel.zero = s.profile == Profile::native
                          ? *rc::gen::element(ZeroStage::none, ZeroStage::optimizer, ZeroStage::gradients, ZeroStage::parameters)
                          : *rc::gen::element(ZeroStage::none, ZeroStage::parameters);
  }
  // ZeRO-Offload where DeepSpeed runs it (AdamW after backward, bf16 weights, one GPU or ZeRO-2/3).
  TrainingSetup offloaded = s;
  offloaded.offload_optimizer = true;
  offloaded.optimizer_in_backward = false;
  if (!check_offload_optimizer(offloaded, "").has_value() && *rc::gen::arbitrary<bool>()) s = offloaded;
  // And the parameters with it, where ZeRO-3 (or one GPU) allows.
  TrainingSetup params_too = s;
  params_too.offload_param = true;
  if (s.offload_optimizer && !check_offload_optimizer(params_too, "").has_value() && *rc::gen::arbitrary<bool>()) {
    s = params_too;
  }
  // Ulysses over the ranks, where the tiny models' heads allow it (sequence rounded to a multiple).
  std::int64_t seq = *rc::gen::inRange<std::int64_t>(2, 200);
  TrainingSetup split = s;
  split.parallel.sp = *rc::gen::element<std::int64_t>(1, 2);
  seq = std::max<std::int64_t>(seq / split.parallel.sp * split.parallel.sp, 2 * split.parallel.sp);
  split.seq_len = seq;
  if (!check_sequence_parallel(split, m, "").has_value()) s.parallel.sp = split.parallel.sp;
  const Program p = build_program(m, s, Plan::vanilla(), seq);
  RC_ASSERT(!check_schedule(p).has_value());
  std::int64_t weights = 0, master = 0, gradients = 0, state = 0, buckets = 0, host = 0;
  for (TensorId t : p.outputs(p.ops.front())) {
    const Tensor& x = p.tensors[t];
    if (x.device == Device::host) {
      host += x.bytes;
      continue;
    }
    if (x.kind == TensorKind::weight) weights += x.bytes;
    if (x.kind == TensorKind::master_weight) master += x.bytes;
    if (x.kind == TensorKind::gradient) gradients += x.bytes;
    if (x.kind == TensorKind::optimizer_state) state += x.bytes;
    if (std::string_view(x.label) == "ddp.buckets") buckets += x.bytes;
  }
  const StaticMemory f = static_memory(m, s);
  RC_ASSERT(weights == f.weights_bytes);
  RC_ASSERT(master == f.master_weights_bytes);
  RC_ASSERT(gradients == f.gradient_bytes);
  RC_ASSERT(state == f.optimizer_state_bytes);
  RC_ASSERT(buckets == f.communication_bytes);
  RC_ASSERT(host == f.host_bytes);
  // Gradients that are not static are allocated by backward: each one exactly once when trained.
  std::int64_t all_gradients = 0;
  for (const Tensor& x : p.tensors) {
    if (x.kind == TensorKind::gradient && std::string_view(x.label) != "grad.shard" &&
        std::string_view(x.label) != "grad.host") {
      all_gradients += x.bytes;
    }
  }
  const ParameterStorage storage = parameter_storage(s);
  RC_ASSERT(all_gradients == (storage.gradients ? count_parameters(m).total * dtype_bytes(*storage.gradients) : 0));
}

}  // namespace
}  // namespace mstplan
