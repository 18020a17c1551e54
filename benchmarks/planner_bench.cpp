// Latency of what every mst-plan invocation does before planning: reading specs, enumerating
// parameters, static memory, and the whole main command in-process. The target for the whole
// process is well under 100 ms (DESIGN.md); these parts must be a small slice of it.
#include <sstream>

#include <benchmark/benchmark.h>

#include "cli/cli.h"
#include "planner/catalog.h"
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
