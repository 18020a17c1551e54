// The pytorch profile's setup knobs, each with its memory worked out by hand: the transformers
// version's loss path, the loop holding outputs, zero_grad(set_to_none=True), flash-attn, and the
// MST authors' code. Exact bytes (no allocator rounding) on tiny-llama: hidden 64, vocabulary 515,
// 4 query heads over 2 key/value heads, 158,400 parameters.
#include <gtest/gtest.h>

#include "planner/analysis.h"
#include "planner/builder.h"
#include "planner/catalog.h"
#include "planner/search.h"

namespace mstplan {
namespace {

const AllocatorModel kExact{1};

ModelSpec tiny() { return *resolve_model("tiny-llama"); }

TrainingSetup pytorch(Framework framework) {
  TrainingSetup s;
  s.profile = Profile::pytorch;
  s.framework = framework;
  return s;
}

OpId find_op(const Program& p, std::string_view label, Pass pass = Pass::forward) {
  for (OpId i = 0; i < p.ops.size(); ++i) {
    if (p.ops[i].label == label && p.ops[i].pass == pass) return i;
  }
  ADD_FAILURE() << "no op " << label;
  return 0;
}

bool has_tensor(const Program& p, std::string_view label) {
  for (const Tensor& t : p.tensors) {
    if (t.label == label) return true;
  }
  return false;
}

std::int64_t during(const Program& p, std::string_view op_label, Pass pass = Pass::forward) {
  return analyze(p, kExact).op_peak_bytes[find_op(p, op_label, pass)];
}

// During the loss op of plain transformers at S = 128 (T = 128 rows, 127 labelled positions) the
// LM head's tensors are, in bytes (T x V x 4 = 263,680; 127 x V x 4 = 261,620; T x V x 2 = 131,840):
//   transformers-5     bf16 logits (the output) + fp32 upcast + log-softmax over T rows:
//                      131,840 + 263,680 + 263,680 = 659,200
//   transformers-4.46  bf16 logits + fp32 upcast + shifted fp32 copy + log-softmax over 127 rows:
//                      131,840 + 263,680 + 261,620 + 261,620 = 918,760 (+259,560)
//   transformers-4.44  the model's fp32 logits (the output; the bf16 ones are gone) + shifted copy +
//                      log-softmax: 263,680 + 261,620 + 261,620 = 786,920 (+127,720)
// and everything else is the same program.
TEST(PytorchProfile, LossPathsOfTransformersVersions) {
  const ModelSpec m = tiny();
  const std::int64_t v5 = during(build_program(m, pytorch(Framework::transformers_5), Plan::vanilla(), 128), "lm_head.loss");
  const Program p46 = build_program(m, pytorch(Framework::transformers_4_46), Plan::vanilla(), 128);
  const Program p44 = build_program(m, pytorch(Framework::transformers_4_44), Plan::vanilla(), 128);
  EXPECT_EQ(during(p46, "lm_head.loss") - v5, 259'560);
  // 4.44 also repeats k and v (32 wide: 2 heads of 16) to the 4 query heads (64 wide) before SDPA,
  // which saves the copies instead: 2 layers x 2 tensors x 128 x (64 - 32) x 2 bytes = 32,768 more.
  EXPECT_EQ(during(p44, "lm_head.loss") - v5, 127'720 + 32'768);
  // Their backward writes the shifted gradient into a zero-filled full-size fp32 tensor.
  EXPECT_TRUE(has_tensor(p46, "lm_head.logits32.grad"));
  EXPECT_FALSE(has_tensor(build_program(m, pytorch(Framework::transformers_5), Plan::vanilla(), 128),
                          "lm_head.logits32.grad"));
  // torchtune: fp32 logits from the model and labels shifted: 263,680 + 263,680 = 527,360, with
  // k and v repeated as in 4.44.
  const Program tt = build_program(m, pytorch(Framework::torchtune), Plan::vanilla(), 128);
  EXPECT_EQ(during(tt, "lm_head.loss") - v5, 527'360 - 659'200 + 32'768);
}

// Holding `outputs` keeps the previous step's logits until this step's loss: 131,840 bytes more at
// the loss op with transformers-5 (bf16), 263,680 with 4.44 (fp32); and this step's output lives to
// the step's end, so it is there during the optimizer's last update too.
TEST(PytorchProfile, HeldOutputsLiveIntoTheNextStep) {
  const ModelSpec m = tiny();
  for (auto [framework, bytes] : {std::pair{Framework::transformers_5, 131'840}, std::pair{Framework::transformers_4_44, 263'680}}) {
    TrainingSetup held = pytorch(framework);
    held.hold_outputs = true;
    const Program a = build_program(m, pytorch(framework), Plan::vanilla(), 128);
    const Program b = build_program(m, held, Plan::vanilla(), 128);
    EXPECT_EQ(during(b, "lm_head.loss") - during(a, "lm_head.loss"), bytes) << to_string(framework);
    EXPECT_EQ(during(b, "embedding.grad", Pass::backward) - during(a, "embedding.grad", Pass::backward), bytes);
    // MST's LM head returns no logits: nothing to hold.
    const Plan mst = Plan::mst_reference(m);
    TrainingSetup held_mst = held;
    EXPECT_EQ(analyze(build_program(m, held_mst, mst, 128), kExact).peak.allocated_bytes,
              analyze(build_program(m, pytorch(framework), mst, 128), kExact).peak.allocated_bytes);
  }
}

// zero_grad(set_to_none=True) after backward: no gradient exists before backward, all of them
// (158,400 x 2 bytes = 316,800) at the optimizer step. Zeroed in place instead, they are static.
TEST(PytorchProfile, GradientsLiveFromBackwardToTheOptimizerStep) {
  const ModelSpec m = tiny();
  TrainingSetup s = pytorch(Framework::transformers_5);
  s.optimizer_in_backward = false;
  auto gradients_at = [&](const TrainingSetup& setup, std::string_view label, Pass pass) {
    const Program p = build_program(m, setup, Plan::vanilla(), 64);
    for (const TimelinePoint& t : timeline(p, kExact)) {
      if (p.ops[t.op].label == label && p.ops[t.op].pass == pass) {
        return t.during.by_kind[static_cast<std::size_t>(TensorKind::gradient)];
      }
    }
    ADD_FAILURE() << "no op " << label;
    return std::int64_t{-1};
  };
  EXPECT_EQ(gradients_at(s, "lm_head.logits", Pass::forward), 0);
  EXPECT_EQ(gradients_at(s, "adamw.foreach", Pass::optimizer), 316'800);
  s.zero_grad_set_to_none = false;
  EXPECT_EQ(gradients_at(s, "lm_head.logits", Pass::forward), 316'800);
  EXPECT_TRUE(persistent_gradients(s));
  s.zero_grad_set_to_none = true;
  s.grad_accum = 2;  // accumulation needs them across micro-batches
  EXPECT_EQ(gradients_at(s, "lm_head.logits", Pass::forward), 316'800);
}

// Under autocast (precision mixed) the residual stream is fp32, so an offloaded checkpoint leaves
// as 64 x 64 x 4 = 16,384 bytes and comes back as the same 16,384 fp32 bytes (not 8,192 of bf16):
// one offload and one prefetch per layer, 2 layers.
TEST(PytorchProfile, OffloadedCheckpointsComeBackInTheirDtype) {
  const ModelSpec m = tiny();
  TrainingSetup s = pytorch(Framework::transformers_5);
  s.precision = Precision::mixed;
  Plan plan = Plan::recompute_all();
  plan.offload_checkpoints = true;
  const Program p = build_program(m, s, plan, 64);
  int copies = 0;
  for (const Op& op : p.ops) {
    if (op.kind != OpKind::copy_to_host && op.kind != OpKind::copy_to_device) continue;
    ++copies;
    for (const auto list : {p.inputs(op), p.outputs(op)}) {
      for (TensorId t : list) {
        EXPECT_EQ(p.tensors[t].dtype, DType::fp32) << op.label;
        EXPECT_EQ(p.tensors[t].bytes, 16'384) << op.label;
      }
    }
  }
  EXPECT_EQ(copies, 4);
}

// flash-attn: o_proj reads the kernel's output (no contiguous copy of 128 x 64 bf16 per layer), and
// its backward expands dk and dv to the 4 query heads (GQA).
TEST(PytorchProfile, FlashAttnPackage) {
  const ModelSpec m = tiny();
  TrainingSetup sdpa = pytorch(Framework::transformers_5);
  TrainingSetup fa = sdpa;
  fa.attention = AttentionKind::flash_attn;
  const Program a = build_program(m, sdpa, Plan::vanilla(), 128);
  const Program b = build_program(m, fa, Plan::vanilla(), 128);
  EXPECT_TRUE(has_tensor(a, "attn.out.contiguous"));
  EXPECT_FALSE(has_tensor(b, "attn.out.contiguous"));
  EXPECT_TRUE(has_tensor(b, "attn.dk_expanded"));
  // Two layers' copies of 128 x 64 bf16 = 16,384 bytes each are not saved at the loss.
  EXPECT_EQ(during(a, "lm_head.loss") - during(b, "lm_head.loss"), 2 * 16'384);
}

// The authors' code: the LM-head weight gradient is accumulated in place (no partial tensor) and
// its update waits for the embedding's, so it lives through the layers' backward; their MLP
// concatenates chunk outputs.
TEST(PytorchProfile, MstAuthorsCode) {
  const ModelSpec m = tiny();
  TrainingSetup s = pytorch(Framework::transformers_4_44);
  const Program p = build_program(m, s, Plan::mst_authors(), 256);
  const std::int32_t lm_head = static_cast<std::int32_t>(p.params.size() - 1);
  OpId lm_update = 0, embed_update = 0;
  for (OpId i = 0; i < p.ops.size(); ++i) {
    if (p.ops[i].kind != OpKind::optimizer) continue;
    if (p.ops[i].param == lm_head) lm_update = i;
    if (p.ops[i].param == 0) embed_update = i;
    if (std::string_view(p.ops[i].label) == "lm_head.dw") ADD_FAILURE();
  }
  EXPECT_GT(lm_update, embed_update) << "the LM head's update follows the embedding's";
  for (OpId i = 0; i < p.ops.size(); ++i) {
    if (std::string_view(p.ops[i].label) == "lm_head.dw") {
      EXPECT_EQ(p.ops[i].outputs, 1U) << "no partial gradient";
    }
  }
  EXPECT_TRUE(has_tensor(p, "mlp.chunk_out"));
  // 515 x 64 x 2 = 65,920 bytes of LM-head gradient more during the layers' backward than with the
  // same plan without the authors' quirks (the update in the LM head's own hook), everything else
  // equal but the MLP's concatenation, which is over by then.
  Plan plain = Plan::mst_authors();
  plain.authors_code = false;
  const Program q = build_program(m, s, plain, 256);
  EXPECT_EQ(during(p, "attn.q.dx", Pass::backward) - during(q, "attn.q.dx", Pass::backward), 65'920 * 1);
  // mst-reference is a pytorch-profile method only.
  EXPECT_EQ(method_plan(Method::mst_reference, m), Plan::mst_authors());
}

}  // namespace
}  // namespace mstplan
