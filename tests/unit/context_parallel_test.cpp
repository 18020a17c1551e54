// Context parallelism (Note [Context-parallel step] in builder.cpp) in the planner: each rank's
// share of the sequence, the keys and values all-gathered around attention, their gradients
// reduce-scattered, the bytes by hand, and the refusals with the field and value.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string_view>

#include "planner/builder.h"
#include "planner/catalog.h"
#include "planner/schedule_check.h"
#include "program_util.h"
#include "planner/setup.h"
#include "planner/static_memory.h"

namespace mstplan {
namespace {

using ::testing::HasSubstr;
using test::ops_with;
using test::saved_bytes_of_layer;

TrainingSetup context_parallel(std::int64_t gpus, std::int64_t cp) {
  TrainingSetup s;
  s.parallel.gpus = gpus;
  s.parallel.cp = cp;
  return s;
}

TEST(ContextParallel, KeysAndValuesAreGatheredAroundAttention) {
  // tiny-llama (d 64, 4 query heads and 2 key/value heads of 16: 32 key/value channels) over 2
  // ranks, 34 positions: each rank holds 17. Each gathered k (and v) is every position's:
  // 34 x 32 bf16 = 2,176 bytes, so an all-gather moves 4,352 bytes into k and v. Per layer: one
  // all-gather in forward, one in backward (attention's backward reads them again), and one
  // reduce-scatter of dk, dv (4,352 bytes) back to the rank's 17 positions. Two layers: 4
  // all-gathers and 2 reduce-scatters, all over the group of 2.
  const ModelSpec m = *resolve_model("tiny-llama");
  const Program p = build_program(m, context_parallel(2, 2), Plan::vanilla(), 34);
  ASSERT_EQ(check_schedule(p), std::nullopt);
  EXPECT_EQ(p.seq_len, 34);
  EXPECT_EQ(p.local_seq_len(), 17);
  EXPECT_EQ(p.sequence_parallel, 2);
  // The ops of `code` labelled `label`, each checked to move 4,352 bytes over the group of 2.
  auto count_collectives = [&](OpCode code, std::string_view label) {
    std::int64_t count = 0;
    for (const Op* op : ops_with(p, code)) {
      if (std::string_view(op->label) != label) continue;
      ++count;
      EXPECT_EQ(op->m, 2) << label;
      EXPECT_EQ(op->n, 4'352) << label;
    }
    return count;
  };
  EXPECT_EQ(count_collectives(OpCode::all_gather, "attn.kv.all_gather"), 4);
  EXPECT_EQ(count_collectives(OpCode::reduce_scatter, "attn.dkv.reduce_scatter"), 2);
  std::int64_t gathered = 0;
  for (const Tensor& t : p.tensors) {
    const std::string_view label(t.label);
    if (label == "attn.k.gathered" || label == "attn.v.gathered" || label == "attn.dk.gathered" ||
        label == "attn.dv.gathered") {
      ++gathered;
      EXPECT_EQ(t.bytes, 2'176) << t.label;
      EXPECT_EQ(t.kind, TensorKind::transient) << t.label;  // gathered for attention only
      EXPECT_EQ(t.split, Split::all_positions) << t.label;
    }
  }
  EXPECT_EQ(gathered, 2 * (2 + 2 + 2));  // per layer: k, v in forward, again in backward, dk, dv
  // Everything else is the rank's 17 positions.
  EXPECT_EQ(p.tensors[p.tokens].elements, 17);
  for (const Loop& loop : p.loops) EXPECT_EQ(loop.rows, 17);
}

TEST(ContextParallel, EachRankSavesWhatOneDeviceSavesAtItsShare) {
  // Attention saves only the rank's own k and v (the gathered copies are transient), and lse is
  // 4 heads x the rank's 16 queries: a layer's saved tensors with 32 positions over 2 ranks are
  // exactly one device's at 16 positions.
  const ModelSpec m = *resolve_model("tiny-llama");
  const Program one = build_program(m, TrainingSetup{}, Plan::vanilla(), 16);
  const Program split = build_program(m, context_parallel(2, 2), Plan::vanilla(), 32);
  for (std::int32_t layer = 0; layer < 2; ++layer) {
    EXPECT_EQ(saved_bytes_of_layer(split, layer), saved_bytes_of_layer(one, layer)) << layer;
  }
  // The static state does not depend on the sharing (no ZeRO here): the same as one device's.
  EXPECT_EQ(static_memory(m, context_parallel(2, 2)).total_bytes(), static_memory(m, TrainingSetup{}).total_bytes());
}

TEST(ContextParallel, AttentionRunsTheRanksQueriesAgainstEveryKey) {
  const ModelSpec m = *resolve_model("tiny-llama");
  const Program p = build_program(m, context_parallel(4, 4), Plan::vanilla(), 64);
  ASSERT_EQ(check_schedule(p), std::nullopt);
  for (const Op* op : ops_with(p, OpCode::attention)) {
    EXPECT_EQ(op->n, 16) << op->label;  // the rank's queries
    EXPECT_EQ(op->k, 64) << op->label;  // every key
  }
}

TEST(ContextParallel, RefusalsNameTheFieldAndValue) {
  const ModelSpec m = *resolve_model("tiny-llama");
  struct Case {
    TrainingSetup setup;
    const char* says;
  };
  TrainingSetup three = context_parallel(8, 3);
  TrainingSetup both = context_parallel(8, 2);
  both.parallel.sp = 2;
  TrainingSetup odd = context_parallel(8, 4);
  odd.seq_len = 1002;
  TrainingSetup pytorch = context_parallel(8, 2);
  pytorch.profile = Profile::pytorch;
  TrainingSetup eager = context_parallel(8, 2);
  eager.attention = AttentionKind::eager;
  TrainingSetup zero = context_parallel(8, 0);
  const Case cases[] = {
      {three, "flags: field 'cp': 3: does not divide the 8 GPUs (gpus)"},
      {both, "flags: field 'cp': 2: context parallelism with Ulysses (sp 2) is not modelled"},
      {odd, "flags: field 'cp': 4: does not divide the sequence of 1002 tokens (seq_len); give a multiple of 4"},
      {pytorch, "flags: field 'cp': 2: the pytorch profile is the Hugging Face step"},
      {eager, "flags: field 'cp': 2: context parallelism runs a memory-efficient attention"},
      {zero, "flags: field 'cp': 0: the ranks sharing a sequence are 1 or more"},
  };
  for (const Case& c : cases) {
    const auto error = check_sequence_parallel(c.setup, m, "flags");
    ASSERT_TRUE(error.has_value()) << c.says;
    EXPECT_THAT(error->message, HasSubstr(c.says));
  }
  EXPECT_FALSE(check_sequence_parallel(context_parallel(8, 8), m, "flags").has_value());  // not bounded by the heads
}

}  // namespace
}  // namespace mstplan
