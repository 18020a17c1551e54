// mst-plan gpus [NAME|PATH]: the GPU catalog, or one spec as YAML or JSON.
#include "cli/command.h"

#include <fmt/ostream.h>
#include "planner/catalog.h"
#include "planner/json_output.h"
#include "planner/units.h"
#include "planner/yaml_input.h"

namespace mstplan::cli {

std::optional<Failure> run_gpus(const std::string& which, bool json, std::ostream& out) {
  if (!which.empty()) {
    auto gpu = resolve_gpu(which);
    if (!gpu) return Failure{exit_code_of(gpu.error()), gpu.error().message};
    if (json) {
      out << json_text(gpu_json(*gpu)) << '\n';
    } else {
      fmt::print(out, "# read from {}\n{}", gpu->source, gpu_to_yaml(*gpu));
    }
    return std::nullopt;
  }
  if (json) {
    nlohmann::json list = nlohmann::json::array();
    for (const GpuSpec& g : builtin_gpus()) list.push_back(gpu_json(g));
    out << json_text(list) << '\n';
    return std::nullopt;
  }
  fmt::print(out, "{:<9} {:>12} {:>10} {:>11} {:>10} {:>10} {:>10}  {}\n", "gpu", "capacity GiB", "reserve GiB",
             "bf16 TFLOP/s", "fp32 TF/s", "HBM GB/s", "link GB/s", "description");
  for (const GpuSpec& g : builtin_gpus()) {
    fmt::print(out, "{:<9} {:>12} {:>10} {:>11} {:>10} {:>10} {:>10}  {}\n", g.name, format_gib(g.capacity_bytes),
               format_gib(g.reserve_bytes), g.bf16_tflops, g.fp32_tflops, g.memory_bandwidth_gb_per_s,
               g.host_link_gb_per_s, g.description);
  }
  return std::nullopt;
}

}  // namespace mstplan::cli
