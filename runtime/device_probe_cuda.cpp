// CUDA build of the device probe (see device_probe.h): host code on the CUDA runtime API, compiled
// by the C++ compiler (nvcc is for kernels; it also cannot compile fmt 9's consteval format checks).
#include <cuda_runtime.h>

#include <fmt/format.h>

#include "runtime/device_probe.h"

namespace mstplan::runtime {

bool cuda_compiled() { return true; }

DeviceProbe probe_devices() {
  DeviceProbe probe;
  probe.cuda_compiled = cuda_compiled();
  cudaRuntimeGetVersion(&probe.runtime_version);
  if (cudaDriverGetVersion(&probe.driver_version) != cudaSuccess) probe.driver_version = 0;
  int count = 0;
  if (cudaError_t err = cudaGetDeviceCount(&count); err != cudaSuccess) {
    probe.status = fmt::format("{}: {}", cudaGetErrorName(err), cudaGetErrorString(err));
    cudaGetLastError();  // clear the sticky error of a failed initialisation
    return probe;
  }
  if (count == 0) {
    probe.status = "no CUDA device is visible";
    return probe;
  }
  for (int i = 0; i < count; ++i) {
    DeviceInfo d;
    d.index = i;
    cudaDeviceProp prop{};
    if (cudaError_t err = cudaGetDeviceProperties(&prop, i); err != cudaSuccess) {
      probe.status = fmt::format("device {}: {}: {}", i, cudaGetErrorName(err), cudaGetErrorString(err));
      continue;
    }
    d.name = prop.name;
    d.compute_major = prop.major;
    d.compute_minor = prop.minor;
    d.multiprocessors = prop.multiProcessorCount;
    d.total_bytes = static_cast<std::int64_t>(prop.totalGlobalMem);
    char bus[32] = {};
    if (cudaDeviceGetPCIBusId(bus, sizeof bus, i) == cudaSuccess) d.pci_bus_id = bus;
    std::size_t free_bytes = 0;
    std::size_t total_bytes = 0;
    if (cudaSetDevice(i) == cudaSuccess && cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess) {
      d.free_bytes = static_cast<std::int64_t>(free_bytes);
      d.total_bytes = static_cast<std::int64_t>(total_bytes);
    }
    probe.devices.push_back(std::move(d));
  }
  return probe;
}

}  // namespace mstplan::runtime
