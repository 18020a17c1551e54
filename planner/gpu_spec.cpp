#include "planner/gpu_spec.h"

#include "planner/units.h"
#include "planner/spec_fields.h"
#include "planner/yaml_input.h"

namespace mstplan {

void read_gpu_fields(FieldReader& r, GpuSpec& g) {
  g.name = r.required_string("name");
  g.description = r.optional_string("description").value_or("");
  g.aliases = r.optional_string_list("aliases");
  g.device_names = r.optional_string_list("device_names");
  // Up to 1 PiB: byte counts add up in int64, and no device comes near it.
  g.capacity_bytes = r.required_int("capacity_bytes", IntRange{1, std::int64_t{1} << 50, false});
  g.reserve_bytes = r.required_int("reserve_bytes", IntRange::non_negative());
  g.bf16_tflops = r.required_number("bf16_tflops");
  g.fp32_tflops = r.required_number("fp32_tflops");
  g.memory_bandwidth_gb_per_s = r.required_number("memory_bandwidth_gb_per_s");
  g.host_link_gb_per_s = r.required_number("host_link_gb_per_s");
  g.attention_efficiency = r.optional_number("attention_efficiency").value_or(0.0);
  if (r.ok() && (g.attention_efficiency < 0 || g.attention_efficiency > 1)) {
    r.fail("attention_efficiency", fmt::format("a fraction of the bf16 peak in (0, 1], got {}", g.attention_efficiency));
  }
  if (r.ok() && g.reserve_bytes >= g.capacity_bytes) {
    r.fail("reserve_bytes", fmt::format("reserve {} ({}) leaves nothing of capacity_bytes {} ({})", g.reserve_bytes,
                                        format_bytes(g.reserve_bytes), g.capacity_bytes, format_bytes(g.capacity_bytes)));
  }
  (void)r.finish();
}

Expected<GpuSpec> parse_gpu_yaml(const std::string& text, const std::string& origin) {
  auto node = load_yaml(text, origin, "GPU spec");
  if (!node) return node.error();
  FieldReader r = FieldReader::root(*node, origin, "GPU spec");
  GpuSpec g;
  g.source = origin;
  read_gpu_fields(r, g);
  if (auto error = r.finish()) return *error;
  return g;
}

Expected<GpuSpec> load_gpu_file(const std::string& path) {
  return parse_file(path, parse_gpu_yaml);
}

std::string gpu_to_yaml(const GpuSpec& g) {
  auto list = [&](const std::vector<std::string>& items) {
    std::string out;
    for (const auto& item : items) out += (out.empty() ? "" : ", ") + yaml_scalar(item);
    return "[" + out + "]";
  };
  std::string out;
  out += fmt::format("name: {}\n", yaml_scalar(g.name));
  if (!g.description.empty()) out += fmt::format("description: {}\n", yaml_scalar(g.description));
  out += fmt::format("aliases: {}\n", list(g.aliases));
  out += fmt::format("device_names: {}\n", list(g.device_names));
  out += fmt::format("capacity_bytes: {}   # {}\n", g.capacity_bytes, format_bytes(g.capacity_bytes));
  out += fmt::format("reserve_bytes: {}   # {}\n", g.reserve_bytes, format_bytes(g.reserve_bytes));
  out += fmt::format("bf16_tflops: {}\n", g.bf16_tflops);
  out += fmt::format("fp32_tflops: {}\n", g.fp32_tflops);
  out += fmt::format("memory_bandwidth_gb_per_s: {}\n", g.memory_bandwidth_gb_per_s);
  out += fmt::format("host_link_gb_per_s: {}\n", g.host_link_gb_per_s);
  if (g.attention_efficiency > 0) out += fmt::format("attention_efficiency: {}\n", g.attention_efficiency);
  return out;
}

}  // namespace mstplan
