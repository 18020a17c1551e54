#pragma once
// What the CUDA runtime says about the devices of this machine: names, memory totals and what
// is free once a context exists. `mst-plan devices` prints it next to the catalog entry, so a
// user can see how their GPU differs from the spec the planner uses.
//
// Works in every build: without the CUDA backend compiled in, `cuda_compiled` is false and
// `status` says so; with it but no device (or no driver), `status` carries CUDA's message.
//
//   DeviceProbe probe = probe_devices();
//   for (const DeviceInfo& d : probe.devices) fmt::print("{}: {} bytes\n", d.name, d.total_bytes);
#include <cstdint>
#include <string>
#include <vector>

namespace mstplan::runtime {

struct DeviceInfo {
  int index = 0;
  std::string name;              ///< "NVIDIA H100 80GB HBM3"
  int compute_major = 0;         ///< 9 for sm_90
  int compute_minor = 0;
  int multiprocessors = 0;
  std::int64_t total_bytes = 0;  ///< cudaMemGetInfo total (== cudaDeviceProp::totalGlobalMem)
  std::int64_t free_bytes = 0;   ///< cudaMemGetInfo free, with this process's context created
  std::string pci_bus_id;        ///< "0000:3B:00.0"
};

struct DeviceProbe {
  bool cuda_compiled = false;  ///< the CUDA backend is part of this build
  int driver_version = 0;      ///< CUDA driver API version, 13000 for 13.0; 0 when unknown
  int runtime_version = 0;     ///< CUDA runtime this binary was built with
  std::vector<DeviceInfo> devices;
  std::string status;          ///< empty when devices were found, else why none were
};

/// Whether this build has the CUDA backend (cheap: creates no context).
[[nodiscard]] bool cuda_compiled();

/// Queries every visible device; creates a CUDA context on each (that is what `free` includes).
[[nodiscard]] DeviceProbe probe_devices();

/// "13.0" from 13000.
[[nodiscard]] std::string cuda_version_string(int version);

}  // namespace mstplan::runtime
