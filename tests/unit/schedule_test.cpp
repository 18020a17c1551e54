// The schedule's two checks: check_schedule() rejects programs that cannot run (each rule broken
// on purpose in a built program), and the critical path over the compute and copy streams is the
// wall time worked by hand and, on random DAGs, Boost.Graph's longest path.
#include <functional>
#include <limits>

#include <boost/graph/adjacency_list.hpp>
#include <boost/graph/dag_shortest_paths.hpp>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include "planner/builder.h"
#include "planner/catalog.h"
#include "planner/cost_model.h"
#include "planner/critical_path.h"
#include "planner/schedule_check.h"

namespace mstplan {
namespace {

using ::testing::HasSubstr;

Program tiny_program(const Plan& plan) {
  const ModelSpec m = *resolve_model("tiny-llama");
  return build_program(m, TrainingSetup{}, plan, 96);
}

TEST(ScheduleCheck, BuiltProgramsPass) {
  const ModelSpec m = *resolve_model("tiny-llama");
  for (const Plan& plan : {Plan::vanilla(), Plan::recompute_all(), Plan::mst_reference(m)}) {
    EXPECT_EQ(check_schedule(tiny_program(plan)), std::nullopt);
  }
}

TEST(ScheduleCheck, ReadBeforeWriteFails) {
  Program p = tiny_program(Plan::vanilla());
  p.ops.front().outputs = 0;  // step.begin no longer brings the weights and data into being
  const auto problem = check_schedule(p);
  ASSERT_TRUE(problem.has_value());
  EXPECT_THAT(*problem, HasSubstr("before any op writes it"));
  EXPECT_THAT(*problem, HasSubstr("embedding.fwd"));
}

TEST(ScheduleCheck, EmptyLoopFails) {
  const ModelSpec m = *resolve_model("tiny-llama");
  Program p = tiny_program(Plan::mst_reference(m));
  ASSERT_FALSE(p.loops.empty());
  p.loops.front().end_op = p.loops.front().first_op;
  EXPECT_THAT(check_schedule(p).value_or(""), HasSubstr("loop 0 is empty"));
}

TEST(ScheduleCheck, OpInsideALoopButNotOfItFails) {
  const ModelSpec m = *resolve_model("tiny-llama");
  Program p = tiny_program(Plan::mst_reference(m));
  ASSERT_FALSE(p.loops.empty());
  p.ops[p.loops.front().first_op].loop = kNone;
  EXPECT_THAT(check_schedule(p).value_or(""), HasSubstr("is not part of it"));
}

TEST(ScheduleCheck, ArrayWrittenOutsideItsLoopFails) {
  const ModelSpec m = *resolve_model("tiny-llama");
  Program p = tiny_program(Plan::mst_reference(m));
  ASSERT_FALSE(p.loops.empty());
  // The embedding's output, written outside every loop, declared an array of loop 0.
  const TensorId out = p.outputs(p.ops[1]).front();
  p.tensors[out].loop = 0;
  EXPECT_THAT(check_schedule(p).value_or(""), HasSubstr("outside its loop"));
}

TEST(ScheduleCheck, ArrayReadOverOtherChunksFails) {
  const ModelSpec m = *resolve_model("tiny-llama");
  Program p = tiny_program(Plan::mst_reference(m));
  // Find a loop that reads the chunks another loop wrote (the LM head's backward reads the
  // forward's), and shift the chunks it walks.
  std::int32_t reader = kNone;
  for (OpId i = 0; i < p.ops.size() && reader == kNone; ++i) {
    for (TensorId t : p.inputs(p.ops[i])) {
      if (p.tensors[t].loop != kNone && p.ops[i].loop != kNone && p.ops[i].loop != p.tensors[t].loop) reader = p.ops[i].loop;
    }
  }
  ASSERT_NE(reader, kNone) << "no loop reads another loop's chunks";
  p.loops[static_cast<std::size_t>(reader)].first_chunk += 1;
  EXPECT_THAT(check_schedule(p).value_or(""), HasSubstr("in a loop over other chunks"));
}

TEST(CriticalPath, TwoStreamsByHand) {
  // compute: c0 (2 s), c1 (1 s), c2 (4 s); copy: x (3 s) after c0, and c2 reads what x brings.
  //   c0 [0, 2]; x starts when c0 is done: [2, 5]; c1 follows c0: [2, 3];
  //   c2 waits for c1 (3) and x (5): [5, 9]. The step: 9 s; the copy stream ends at 5 s.
  StreamSchedule s;
  const std::uint32_t c0 = s.add(Stream::compute, 2.0);
  const std::uint32_t x = s.add(Stream::copy, 3.0, {&c0, 1});
  const std::uint32_t c1 = s.add(Stream::compute, 1.0);
  const std::uint32_t c2 = s.add(Stream::compute, 4.0, {&x, 1});
  EXPECT_DOUBLE_EQ(s.finish_seconds(c0), 2.0);
  EXPECT_DOUBLE_EQ(s.finish_seconds(x), 5.0);
  EXPECT_DOUBLE_EQ(s.finish_seconds(c1), 3.0);
  EXPECT_DOUBLE_EQ(s.finish_seconds(c2), 9.0);
  EXPECT_DOUBLE_EQ(s.seconds(), 9.0);
  EXPECT_DOUBLE_EQ(s.stream_end(Stream::compute), 9.0);
  EXPECT_DOUBLE_EQ(s.stream_end(Stream::copy), 5.0);
  s.clear();
  EXPECT_EQ(s.size(), 0u);
  EXPECT_DOUBLE_EQ(s.seconds(), 0.0);
}

TEST(CriticalPath, ACopyCostsOnlyWhatComputeWaitsForIt) {
  // compute: a (4 s) then b (4 s); copy: c (1 s) after a, [4, 5]. Read by nothing, c is hidden
  // behind b: the step is 8 s. Once b reads what c brings, b starts at max(4, 5) = 5: 9 s.
  for (const bool b_reads_c : {false, true}) {
    StreamSchedule s;
    const std::uint32_t a = s.add(Stream::compute, 4.0);
    const std::uint32_t c = s.add(Stream::copy, 1.0, {&a, 1});
    s.add(Stream::compute, 4.0, b_reads_c ? std::span<const std::uint32_t>(&c, 1) : std::span<const std::uint32_t>());
    EXPECT_DOUBLE_EQ(s.seconds(), b_reads_c ? 9.0 : 8.0);
  }
}

// The oracle: the longest path from a source vertex by Boost.Graph (dag_shortest_paths with the
// comparison reversed), over the edges StreamSchedule follows: a stream's previous task and the
// dependencies, each weighing the earlier task's duration.
struct Task {
  Stream stream;
  double seconds;
  std::vector<std::uint32_t> after;
};
std::vector<double> boost_finish(const std::vector<Task>& tasks) {
  const std::size_t n = tasks.size();
  using Graph = boost::adjacency_list<boost::vecS, boost::vecS, boost::directedS, boost::no_property,
                                      boost::property<boost::edge_weight_t, double>>;
  Graph g(n + 1);  // vertex n: the step's start
  std::array<std::int64_t, kStreams> previous;
  previous.fill(-1);
  for (std::size_t v = 0; v < n; ++v) {
    boost::add_edge(n, v, 0.0, g);
    auto& prev = previous[static_cast<std::size_t>(tasks[v].stream)];
    if (prev >= 0) boost::add_edge(static_cast<std::size_t>(prev), v, tasks[static_cast<std::size_t>(prev)].seconds, g);
    prev = static_cast<std::int64_t>(v);
    for (std::uint32_t before : tasks[v].after) boost::add_edge(before, v, tasks[before].seconds, g);
  }
  std::vector<double> start(n + 1);
  boost::dag_shortest_paths(g, n,
                            boost::distance_map(start.data())
                                .distance_compare(std::greater<double>())
                                .distance_inf(-std::numeric_limits<double>::infinity())
                                .distance_zero(0.0));
  std::vector<double> finish(n);
  for (std::size_t v = 0; v < n; ++v) finish[v] = start[v] + tasks[v].seconds;
  return finish;
}

RC_GTEST_PROP(CriticalPathProperty, IsBoostGraphsLongestPath, ()) {
  const auto n = *rc::gen::inRange<std::uint32_t>(1, 80);
  std::vector<Task> tasks;
  StreamSchedule s;
  for (std::uint32_t v = 0; v < n; ++v) {
    Task task{*rc::gen::element(Stream::compute, Stream::copy), *rc::gen::inRange(0, 1000) / 8.0, {}};
    const auto deps = v == 0 ? 0 : *rc::gen::inRange<std::uint32_t>(0, std::min<std::uint32_t>(v, 4));
    for (std::uint32_t d = 0; d < deps; ++d) task.after.push_back(*rc::gen::inRange<std::uint32_t>(0, v));
    RC_ASSERT(s.add(task.stream, task.seconds, task.after) == v);
    tasks.push_back(std::move(task));
  }
  const std::vector<double> oracle = boost_finish(tasks);
  double last = 0;
  for (std::uint32_t v = 0; v < n; ++v) {
    RC_ASSERT(s.finish_seconds(v) == oracle[v]);
    last = std::max(last, oracle[v]);
  }
  RC_ASSERT(s.seconds() == last);
}

TEST(CriticalPath, OffloadedStepsOverlapCopiesWithCompute) {
  // A plan that offloads checkpoints: its copy stream runs beside compute, so the step is shorter
  // than compute and copies back to back, and no shorter than either stream.
  const ModelSpec m = *resolve_model("llama3-8b");
  Plan plan = Plan::recompute_all();
  plan.offload_checkpoints = true;
  TrainingSetup setup;
  const Program p = build_program(m, setup, plan, 32768);
  const StepTime t = estimate_time(p, *resolve_gpu("A100-80G"));
  ASSERT_GT(t.copy_seconds, 0.0);
  EXPECT_LT(t.step_seconds, t.compute_seconds + t.copy_seconds);
  EXPECT_GE(t.step_seconds, t.compute_seconds);
  EXPECT_GE(t.step_seconds, t.copy_seconds);
}

}  // namespace
}  // namespace mstplan
