// PyTorch's caching allocator (Note [Caching allocator]) on hand-worked traces: every figure below
// is worked out from the rules in the comment before it, then asserted.
#include "planner/caching_allocator.h"

#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include "planner/analysis.h"
#include "planner/builder.h"
#include "planner/catalog.h"
#include "planner/search.h"

namespace mstplan {
namespace {

constexpr std::int64_t MiB = std::int64_t{1} << 20;

TEST(CachingAllocator, RoundsRequestsAndPicksPoolsAndSegmentSizes) {
  CachingAllocator a;
  // 1 byte: rounded to 512, small pool, a new 2 MiB segment.
  const auto b1 = a.malloc(1);
  EXPECT_EQ(a.block_bytes(b1), 512);
  EXPECT_EQ(a.allocated_bytes(), 512);
  EXPECT_EQ(a.reserved_bytes(), 2 * MiB);
  // 1 MiB + 1: 1 MiB + 512 after rounding, over kSmallSize: large pool, a 20 MiB segment (under
  // 10 MiB), split (18.99 MiB of rest is over 1 MiB).
  const auto b2 = a.malloc(MiB + 1);
  EXPECT_EQ(a.block_bytes(b2), MiB + 512);
  EXPECT_EQ(a.allocated_bytes(), 512 + MiB + 512);
  EXPECT_EQ(a.reserved_bytes(), 22 * MiB);
  // 5 MiB more: served from the 20 MiB segment's rest (best fit); nothing new reserved.
  (void)a.malloc(5 * MiB);
  EXPECT_EQ(a.reserved_bytes(), 22 * MiB);
  // 19.5 MiB: over 10 MiB, so a segment of the request rounded up to 2 MiB: 20 MiB, and the
  // 0.5 MiB rest is not split off (a large block splits only above 1 MiB of rest): the whole 20 MiB
  // block counts as allocated.
  const auto b4 = a.malloc(19 * MiB + MiB / 2);
  EXPECT_EQ(a.block_bytes(b4), 20 * MiB);
  EXPECT_EQ(a.reserved_bytes(), 42 * MiB);
  EXPECT_EQ(a.allocated_bytes(), 512 + MiB + 512 + 5 * MiB + 20 * MiB);
  EXPECT_EQ(a.stats().segments_created, 3);
}

TEST(CachingAllocator, ReusesCachedBlocksBestFitSplitsAndMerges) {
  CachingAllocator a;
  // A 100 MiB segment, freed: cached, still reserved.
  a.free(a.malloc(100 * MiB));
  EXPECT_EQ(a.allocated_bytes(), 0);
  EXPECT_EQ(a.reserved_bytes(), 100 * MiB);
  // 30 MiB from the cached block: split into 30 + 70 (rest over 1 MiB); 70 MiB fits the rest exactly.
  const auto y = a.malloc(30 * MiB);
  const auto z = a.malloc(70 * MiB);
  EXPECT_EQ(a.block_bytes(y), 30 * MiB);
  EXPECT_EQ(a.block_bytes(z), 70 * MiB);
  EXPECT_EQ(a.reserved_bytes(), 100 * MiB);
  // Both freed: they merge back into one 100 MiB block, which serves 100 MiB again.
  a.free(y);
  a.free(z);
  (void)a.malloc(100 * MiB);
  EXPECT_EQ(a.reserved_bytes(), 100 * MiB);
  EXPECT_EQ(a.stats().segments_created, 1);
}

TEST(CachingAllocator, FragmentationReservesMoreThanIsAllocated) {
  CachingAllocator a;
  // A and B: 30 MiB segments each. A freed: a cached 30 MiB block that a 40 MiB request cannot
  // use, so a third segment: 100 MiB reserved for 70 MiB allocated.
  const auto first = a.malloc(30 * MiB);
  (void)a.malloc(30 * MiB);
  a.free(first);
  (void)a.malloc(40 * MiB);
  EXPECT_EQ(a.allocated_bytes(), 70 * MiB);
  EXPECT_EQ(a.reserved_bytes(), 100 * MiB);
  EXPECT_EQ(a.stats().peak_reserved_bytes, 100 * MiB);
  EXPECT_EQ(a.stats().peak_allocated_bytes, 70 * MiB);
}

TEST(CachingAllocator, FreesTheCacheBeforeRunningOutOfMemory) {
  CachingAllocator a({.capacity_bytes = 100 * MiB});
  // A (60 MiB) freed stays reserved; B (70 MiB) would make 130 MiB: the whole free segment of A
  // is released first (one flush), then B's segment fits: 70 MiB reserved.
  a.free(a.malloc(60 * MiB));
  const auto b = a.malloc(70 * MiB);
  ASSERT_NE(b, CachingAllocator::kFailed);
  EXPECT_EQ(a.reserved_bytes(), 70 * MiB);
  EXPECT_EQ(a.stats().cache_flushes, 1);
  EXPECT_EQ(a.stats().peak_reserved_bytes, 70 * MiB);
  // C (40 MiB) would make 110 MiB and nothing is cached: out of memory.
  EXPECT_EQ(a.malloc(40 * MiB), CachingAllocator::kFailed);
  EXPECT_EQ(a.stats().cache_flushes, 2);
  // A segment split in use is never released: D (20 MiB) from a 60 MiB segment, its 40 MiB rest free.
  CachingAllocator c({.capacity_bytes = 100 * MiB});
  c.free(c.malloc(60 * MiB));
  (void)c.malloc(20 * MiB);              // splits the cached 60 MiB block: 20 in use, 40 free
  EXPECT_EQ(c.malloc(50 * MiB), CachingAllocator::kFailed);  // 60 + 50 > 100 and the 40 MiB rest cannot go
}

TEST(CachingAllocator, ExpandableSegmentsGrowInPagesAndMergeAtTheEnd) {
  // The trace that needs three segments above: A, B (30 MiB each), B freed, C (40 MiB).
  // Default: A 30 + B 30 (cached) + C 40 = 100 MiB reserved.
  CachingAllocator d;
  (void)d.malloc(30 * MiB);
  d.free(d.malloc(30 * MiB));
  (void)d.malloc(40 * MiB);
  EXPECT_EQ(d.reserved_bytes(), 100 * MiB);
  // Expandable (20 MiB pages in the large pool): A maps [0, 40) and takes [0, 30); B takes the
  // free [30, 40) plus one new page [40, 60); B freed leaves [30, 60) free at the end; C needs
  // 10 MiB more, one page [60, 80): 80 MiB reserved, and C = [30, 70).
  CachingAllocator e({.expandable_segments = true});
  (void)e.malloc(30 * MiB);
  EXPECT_EQ(e.reserved_bytes(), 40 * MiB);
  const auto b = e.malloc(30 * MiB);
  EXPECT_EQ(e.block_bytes(b), 30 * MiB);
  EXPECT_EQ(e.reserved_bytes(), 60 * MiB);
  e.free(b);
  const auto c = e.malloc(40 * MiB);
  EXPECT_EQ(e.block_bytes(c), 40 * MiB);
  EXPECT_EQ(e.reserved_bytes(), 80 * MiB);
  EXPECT_EQ(e.allocated_bytes(), 70 * MiB);
  // Capacity 70 MiB: C would need 80. Freeing the cache unmaps the free page [40, 60) (the only
  // page entirely free), leaving 40 MiB; C then needs [30, 40) + [40, 60) + [60, 80) mapped: 40 MiB
  // more, 80 in all: out of memory.
  CachingAllocator f({.capacity_bytes = 70 * MiB, .expandable_segments = true});
  (void)f.malloc(30 * MiB);
  f.free(f.malloc(30 * MiB));
  EXPECT_EQ(f.malloc(40 * MiB), CachingAllocator::kFailed);
  EXPECT_EQ(f.reserved_bytes(), 40 * MiB);
  EXPECT_EQ(f.stats().cache_flushes, 1);
  // 600 KiB is a small request: one 2 MiB page of the small pool.
  CachingAllocator g({.expandable_segments = true});
  (void)g.malloc(600 * 1024);
  EXPECT_EQ(g.reserved_bytes(), 2 * MiB);
}

// A whole step: the simulation's allocated peak is the analysis' (512-byte rounding) or a little
// more (unsplit large blocks); reserved is never below allocated; the capacity decides OOM.
TEST(CachingAllocator, SimulatesAStepAgainstTheAnalysis) {
  const ModelSpec m = *resolve_model("tiny-llama");
  TrainingSetup setup;
  setup.profile = Profile::pytorch;
  const Program p = build_program(m, setup, Plan::mst_reference(m), 512);
  const Analysis an = analyze(p, AllocatorModel::for_profile(Profile::pytorch));
  const CachingAllocatorResult r = simulate_caching_allocator(p);
  EXPECT_FALSE(r.out_of_memory);
  EXPECT_GE(r.peak_allocated_bytes, an.peak.allocated_bytes);
  EXPECT_LE(r.peak_allocated_bytes, an.peak.allocated_bytes + 64 * MiB);
  EXPECT_GE(r.peak_reserved_bytes, r.peak_allocated_bytes);
  EXPECT_EQ(r.peak_requested_bytes, an.peak_live_bytes);
  // Exactly the reserved peak fits; a byte under the allocated peak does not.
  CachingAllocatorResult fit = simulate_caching_allocator(p, {.capacity_bytes = r.peak_reserved_bytes});
  EXPECT_FALSE(fit.out_of_memory);
  CachingAllocatorResult oom = simulate_caching_allocator(p, {.capacity_bytes = an.peak.allocated_bytes - 1});
  EXPECT_TRUE(oom.out_of_memory);
  EXPECT_GT(oom.oom_request_bytes, 0);
}

RC_GTEST_PROP(CachingAllocatorProperty, ReservedNeverBelowAllocated, ()) {
  const ModelSpec m = *resolve_model(*rc::gen::element<std::string>("tiny-llama", "tiny-qwen2", "tiny-gemma2"));
  TrainingSetup setup;
  setup.profile = Profile::pytorch;
  Plan plan = *rc::gen::element(Plan::vanilla(), Plan::recompute_all(), Plan::mst_reference(m));
  plan.mlp = ChunkSetting{*rc::gen::inRange<std::int64_t>(1, 6), {}};
  const Program p = build_program(m, setup, plan, *rc::gen::inRange<std::int64_t>(2, 3000));
  const bool expandable = *rc::gen::arbitrary<bool>();
  const CachingAllocatorResult r = simulate_caching_allocator(p, {.expandable_segments = expandable});
  const Analysis an = analyze(p, AllocatorModel::for_profile(Profile::pytorch));
  RC_ASSERT(!r.out_of_memory);
  RC_ASSERT(r.peak_allocated_bytes >= an.peak.allocated_bytes);
  RC_ASSERT(r.peak_reserved_bytes >= r.peak_allocated_bytes);
  RC_ASSERT(r.reserved_at_peak_allocated_bytes >= r.peak_allocated_bytes);
  // Under a capacity between allocated and reserved the allocator flushes its cache and may
  // still fit; whatever it does, it never holds more than the capacity.
  const std::int64_t capacity = (r.peak_allocated_bytes + r.peak_reserved_bytes) / 2;
  const CachingAllocatorResult c = simulate_caching_allocator(p, {.capacity_bytes = capacity, .expandable_segments = expandable});
  RC_ASSERT(c.peak_reserved_bytes <= capacity);
}

}  // namespace
}  // namespace mstplan

namespace mstplan {
namespace {

// Skipping loop iterations that repeat the one before changes no figure of the simulation.
RC_GTEST_PROP(CachingAllocatorProperty, SkippingRepeatedIterationsChangesNothing, ()) {
  const ModelSpec m = *resolve_model(*rc::gen::element<std::string>("tiny-llama", "tiny-qwen2", "tiny-gemma2"));
  TrainingSetup setup;
  setup.profile = Profile::pytorch;
  Plan plan = Plan::mst_reference(m);
  plan.mlp = ChunkSetting{*rc::gen::inRange<std::int64_t>(1, 40), {}};
  plan.mlp_mode = *rc::gen::element(MlpMode::paper, MlpMode::tiled);
  plan.lm_head = ChunkSetting{*rc::gen::inRange<std::int64_t>(1, 40), {}};
  plan.lm_head_mode = *rc::gen::element(LmHeadMode::recompute, LmHeadMode::forward_grad);
  const Program p = build_program(m, setup, plan, *rc::gen::inRange<std::int64_t>(64, 6000));
  CachingAllocatorOptions options{.expandable_segments = *rc::gen::arbitrary<bool>()};
  const CachingAllocatorResult full = simulate_caching_allocator(p, {.expandable_segments = options.expandable_segments,
                                                                     .skip_repeated_iterations = false});
  options.capacity_bytes = std::numeric_limits<std::int64_t>::max();
  const CachingAllocatorResult fast = simulate_caching_allocator(p, options);
  RC_ASSERT(full.skipped_iterations == 0);
  RC_ASSERT(fast.peak_allocated_bytes == full.peak_allocated_bytes);
  RC_ASSERT(fast.peak_reserved_bytes == full.peak_reserved_bytes);
  RC_ASSERT(fast.peak_requested_bytes == full.peak_requested_bytes);
  RC_ASSERT(fast.reserved_at_peak_allocated_bytes == full.reserved_at_peak_allocated_bytes);
  // And under a capacity that makes it flush or fail, the same verdict.
  const std::int64_t capacity = full.peak_allocated_bytes + (full.peak_reserved_bytes - full.peak_allocated_bytes) / 3;
  const auto a = simulate_caching_allocator(p, {.capacity_bytes = capacity, .expandable_segments = options.expandable_segments,
                                                .skip_repeated_iterations = false});
  const auto b = simulate_caching_allocator(p, {.capacity_bytes = capacity, .expandable_segments = options.expandable_segments});
  RC_ASSERT(a.out_of_memory == b.out_of_memory);
  RC_ASSERT(a.peak_reserved_bytes == b.peak_reserved_bytes);
  RC_ASSERT(a.cache_flushes == b.cache_flushes);
}

// At 64K tokens MST's tiled MLP chunks and recomputed LM-head chunks repeat: most iterations are
// skipped, and the figures are those of the full simulation.
TEST(CachingAllocator, SkipsTheIterationsOfLongChunkLoops) {
  const ModelSpec m = *resolve_model("llama3-8b");
  TrainingSetup setup;
  setup.profile = Profile::pytorch;
  const Program p = build_program(m, setup, Plan::mst_reference(m), 65536);
  const CachingAllocatorResult fast = simulate_caching_allocator(p);
  const CachingAllocatorResult full = simulate_caching_allocator(p, {.skip_repeated_iterations = false});
  EXPECT_GT(fast.skipped_iterations, 1000);
  EXPECT_EQ(fast.peak_reserved_bytes, full.peak_reserved_bytes);
  EXPECT_EQ(fast.peak_allocated_bytes, full.peak_allocated_bytes);
}

// The pytorch profile's longest length fits the simulated allocator, whose fragmentation makes it
// shorter than the length that fits on allocated bytes alone.
TEST(CachingAllocator, DecidesThePytorchProfilesLongestLength) {
  const ModelSpec m = *resolve_model("llama3-8b");
  const GpuSpec gpu = *resolve_gpu("A100-80G");
  TrainingSetup setup;
  setup.profile = Profile::pytorch;
  Evaluator evaluator(m, gpu, setup, SearchOptions{});
  const std::optional<Evaluation> e = evaluator.longest(Plan::mst_reference(m));
  ASSERT_TRUE(e);
  ASSERT_TRUE(e->pool);
  EXPECT_TRUE(e->fits);
  EXPECT_FALSE(e->pool->out_of_memory);
  EXPECT_LE(e->pool->peak_reserved_bytes, gpu.usable_bytes());
  // On allocated bytes alone a longer length fits; the simulation refuses it.
  const std::int64_t longer = e->seq_len + 4096;
  const Evaluation at = evaluator.evaluate(Plan::mst_reference(m), longer);
  EXPECT_LE(at.required_bytes, gpu.capacity_bytes) << "4,096 tokens more still fit on allocated bytes";
  EXPECT_FALSE(at.fits);
  ASSERT_TRUE(at.pool);
  EXPECT_TRUE(at.pool->out_of_memory);
}

}  // namespace
}  // namespace mstplan
