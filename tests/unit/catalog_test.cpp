#include "planner/catalog.h"

#include <set>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "planner/units.h"

namespace mstplan {
namespace {

TEST(Catalog, HoldsEveryRequiredModelAndGpu) {
  std::set<std::string> models;
  for (const ModelSpec& m : builtin_models()) models.insert(m.name);
  for (const char* name : {"llama2-7b", "llama2-13b", "llama3-8b", "llama3.1-8b", "llama3.2-1b", "llama3.2-3b",
                           "llama3-70b", "mistral-7b", "qwen2-7b", "qwen2.5-7b", "gemma2-9b", "gemma2-27b", "tiny-llama",
                           "tiny-qwen2", "tiny-gemma2"}) {
    EXPECT_TRUE(models.count(name)) << name;
  }
  std::set<std::string> gpus;
  for (const GpuSpec& g : builtin_gpus()) gpus.insert(g.name);
  for (const char* name : {"A100-40G", "A100-80G", "H100-80G", "H100-NVL", "H200", "L40S", "A10G", "RTX-4090", "RTX-3090"}) {
    EXPECT_TRUE(gpus.count(name)) << name;
  }
}

TEST(Catalog, TinyModelsCoverEachFamilyShape) {
  // d from 64 to 256, a few layers; llama (GQA), qwen2 (q/k/v bias), gemma2 (soft-capping, tied).
  for (const ModelSpec& m : builtin_models()) {
    if (!m.name.starts_with("tiny-")) continue;
    EXPECT_GE(m.hidden_size, 64) << m.name;
    EXPECT_LE(m.hidden_size, 256) << m.name;
    EXPECT_LE(m.num_layers, 4) << m.name;
  }
  EXPECT_TRUE(resolve_model("tiny-qwen2")->qkv_bias);
  const ModelSpec gemma = *resolve_model("tiny-gemma2");
  EXPECT_TRUE(gemma.tied_embeddings);
  EXPECT_TRUE(gemma.final_logit_softcap.has_value());
  EXPECT_TRUE(gemma.attn_logit_softcap.has_value());
  EXPECT_LT(resolve_model("tiny-llama")->num_kv_heads, resolve_model("tiny-llama")->num_heads);
}

TEST(Catalog, GpuSpecsAreConsistent) {
  for (const GpuSpec& g : builtin_gpus()) {
    // The reserve (context and workspaces) is a few hundred MiB, far below 5% of any card.
    EXPECT_GT(g.reserve_bytes, 0) << g.name;
    EXPECT_LT(g.reserve_bytes, g.capacity_bytes / 20) << g.name;
    EXPECT_GE(g.bf16_tflops, g.fp32_tflops) << g.name;
    EXPECT_GT(g.memory_bandwidth_gb_per_s, g.host_link_gb_per_s) << g.name;
    EXPECT_FALSE(g.device_names.empty()) << g.name;
  }
  // Spot checks of capacities in bytes (nvidia-smi MiB minus the driver's share).
  EXPECT_EQ(resolve_gpu("A100-80G")->capacity_bytes, 81222 * kMiB);
  EXPECT_EQ(resolve_gpu("H100-80G")->capacity_bytes, 81089 * kMiB);
  EXPECT_EQ(resolve_gpu("H200")->capacity_bytes, 143156 * kMiB);
}

TEST(Catalog, NamesMatchCaseInsensitivelyWithAliases) {
  EXPECT_EQ(resolve_gpu("a100-80g")->name, "A100-80G");
  EXPECT_EQ(resolve_gpu("A100")->name, "A100-80G");
  EXPECT_EQ(resolve_gpu("h100")->name, "H100-80G");
  EXPECT_EQ(resolve_gpu("rtx4090")->name, "RTX-4090");
  EXPECT_EQ(resolve_model("LLAMA3-8B")->name, "llama3-8b");
  EXPECT_FALSE(resolve_gpu("a100-80"));
  EXPECT_EQ(resolve_gpu("a100-80").error().kind, ErrorKind::not_found);
}

TEST(Catalog, RecognisesDevicesByTheirCudaName) {
  ASSERT_NE(find_gpu_by_device_name("NVIDIA H100 80GB HBM3"), nullptr);
  EXPECT_EQ(find_gpu_by_device_name("NVIDIA H100 80GB HBM3")->name, "H100-80G");
  EXPECT_EQ(find_gpu_by_device_name("NVIDIA A100-SXM4-40GB")->name, "A100-40G");
  EXPECT_EQ(find_gpu_by_device_name("Some Future GPU"), nullptr);
}

TEST(Catalog, ArgumentsWithSlashesOrExtensionsAreFiles) {
  EXPECT_TRUE(names_a_path("models/x.yaml"));
  EXPECT_TRUE(names_a_path("x.yml"));
  EXPECT_TRUE(names_a_path("config.json"));
  EXPECT_TRUE(names_a_path("./llama3-8b"));
  EXPECT_FALSE(names_a_path("llama3.1-8b"));  // a dot inside a name is not an extension we read
  EXPECT_FALSE(names_a_path("A100-80G"));
}

}  // namespace
}  // namespace mstplan
