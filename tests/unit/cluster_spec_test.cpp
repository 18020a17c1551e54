#include "planner/cluster_spec.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "planner/catalog.h"
#include "test_util.h"

namespace mstplan {
namespace {

using ::testing::HasSubstr;

constexpr const char* kCustom = R"(name: my-node
gpu: H100-80G
gpus_per_node: 4
nodes: 4
intra_node_gb_per_s: 300
inter_node_gb_per_s: 25
host_memory_bytes: 1099511627776
)";

TEST(Cluster, EveryBuiltInResolvesToACatalogGpu) {
  ASSERT_GE(builtin_clusters().size(), 4u);
  for (const ClusterSpec& c : builtin_clusters()) {
    auto resolved = resolve_cluster(c.name);
    ASSERT_TRUE(resolved) << resolved.error().message;
    EXPECT_TRUE(resolve_gpu(c.gpu)) << c.name << ": " << c.gpu;
    // NVLink is faster than the network on every node type in the catalog.
    EXPECT_GT(c.intra_node_gb_per_s, c.inter_node_gb_per_s) << c.name;
    EXPECT_EQ(c.nodes, 1) << c.name << ": a catalog entry describes one node";
    for (const std::string& alias : c.aliases) EXPECT_EQ(resolve_cluster(alias)->name, c.name) << alias;
  }
  for (const char* name : {"DGX-H100", "DGX-H200", "DGX-A100", "DGX-A100-320G"}) {
    EXPECT_TRUE(resolve_cluster(name)) << name;
  }
}

TEST(Cluster, DgxH100ByHand) {
  // DGX H100: 8 GPUs; NVLink 4 at 900 GB/s per GPU both ways = 450 one way; one 400 Gb/s
  // adapter per GPU = 50 GB/s; 2 TB of host memory taken as 2 * 2^40 = 2,199,023,255,552 bytes.
  const ClusterSpec c = *resolve_cluster("dgx-h100");
  EXPECT_EQ(c.name, "DGX-H100");
  EXPECT_EQ(c.gpu, "H100-80G");
  EXPECT_EQ(c.gpus_per_node, 8);
  EXPECT_EQ(c.gpus(), 8);
  EXPECT_EQ(c.intra_node_gb_per_s, 450);
  EXPECT_EQ(c.inter_node_gb_per_s, 50);
  EXPECT_EQ(c.host_memory_bytes, 2'199'023'255'552);
  EXPECT_EQ(resolve_cluster("hgx-h100")->name, "DGX-H100");
  // A group of 8 stays on NVLink; 9 ranks span two nodes and run at the network's speed.
  EXPECT_EQ(c.link_gb_per_s(8), 450);
  EXPECT_EQ(c.link_gb_per_s(9), 50);
}

TEST(Cluster, CustomFileRoundTrips) {
  test::ScratchDir dir;
  const std::string path = dir.write("my-node.yaml", kCustom);
  const ClusterSpec c = *resolve_cluster(path);
  EXPECT_EQ(c.source, path);
  // 4 nodes of 4 GPUs.
  EXPECT_EQ(c.gpus(), 16);
  EXPECT_EQ(c.link_gb_per_s(4), 300);
  EXPECT_EQ(c.link_gb_per_s(16), 25);
  for (const ClusterSpec& original : {c, *resolve_cluster("DGX-A100")}) {
    auto again = parse_cluster_yaml(cluster_to_yaml(original), "again.yaml");
    ASSERT_TRUE(again) << again.error().message;
    again->source = original.source;
    EXPECT_EQ(*again, original) << cluster_to_yaml(original);
  }
}

TEST(Cluster, BadFilesNameTheFileTheFieldAndTheValue) {
  test::ScratchDir dir;
  const auto error_of = [&](const std::string& name, const std::string& text) {
    auto c = resolve_cluster(dir.write(name, text));
    EXPECT_FALSE(c) << name;
    return c ? std::string{} : c.error().message;
  };
  std::string text = kCustom;
  text.replace(text.find("H100-80G"), 8, "Z9000");
  EXPECT_THAT(error_of("gpu.yaml", text), HasSubstr("gpu.yaml: field 'gpu': unknown GPU 'Z9000'"));
  EXPECT_EQ(resolve_cluster(dir.path().string() + "/gpu.yaml").error().kind, ErrorKind::invalid);

  text = kCustom;
  text.replace(text.find("gpus_per_node: 4"), 16, "gpus_per_node: 0");
  const std::string zero = error_of("zero.yaml", text);
  EXPECT_THAT(zero, HasSubstr("zero.yaml"));
  EXPECT_THAT(zero, HasSubstr("gpus_per_node"));

  text = kCustom;
  text.replace(text.find("inter_node_gb_per_s: 25"), 23, "inter_node_gb_per_s: -1");
  EXPECT_THAT(error_of("negative.yaml", text), HasSubstr("inter_node_gb_per_s"));

  text = kCustom;
  text.erase(text.find("host_memory_bytes"));
  const std::string missing = error_of("missing.yaml", text);
  EXPECT_THAT(missing, HasSubstr("missing.yaml"));
  EXPECT_THAT(missing, HasSubstr("host_memory_bytes"));

  const std::string unknown = error_of("unknown.yaml", std::string(kCustom) + "nvlink_gen: 4\n");
  EXPECT_THAT(unknown, HasSubstr("unknown field 'nvlink_gen'"));

  auto not_found = resolve_cluster("dgx-z");
  ASSERT_FALSE(not_found);
  EXPECT_EQ(not_found.error().kind, ErrorKind::not_found);
  EXPECT_THAT(not_found.error().message, HasSubstr("known clusters: DGX-A100"));
}

TEST(Cluster, CommandListsPrintsAndRefuses) {
  const auto list = test::run({"clusters"});
  ASSERT_EQ(list.code, 0) << list.err;
  for (const ClusterSpec& c : builtin_clusters()) EXPECT_THAT(list.out, HasSubstr(c.name));
  EXPECT_THAT(list.out, HasSubstr("NVLink GB/s"));

  const auto json = test::run({"clusters", "--json"});
  ASSERT_EQ(json.code, 0) << json.err;
  const auto parsed = nlohmann::json::parse(json.out);
  ASSERT_EQ(parsed.size(), builtin_clusters().size());

  const auto one = test::run({"clusters", "dgx-h200"});
  ASSERT_EQ(one.code, 0) << one.err;
  EXPECT_THAT(one.out, HasSubstr("gpu: H200"));
  EXPECT_THAT(one.out, HasSubstr("host_memory_bytes: 2199023255552"));
  // All-reduce of 1 GiB over the node's 8 GPUs: 2 * 7/8 * 2^30 bytes at 0.9 * 450e9 B/s = 4.64 ms;
  // over 4 nodes (32 GPUs) the network carries 2 * 3/4 * 2^30 / 8 bytes at 0.9 * 50e9 = 4.47 ms,
  // under NVLink's 4.64, so the time stays.
  EXPECT_THAT(one.out, HasSubstr("#      8      1      2.32 ms         2.32 ms      4.64 ms"));
  EXPECT_THAT(one.out, HasSubstr("#     32      4"));
  // The collective table is YAML comments: the output still reads as the spec.
  const std::size_t first_line = one.out.find('\n') + 1;
  EXPECT_TRUE(parse_cluster_yaml(one.out.substr(first_line), "printed.yaml"));

  const auto one_json = test::run({"clusters", "DGX-H100", "--json"});
  ASSERT_EQ(one_json.code, 0) << one_json.err;
  EXPECT_EQ(nlohmann::json::parse(one_json.out)["gpus_per_node"], 8);

  const auto nope = test::run({"clusters", "nope"});
  EXPECT_EQ(nope.code, 3);
  EXPECT_TRUE(nope.out.empty());
  EXPECT_THAT(nope.err, HasSubstr("unknown cluster 'nope'"));
}

}  // namespace
}  // namespace mstplan
