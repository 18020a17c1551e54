// Arena placement checked the way ggml-alloc's tests do: with an independent oracle, every
// instance is placed, no two instances live at the same time overlap, and the arena holds them.
#include "planner/placement.h"

#include <algorithm>

#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include "planner/builder.h"
#include "planner/catalog.h"

namespace mstplan {
namespace {

void expect_valid(const Program& p, const Placement& pl) {
  struct Interval {
    std::int64_t first, last, offset, size;
  };
  std::vector<Interval> live;
  for (std::size_t i = 0; i < pl.flat.instances.size(); ++i) {
    const Tensor& t = p.tensors[pl.flat.instances[i].tensor];
    if (pl.first_op[i] < 0 || t.device == Device::host) continue;
    ASSERT_GE(pl.offset[i], 0) << tensor_name(p, pl.flat.instances[i].tensor);
    ASSERT_LE(pl.offset[i] + pl.size[i], pl.high_water_bytes);
    if (pl.size[i] > 0) live.push_back({pl.first_op[i], pl.last_op[i], pl.offset[i], pl.size[i]});
  }
  // Sweep: at every op, the instances live there must not overlap in memory.
  std::sort(live.begin(), live.end(), [](const Interval& a, const Interval& b) { return a.first < b.first; });
  for (std::size_t a = 0; a < live.size(); ++a) {
    for (std::size_t b = a + 1; b < live.size() && live[b].first <= live[a].last; ++b) {
      const bool disjoint = live[a].offset + live[a].size <= live[b].offset || live[b].offset + live[b].size <= live[a].offset;
      ASSERT_TRUE(disjoint) << "instances overlap at op " << live[b].first;
    }
  }
  EXPECT_GE(pl.high_water_bytes, pl.live_peak_bytes);
}

TEST(Placement, ArenaHoldsEveryInstanceWithoutOverlap) {
  const ModelSpec m = *resolve_model("tiny-gemma2");
  const AllocatorModel allocator = AllocatorModel::for_profile(Profile::native);
  const Program p = build_program(m, TrainingSetup{}, Plan::mst_reference(m), 300);
  const Placement pl = place(p, allocator);
  expect_valid(p, pl);
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
  expect_valid(p, pl);
  RC_ASSERT(pl.live_peak_bytes == analyze(p, allocator).peak.allocated_bytes);
}

}  // namespace
}  // namespace mstplan
