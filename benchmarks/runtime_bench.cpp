// Step time of the runtime on the CPU backend, with and without MST chunking, at the same length:
// what chunking and recomputation cost in time, next to what they save in memory (the counters).
// The reference kernels are plain loops, so absolute times say nothing about a GPU; compare the
// arguments of one run with each other (ratios).
//
//   build/benchmarks/mstplan_runtime_bench --benchmark_counters_tabular=true
#include <benchmark/benchmark.h>

#include "planner/catalog.h"
#include "runtime/cpu_backend.h"
#include "runtime/executor.h"

namespace mstplan {
namespace {

enum class Variant { plain, mst, mst_recompute, recompute };

Plan plan_of(Variant v) {
  Plan p = Plan::vanilla();
  if (v == Variant::mst || v == Variant::mst_recompute) {
    p.mlp = ChunkSetting{4, {}};
    p.mlp_mode = MlpMode::tiled;
    p.lm_head = ChunkSetting{4, {}};
    p.lm_head_mode = LmHeadMode::recompute;
  }
  if (v == Variant::mst_recompute || v == Variant::recompute) p.recompute = RecomputeKind::full;
  return p;
}

// Args: variant, sequence length. tiny-llama (2 layers, hidden 64, vocabulary 515), bf16, AdamW
// in backward, batch 1.
void BM_Step(benchmark::State& state) {
  const auto variant = static_cast<Variant>(state.range(0));
  const std::int64_t seq = state.range(1);
  auto model = resolve_model("tiny-llama");
  if (!model) {
    state.SkipWithError(model.error().message.c_str());
    return;
  }
  auto cpu = make_cpu_backend();
  auto ex = Executor::create(*model, TrainingSetup{}, plan_of(variant), seq, *cpu, RunOptions{});
  if (!ex) {
    state.SkipWithError(ex.error().message.c_str());
    return;
  }
  std::int64_t peak_bytes = 0;
  for (auto _ : state) {
    auto r = (*ex)->step();
    if (!r) {
      state.SkipWithError(r.error().message.c_str());
      return;
    }
    peak_bytes = r->memory.peak_allocated_bytes;
  }
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(seq), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["peak_MiB"] = static_cast<double>(peak_bytes) / (1 << 20);
  static const char* names[] = {"plain", "mst", "mst+recompute", "recompute"};
  state.SetLabel(names[state.range(0)]);
}
BENCHMARK(BM_Step)
    ->ArgsProduct({{0, 1, 2, 3}, {256, 1024}})
    ->ArgNames({"variant", "seq"})
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace mstplan
