// Step time of the runtime on the CPU backend, with and without MST chunking, at the same length:
// what chunking and recomputation cost in time, next to what they save in memory (the counters).
// The reference kernels are plain loops, so absolute times say nothing about a GPU; compare the
// arguments of one run with each other (ratios).
//
// On a machine with a GPU the CUDA_ benchmarks run too (elsewhere they are skipped): a step of
// llama3.2-1b with and without chunking at equal length, and the GEMM's TFLOP/s.
//
//   build/benchmarks/mstplan_runtime_bench --benchmark_counters_tabular=true
#include <benchmark/benchmark.h>

#include <cstdint>
#include <vector>

#include "planner/catalog.h"
#include "runtime/cpu_backend.h"
#include "runtime/cuda_backend.h"
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

// Args: variant, sequence length. llama3.2-1b, bf16, AdamW in backward, batch 1, on the GPU.
void BM_CUDA_Step(benchmark::State& state) {
  const auto variant = static_cast<Variant>(state.range(0));
  const std::int64_t seq = state.range(1);
  auto gpu = make_cuda_backend();
  if (!gpu) {
    state.SkipWithError(gpu.error().message.c_str());
    return;
  }
  auto model = resolve_model("llama3.2-1b");
  if (!model) {
    state.SkipWithError(model.error().message.c_str());
    return;
  }
  Plan plan = plan_of(variant);
  if (variant == Variant::mst || variant == Variant::mst_recompute) plan = [&] {
    Plan p = Plan::mst_reference(*model);
    if (variant == Variant::mst) p.recompute = RecomputeKind::none;
    return p;
  }();
  auto ex = Executor::create(*model, TrainingSetup{}, plan, seq, **gpu, RunOptions{});
  if (!ex) {
    state.SkipWithError(ex.error().message.c_str());
    return;
  }
  if (auto warm = (*ex)->step(); !warm) {  // allocates the statics, loads the kernels
    state.SkipWithError(warm.error().message.c_str());
    return;
  }
  std::int64_t peak_bytes = 0;
  for (auto _ : state) {
    auto r = (*ex)->step();  // ends with a copy of the loss to the host: synchronised
    if (!r) {
      state.SkipWithError(r.error().message.c_str());
      return;
    }
    peak_bytes = r->memory.peak_allocated_bytes;
  }
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(seq), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["peak_GiB"] = static_cast<double>(peak_bytes) / (1 << 30);
  static const char* names[] = {"plain", "mst", "mst+recompute", "recompute"};
  state.SetLabel(names[state.range(0)]);
}
BENCHMARK(BM_CUDA_Step)
    ->ArgsProduct({{0, 1, 2, 3}, {4096, 16384}})
    ->ArgNames({"variant", "seq"})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// y = x W^T in bf16 through the backend (cuBLASLt): rows x in times out x in, TFLOP/s.
void BM_CUDA_Gemm(benchmark::State& state) {
  const std::int64_t rows = state.range(0), in = state.range(1), out = state.range(2);
  auto gpu = make_cuda_backend();
  if (!gpu) {
    state.SkipWithError(gpu.error().message.c_str());
    return;
  }
  Backend& b = **gpu;
  const std::size_t workspace_bytes = std::size_t{32} << 20;
  void* x = b.allocate(Device::device, static_cast<std::size_t>(rows * in * 2));
  void* w = b.allocate(Device::device, static_cast<std::size_t>(out * in * 2));
  void* y = b.allocate(Device::device, static_cast<std::size_t>(rows * out * 2));
  void* ws = b.allocate(Device::device, workspace_bytes);
  if (x == nullptr || w == nullptr || y == nullptr || ws == nullptr) {
    state.SkipWithError("out of device memory");
    return;
  }
  b.bind_workspace(ws, workspace_bytes);
  const View vx = ref::contiguous(x, DType::bf16, rows, in), vw = ref::contiguous(w, DType::bf16, out, in),
             vy = ref::contiguous(y, DType::bf16, rows, out);
  // Random values (zeros run faster than real data): bf16 of uniform [-1, 1) from a fixed stream.
  auto fill = [&b](void* dst, std::int64_t n) {
    std::vector<std::uint16_t> host(static_cast<std::size_t>(n));
    std::uint64_t bits = 88172645463325252ull;
    for (auto& h : host) {
      bits ^= bits << 13;
      bits ^= bits >> 7;
      bits ^= bits << 17;
      h = ref::to_bf16(static_cast<float>(static_cast<double>(bits >> 11) * 0x1.0p-52 - 1.0));
    }
    b.copy_bytes(dst, host.data(), host.size() * sizeof(std::uint16_t));
  };
  fill(x, rows * in);
  fill(w, out * in);
  b.matmul_xwt(vx, vw, std::nullopt, vy, false);
  float sink = 0;
  for (auto _ : state) {
    for (int i = 0; i < 10; ++i) b.matmul_xwt(vx, vw, std::nullopt, vy, false);
    b.copy_bytes(&sink, y, sizeof(float) / 2);  // synchronise
  }
  if (auto e = b.take_error()) state.SkipWithError(e->c_str());
  state.counters["TFLOP/s"] = benchmark::Counter(2.0 * static_cast<double>(rows * in * out) * 10 / 1e12,
                                                 benchmark::Counter::kIsIterationInvariantRate);
  b.release(Device::device, x, 0);
  b.release(Device::device, w, 0);
  b.release(Device::device, y, 0);
  b.release(Device::device, ws, 0);
}
BENCHMARK(BM_CUDA_Gemm)
    ->Args({8192, 4096, 4096})
    ->Args({8192, 4096, 14336})
    ->Args({4096, 4096, 128256})
    ->ArgNames({"rows", "in", "out"})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
}  // namespace mstplan
