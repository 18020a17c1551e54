#pragma once
// GPU specs: what the planner needs to know about one device.
//
// A spec comes from scenarios/gpus/*.yaml (built into the binary; names and aliases match
// case-insensitively) or from a custom YAML file in the same format (docs/specs.md).
//
//   Expected<GpuSpec> gpu = load_gpu_file("my-gpu.yaml");
//   std::int64_t for_tensors_bytes = gpu->usable_bytes();   // capacity minus reserve
#include <cstdint>
#include <string>
#include <vector>

#include "planner/error.h"

namespace mstplan {

struct GpuSpec {
  std::string name;                       ///< catalog name, "A100-80G"
  std::string description;                ///< "NVIDIA A100 SXM4 80 GB"
  std::vector<std::string> aliases;       ///< other names accepted by --gpu
  std::vector<std::string> device_names;  ///< as cudaGetDeviceProperties names it, to recognise a device
  std::int64_t capacity_bytes = 0;        ///< total device memory as the CUDA runtime reports it
  std::int64_t reserve_bytes = 0;         ///< CUDA context + library workspaces: never available to tensors
  double bf16_tflops = 0;                 ///< dense tensor-core bf16 with fp32 accumulation, 1e12 FLOP/s
  double fp32_tflops = 0;                 ///< dense fp32 without tensor cores, 1e12 FLOP/s
  double memory_bandwidth_gb_per_s = 0;   ///< device memory, 1e9 bytes/s
  double host_link_gb_per_s = 0;          ///< one direction (device to host), for offload, 1e9 bytes/s
  /// Fraction of the bf16 peak FlashAttention-2-style kernels reach on this GPU, where it differs
  /// from the cost model's default (CostOptions::attention_efficiency); 0: the default.
  double attention_efficiency = 0;

  std::string source;  ///< where it was read from, for messages; not part of the GPU

  /// Bytes the step's tensors may use: capacity minus reserve.
  [[nodiscard]] std::int64_t usable_bytes() const { return capacity_bytes - reserve_bytes; }
  bool operator==(const GpuSpec&) const = default;
};

/// Reads a GPU spec from YAML text; `origin` names the file in messages.
[[nodiscard]] Expected<GpuSpec> parse_gpu_yaml(const std::string& text, const std::string& origin);
/// Reads a GPU spec YAML file.
[[nodiscard]] Expected<GpuSpec> load_gpu_file(const std::string& path);
/// The spec as YAML; parse_gpu_yaml(gpu_to_yaml(g)) == g (but source).
[[nodiscard]] std::string gpu_to_yaml(const GpuSpec& gpu);

}  // namespace mstplan
