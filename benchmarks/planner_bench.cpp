// Latency of what every mst-plan invocation does before planning: reading specs, enumerating
// parameters, static memory, and the whole main command in-process. The target for the whole
// process is well under 100 ms (DESIGN.md); these parts must be a small slice of it.
#include <sstream>

#include <fmt/format.h>

#include <benchmark/benchmark.h>

#include "cli/cli.h"
#include "planner/analysis.h"
#include "planner/builder.h"
#include "planner/catalog.h"
#include "planner/search.h"
#include "planner/static_memory.h"

namespace mstplan {
namespace {

// Parse every built-in model and GPU YAML (what a cold process does once).
void BM_ParseCatalog(benchmark::State& state) {
  for (auto _ : state) {
    int parsed = 0;
    for (const EmbeddedFile& file : builtin_files()) {
      if (file.path.starts_with("models/")) {
        parsed += parse_model_yaml(std::string(file.text), std::string(file.path)).has_value();
      } else {
        parsed += parse_gpu_yaml(std::string(file.text), std::string(file.path)).has_value();
      }
    }
    benchmark::DoNotOptimize(parsed);
  }
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(builtin_files().size()));
}
BENCHMARK(BM_ParseCatalog)->Unit(benchmark::kMicrosecond);

// Every parameter tensor of llama3-70b (80 layers x 9 tensors + 3).
void BM_ParametersLlama70b(benchmark::State& state) {
  const ModelSpec model = *resolve_model("llama3-70b");
  for (auto _ : state) benchmark::DoNotOptimize(parameters(model));
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(parameters(model).size()));
}
BENCHMARK(BM_ParametersLlama70b)->Unit(benchmark::kMicrosecond);

void BM_StaticMemoryLlama70b(benchmark::State& state) {
  const ModelSpec model = *resolve_model("llama3-70b");
  for (auto _ : state) benchmark::DoNotOptimize(static_memory(model, TrainingSetup{}));
}
BENCHMARK(BM_StaticMemoryLlama70b)->Unit(benchmark::kMicrosecond);

// The headline command, in-process, text and JSON.
void BM_MainCommand(benchmark::State& state) {
  const bool json = state.range(0) != 0;
  std::vector<std::string> args{"--model", "llama3-8b", "--gpu", "A100-80G"};
  if (json) args.emplace_back("--json");
  for (auto _ : state) {
    std::ostringstream out, err;
    benchmark::DoNotOptimize(cli::run_cli(args, out, err));
  }
  state.SetLabel(json ? "--json" : "text");
}
BENCHMARK(BM_MainCommand)->Arg(0)->Arg(1)->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace mstplan

namespace mstplan {
namespace {

// The size benchmark: the llama3-70b program at 128K tokens, MST's reference plan.
void BM_BuildAndAnalyzeLlama70b128K(benchmark::State& state) {
  const ModelSpec model = *resolve_model("llama3-70b");
  const Plan plan = Plan::mst_reference(model);
  const AllocatorModel allocator = AllocatorModel::for_profile(Profile::native);
  std::int64_t ops = 0;
  for (auto _ : state) {
    const Program p = build_program(model, TrainingSetup{}, plan, 131072);
    benchmark::DoNotOptimize(analyze(p, allocator));
    ops = static_cast<std::int64_t>(p.ops.size());
  }
  state.counters["ops"] = static_cast<double>(ops);
}
BENCHMARK(BM_BuildAndAnalyzeLlama70b128K)->Unit(benchmark::kMillisecond);

// A full search (every method, auto's candidates and Pareto set) for llama3-8b on an A100-80G.
void BM_AutoSearchLlama8b(benchmark::State& state) {
  const ModelSpec model = *resolve_model("llama3-8b");
  const GpuSpec gpu = *resolve_gpu("A100-80G");
  const auto profile = static_cast<Profile>(state.range(0));
  TrainingSetup setup;
  setup.profile = profile;
  SearchOptions options;
  options.threads = static_cast<std::int32_t>(state.range(1));  // 0: one per hardware thread
  std::int64_t evaluations = 0;
  for (auto _ : state) {
    const SearchResult r = search(model, gpu, setup, all_methods(), options);
    evaluations = r.evaluations;
    benchmark::DoNotOptimize(r);
  }
  state.counters["evaluations"] = static_cast<double>(evaluations);
  state.SetLabel(fmt::format("{}, {} threads", to_string(profile),
                             options.threads > 0 ? std::to_string(options.threads) : std::string("all")));
}
// {profile, threads}: native and pytorch, on every hardware thread and on one.
BENCHMARK(BM_AutoSearchLlama8b)->Args({0, 0})->Args({1, 0})->Args({0, 1})->Args({1, 1})->Unit(benchmark::kMillisecond)->UseRealTime();

// The layouts of llama3-8b on N H100s (DGX-H100 nodes): auto searched under each ZeRO stage and
// each Ulysses and context-parallel degree, as
// the main command does for --gpus N (issue 16's target: under 200 ms for 8 and 64 GPUs); the
// counters are the layouts and the programs built and analysed for them.
void BM_LayoutSearchLlama8b(benchmark::State& state) {
  const ModelSpec model = *resolve_model("llama3-8b");
  const GpuSpec gpu = *resolve_gpu("H100-80G");
  TrainingSetup setup;
  setup.parallel.gpus = state.range(0);
  SearchOptions options;
  options.cluster = *cluster_for_ranks(std::nullopt, gpu, setup.parallel.gpus);
  std::int64_t evaluations = 0;
  std::size_t layouts = 0;
  for (auto _ : state) {
    const std::vector<LayoutResult> r = search_layouts(model, gpu, setup, options);
    evaluations = 0;
    for (const LayoutResult& l : r) evaluations += l.evaluations;
    layouts = r.size();
    benchmark::DoNotOptimize(r);
  }
  state.counters["layouts"] = static_cast<double>(layouts);
  state.counters["evaluations"] = static_cast<double>(evaluations);
  state.SetLabel(fmt::format("{} GPUs on {}", setup.parallel.gpus, options.cluster->name));
}
BENCHMARK(BM_LayoutSearchLlama8b)->Arg(8)->Arg(64)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
}  // namespace mstplan

#include "planner/caching_allocator.h"

namespace mstplan {
namespace {

// The caching-allocator simulation of one llama3-8b step (pytorch profile, MST's plan) at 64K
// tokens: what deciding "fits" on reserved bytes costs per evaluated plan.
void BM_CachingAllocatorLlama8b64K(benchmark::State& state) {
  const ModelSpec model = *resolve_model("llama3-8b");
  TrainingSetup setup;
  setup.profile = Profile::pytorch;
  const Program p = build_program(model, setup, Plan::mst_reference(model), 65536);
  const CachingAllocatorOptions options{.expandable_segments = state.range(0) != 0};
  std::int64_t segments = 0;
  for (auto _ : state) {
    const CachingAllocatorResult r = simulate_caching_allocator(p, options);
    segments = r.segments_created;
    benchmark::DoNotOptimize(r);
  }
  state.counters["segments"] = static_cast<double>(segments);
  state.SetLabel(options.expandable_segments ? "expandable" : "default");
}
BENCHMARK(BM_CachingAllocatorLlama8b64K)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace mstplan
