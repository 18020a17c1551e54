#include "runtime/device_probe.h"

#include <gtest/gtest.h>

#include "planner/catalog.h"
#include "planner/units.h"

namespace mstplan::runtime {
namespace {

TEST(DeviceProbe, SaysWhyWhenThereIsNoDevice) {
  const DeviceProbe probe = probe_devices();
  EXPECT_EQ(probe.cuda_compiled, MSTPLAN_HAVE_CUDA == 1);  // what CMake decided
  EXPECT_EQ(cuda_compiled(), MSTPLAN_HAVE_CUDA == 1);
  if (probe.devices.empty()) {
    EXPECT_FALSE(probe.status.empty());
  }
  EXPECT_EQ(cuda_version_string(13000), "13.0");
  EXPECT_EQ(cuda_version_string(12080), "12.8");
}

// On a GPU: the device reports a total, some of it is free, and a catalog GPU of the same name
// assumes a capacity within 2% of what this driver reports.
TEST(CUDA_DeviceProbe, ReportsMemoryCloseToTheCatalog) {
  const DeviceProbe probe = probe_devices();
  if (probe.devices.empty()) GTEST_SKIP() << "no CUDA device: " << probe.status;
  for (const DeviceInfo& d : probe.devices) {
    EXPECT_GT(d.total_bytes, kGiB) << d.name;
    EXPECT_GT(d.free_bytes, 0) << d.name;
    EXPECT_LT(d.free_bytes, d.total_bytes) << d.name;  // the context takes some
    if (const GpuSpec* spec = find_gpu_by_device_name(d.name)) {
      const double ratio = static_cast<double>(d.total_bytes) / static_cast<double>(spec->capacity_bytes);
      EXPECT_NEAR(ratio, 1.0, 0.02) << d.name << " reports " << d.total_bytes << ", catalog " << spec->capacity_bytes;
    }
  }
}

}  // namespace
}  // namespace mstplan::runtime
