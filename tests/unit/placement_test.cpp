// Arena placement checked the way ggml-alloc's tests do: with an independent oracle (lifetimes read
// off the unrolled ops, not liveness.h), every instance is placed, no two instances live at the
// same time overlap, the arena holds them, and its live peak is the oracle's.
#include "planner/placement.h"

#include <algorithm>

#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include "planner/builder.h"
#include "planner/catalog.h"

namespace mstplan {
namespace {

// The oracle: when each instance lives, read off the unrolled ops directly (its first and last
// appearance), not from liveness.h, whose spans place() itself uses.
struct OracleSpan {
  std::int64_t first = -1, last = -1;
};
std::vector<OracleSpan> oracle_spans(const FlatProgram& flat) {
  std::vector<OracleSpan> spans(flat.instances.size());
  for (std::size_t i = 0; i < flat.ops.size(); ++i) {
    for (const std::vector<std::uint32_t>* list : {&flat.ops[i].inputs, &flat.ops[i].outputs}) {
      for (std::uint32_t x : *list) {
        if (spans[x].first < 0) spans[x].first = static_cast<std::int64_t>(i);
        spans[x].last = static_cast<std::int64_t>(i);
      }
    }
  }
  return spans;
}

void expect_valid(const Program& p, const Placement& pl, const AllocatorModel& allocator) {
  const FlatProgram flat = expand(p);
  ASSERT_EQ(flat.instances.size(), pl.offset.size());
  const std::vector<OracleSpan> spans = oracle_spans(flat);
  // The shared lifetimes are the oracle's, instance by instance.
  const Lifetimes lt = lifetimes(p);
  ASSERT_EQ(lt.op.size(), flat.ops.size());
  for (std::size_t i = 0; i < spans.size(); ++i) {
    ASSERT_EQ(lt.first_op[i], spans[i].first) << tensor_name(p, flat.instances[i].tensor, flat.instances[i].iteration);
    ASSERT_EQ(lt.last_op[i], spans[i].last) << tensor_name(p, flat.instances[i].tensor, flat.instances[i].iteration);
  }
  struct Interval {
    std::int64_t first, last, offset, size;
  };
  std::vector<Interval> live;
  // Sweep the oracle's live bytes per op for the arena's lower bound.
  std::vector<std::int64_t> delta(flat.ops.size() + 1, 0);
  for (std::size_t i = 0; i < flat.instances.size(); ++i) {
    const Tensor& t = p.tensors[flat.instances[i].tensor];
    if (spans[i].first < 0 || t.device == Device::host) continue;
    const std::int64_t size = allocator.allocated(t.bytes);
    ASSERT_EQ(pl.size[i], size) << tensor_name(p, flat.instances[i].tensor);
    ASSERT_GE(pl.offset[i], 0) << tensor_name(p, flat.instances[i].tensor);
    ASSERT_LE(pl.offset[i] + size, pl.high_water_bytes);
    if (size > 0) live.push_back({spans[i].first, spans[i].last, pl.offset[i], size});
    delta[static_cast<std::size_t>(spans[i].first)] += size;
    delta[static_cast<std::size_t>(spans[i].last) + 1] -= size;
  }
  // Sweep: at every op, the instances live there must not overlap in memory.
  std::sort(live.begin(), live.end(), [](const Interval& a, const Interval& b) { return a.first < b.first; });
  for (std::size_t a = 0; a < live.size(); ++a) {
    for (std::size_t b = a + 1; b < live.size() && live[b].first <= live[a].last; ++b) {
      const bool disjoint = live[a].offset + live[a].size <= live[b].offset || live[b].offset + live[b].size <= live[a].offset;
      ASSERT_TRUE(disjoint) << "instances overlap at op " << live[b].first;
    }
  }
  std::int64_t bytes = 0, peak = 0;
  for (std::int64_t d : delta) peak = std::max(peak, bytes += d);
  EXPECT_EQ(pl.live_peak_bytes, peak);
  EXPECT_GE(pl.high_water_bytes, peak);
}

TEST(Placement, ArenaHoldsEveryInstanceWithoutOverlap) {
  const ModelSpec m = *resolve_model("tiny-gemma2");
  const AllocatorModel allocator = AllocatorModel::for_profile(Profile::native);
  const Program p = build_program(m, TrainingSetup{}, Plan::mst_reference(m), 300);
  const Placement pl = place(p, allocator);
  expect_valid(p, pl, allocator);
  // The live peak of the placement is the analysis' allocated peak.
  EXPECT_EQ(pl.live_peak_bytes, analyze(p, allocator).peak.allocated_bytes);
}

RC_GTEST_PROP(PlacementProperty, ValidForAnyPlan, ()) {
  const ModelSpec m = *resolve_model(*rc::gen::element<std::string>("tiny-llama", "tiny-qwen2", "tiny-gemma2"));
  TrainingSetup setup;
  setup.profile = *rc::gen::element(Profile::native, Profile::pytorch);
  Plan plan = *rc::gen::element(Plan::vanilla(), Plan::recompute_all(), Plan::mst_reference(m));
  plan.mlp = ChunkSetting{*rc::gen::inRange<std::int64_t>(1, 6), {}};
  plan.offload_checkpoints = *rc::gen::arbitrary<bool>();
  const Program p = build_program(m, setup, plan, *rc::gen::inRange<std::int64_t>(2, 120));
  const AllocatorModel allocator = AllocatorModel::for_profile(setup.profile);
  const Placement pl = place(p, allocator);
  expect_valid(p, pl, allocator);
  RC_ASSERT(pl.live_peak_bytes == analyze(p, allocator).peak.allocated_bytes);
}

}  // namespace
}  // namespace mstplan
