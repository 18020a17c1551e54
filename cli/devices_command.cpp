// mst-plan devices: this machine's CUDA devices against the catalog.
#include "cli/command.h"

#include <fmt/ostream.h>
#include "planner/catalog.h"
#include "planner/json_output.h"
#include "planner/units.h"
#include "runtime/device_probe.h"

namespace mstplan::cli {

std::optional<Failure> run_devices(bool json, std::ostream& out) {
  const runtime::DeviceProbe probe = runtime::probe_devices();
  if (probe.devices.empty()) return Failure{ExitCode::unavailable, fmt::format("no CUDA device: {}", probe.status)};
  if (json) {
    nlohmann::json j = {{"cuda_compiled", probe.cuda_compiled},
                        {"driver_version", probe.driver_version},
                        {"runtime_version", probe.runtime_version},
                        {"status", probe.status},
                        {"devices", nlohmann::json::array()}};
    for (const auto& d : probe.devices) {
      const GpuSpec* match = find_gpu_by_device_name(d.name);
      j["devices"].push_back({{"index", d.index},
                              {"name", d.name},
                              {"compute_capability", fmt::format("{}.{}", d.compute_major, d.compute_minor)},
                              {"multiprocessors", d.multiprocessors},
                              {"total_bytes", d.total_bytes},
                              {"free_bytes", d.free_bytes},
                              {"pci_bus_id", d.pci_bus_id},
                              {"catalog_gpu", match ? nlohmann::json(match->name) : nlohmann::json(nullptr)},
                              {"catalog_capacity_bytes", match ? nlohmann::json(match->capacity_bytes) : nlohmann::json(nullptr)}});
    }
    out << json_text(j) << '\n';
  } else {
    fmt::print(out, "CUDA runtime {} (built with), driver supports {}\n", runtime::cuda_version_string(probe.runtime_version),
               probe.driver_version > 0 ? runtime::cuda_version_string(probe.driver_version) : std::string("unknown"));
    if (!probe.status.empty()) fmt::print(out, "{}\n", probe.status);  // a device that failed its query
    for (const auto& d : probe.devices) {
      const GpuSpec* match = find_gpu_by_device_name(d.name);
      fmt::print(out, "device {}: {} (sm_{}{}, {} SMs, bus {})\n", d.index, d.name, d.compute_major, d.compute_minor,
                 d.multiprocessors, d.pci_bus_id);
      fmt::print(out, "  total {} bytes ({} GiB), free with this context {} GiB (so {} GiB held by contexts and other processes)\n",
                 format_thousands(d.total_bytes), format_gib(d.total_bytes), format_gib(d.free_bytes),
                 format_gib(d.total_bytes - d.free_bytes));
      if (match) {
        fmt::print(out, "  catalog {}: capacity {} bytes, so this device has {} bytes {} than the planner assumes\n",
                   match->name, format_thousands(match->capacity_bytes),
                   format_thousands(std::abs(d.total_bytes - match->capacity_bytes)),
                   d.total_bytes >= match->capacity_bytes ? "more" : "fewer");
      } else {
        fmt::print(out, "  not in the catalog: copy a spec (mst-plan gpus NAME) into a YAML file with capacity_bytes: {}\n",
                   d.total_bytes);
      }
    }
  }
  return std::nullopt;
}

}  // namespace mstplan::cli
