#include "planner/cluster_spec.h"

#include <fmt/format.h>

#include "planner/spec_fields.h"
#include "planner/units.h"
#include "planner/yaml_input.h"

namespace mstplan {

void read_cluster_fields(FieldReader& r, ClusterSpec& c) {
  c.name = r.required_string("name");
  c.description = r.optional_string("description").value_or("");
  c.aliases = r.optional_string_list("aliases");
  c.gpu = r.required_string("gpu");
  // 4,096 GPUs per node and 65,536 nodes bound the products the planner forms.
  c.gpus_per_node = r.required_int("gpus_per_node", IntRange{1, 4096, false});
  c.nodes = r.optional_int("nodes", IntRange{1, 65536, false}).value_or(1);
  c.intra_node_gb_per_s = r.required_number("intra_node_gb_per_s");
  c.inter_node_gb_per_s = r.required_number("inter_node_gb_per_s");
  c.host_memory_bytes = r.required_int("host_memory_bytes");
}

Expected<ClusterSpec> parse_cluster_yaml(const std::string& text, const std::string& origin) {
  auto node = load_yaml(text, origin, "cluster spec");
  if (!node) return node.error();
  FieldReader r = FieldReader::root(*node, origin, "cluster spec");
  ClusterSpec c;
  c.source = origin;
  read_cluster_fields(r, c);
  if (auto error = r.finish()) return *error;
  return c;
}

Expected<ClusterSpec> load_cluster_file(const std::string& path) { return parse_file(path, parse_cluster_yaml); }

std::string cluster_to_yaml(const ClusterSpec& c) {
  std::string aliases;
  for (const auto& alias : c.aliases) aliases += (aliases.empty() ? "" : ", ") + yaml_scalar(alias);
  std::string out;
  out += fmt::format("name: {}\n", yaml_scalar(c.name));
  if (!c.description.empty()) out += fmt::format("description: {}\n", yaml_scalar(c.description));
  out += fmt::format("aliases: [{}]\n", aliases);
  out += fmt::format("gpu: {}\n", yaml_scalar(c.gpu));
  out += fmt::format("gpus_per_node: {}\n", c.gpus_per_node);
  out += fmt::format("nodes: {}\n", c.nodes);
  out += fmt::format("intra_node_gb_per_s: {}\n", c.intra_node_gb_per_s);
  out += fmt::format("inter_node_gb_per_s: {}\n", c.inter_node_gb_per_s);
  out += fmt::format("host_memory_bytes: {}   # {}\n", c.host_memory_bytes, format_bytes(c.host_memory_bytes));
  return out;
}

}  // namespace mstplan
