#include "planner/plan_io.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "planner/spec_fields.h"
#include "planner/yaml_input.h"

namespace mstplan {
namespace {

std::string indent(const std::string& text) {
  std::string out;
  std::size_t begin = 0;
  while (begin < text.size()) {
    std::size_t end = text.find('\n', begin);
    if (end == std::string::npos) end = text.size();
    out += "  " + text.substr(begin, end - begin) + "\n";
    begin = end + 1;
  }
  return out;
}

}  // namespace

PlanKnobs plan_knobs(const Plan& p) {
  PlanKnobs k;
  k.mlp_chunks = p.mlp;
  k.mlp_mode = p.mlp_mode;
  k.lm_head_chunks = p.lm_head;
  k.lm_head_mode = p.lm_head_mode;
  k.recompute = p.recompute;
  if (!p.recompute_layers.empty()) k.recompute_layers = p.recompute_layers;
  k.offload_checkpoints = p.offload_checkpoints;
  if (p.authors_code) k.authors_code = true;
  return k;
}

std::string plan_to_yaml(const PlanFile& f) {
  std::string out = "# An mst-plan plan: the step it describes is rebuilt from these fields (docs/specs.md).\n";
  out += "mst_plan_version: 1\n";
  out += fmt::format("seq_len: {}\n", f.seq_len);
  out += "model:\n" + indent(model_to_yaml(f.model));
  out += "gpu:\n" + indent(gpu_to_yaml(f.gpu));
  if (f.cluster) out += "cluster:\n" + indent(cluster_to_yaml(*f.cluster));
  TrainingSetup setup = f.setup;
  setup.knobs = PlanKnobs{};  // the plan below is the decision; a scenario's constraints are spent
  out += "setup:\n" + indent(setup_to_yaml(setup));
  out += "plan:\n" + indent(knobs_to_yaml(plan_knobs(f.plan)));
  out += "predicted:\n";
  out += fmt::format("  method: {}\n", yaml_scalar(f.predicted.method));
  out += fmt::format("  peak_allocated_bytes: {}\n", f.predicted.peak_allocated_bytes);
  out += fmt::format("  peak_live_bytes: {}\n", f.predicted.peak_live_bytes);
  out += fmt::format("  required_bytes: {}\n", f.predicted.required_bytes);
  out += fmt::format("  peak_at: {}\n", yaml_scalar(f.predicted.peak_at));
  out += fmt::format("  tokens_per_s: {}\n", f.predicted.tokens_per_s);
  return out;
}

Expected<PlanFile> parse_plan_yaml(const std::string& text, const std::string& origin) {
  auto node = load_yaml(text, origin, "plan file");
  if (!node) return node.error();
  FieldReader r = FieldReader::root(*node, origin, "plan file");
  PlanFile f;
  r.required_int("mst_plan_version", IntRange{1, 1, false});
  f.seq_len = r.required_int("seq_len", IntRange{2, INT64_MAX, false});
  auto section = [&](const char* key) {
    auto sub = r.optional_map(key);
    if (!sub && r.ok()) r.fail(key, "missing section");
    return sub;
  };
  if (auto model = section("model")) {
    f.model.source = origin;
    read_model_fields(*model, f.model);
  }
  if (auto gpu = section("gpu")) {
    f.gpu.source = origin;
    read_gpu_fields(*gpu, f.gpu);
  }
  if (auto cluster = r.optional_map("cluster")) {
    f.cluster.emplace();
    f.cluster->source = origin;
    read_cluster_fields(*cluster, *f.cluster);
    (void)cluster->finish();
  }
  if (auto setup = section("setup")) {
    read_setup_fields(*setup, f.setup);
    (void)setup->finish();
  }
  if (auto plan = section("plan")) {
    PlanKnobs k;
    read_knob_fields(*plan, k);
    (void)plan->finish();
    if (r.ok() && (!k.mlp_chunks || !k.mlp_mode || !k.lm_head_chunks || !k.lm_head_mode || !k.recompute ||
                   !k.offload_checkpoints)) {
      r.fail("plan", "a plan sets every knob: mlp {chunks, mode}, lm_head {chunks, mode}, recompute {kind}, offload");
    }
    f.plan = apply_knobs(Plan{}, k);
  }
  if (auto predicted = section("predicted")) {
    f.predicted.method = predicted->required_string("method");
    f.predicted.peak_allocated_bytes = predicted->required_int("peak_allocated_bytes");
    f.predicted.peak_live_bytes = predicted->required_int("peak_live_bytes");
    f.predicted.required_bytes = predicted->required_int("required_bytes");
    f.predicted.peak_at = predicted->required_string("peak_at");
    f.predicted.tokens_per_s = predicted->optional_number("tokens_per_s").value_or(0.0);
    (void)predicted->finish();
  }
  if (auto error = r.finish()) return *error;
  if (auto error = check_setup_for_model(f.setup, f.model, origin)) return *error;
  for (std::int64_t layer : f.plan.recompute_layers) {
    if (layer >= f.model.num_layers) {
      return make_error(ErrorKind::invalid, "{}: field 'plan.recompute.layers': layer {} does not exist ({} has layers 0 to {})",
                        origin, layer, f.model.name, f.model.num_layers - 1);
    }
  }
  const std::int64_t gpus = f.setup.parallel.gpus;
  if (gpus > 1 && !f.cluster) {
    return make_error(ErrorKind::invalid, "{}: section 'cluster': missing; a plan for {} GPUs names the cluster they are on",
                      origin, gpus);
  }
  if (f.cluster && gpus > f.cluster->gpus()) {
    return make_error(ErrorKind::invalid, "{}: field 'setup.gpus': {} GPUs, but cluster {} has {}", origin, gpus,
                      f.cluster->name, f.cluster->gpus());
  }
  if (f.cluster && gpus == 1) {
    return make_error(ErrorKind::invalid, "{}: section 'cluster': a plan for one GPU has no cluster; give setup.gpus",
                      origin);
  }
  return f;
}

Expected<PlanFile> load_plan_file(const std::string& path) { return parse_file(path, parse_plan_yaml); }

std::optional<Error> write_text_file(const std::string& path, const std::string& text) {
  std::filesystem::path target(path);
  std::error_code ec;
  if (std::filesystem::is_directory(target, ec)) {
    return make_error(ErrorKind::io, "{}: is a directory, expected a file name", path);
  }
  // A link is written through (the file it names is replaced, the link stays), and a file the
  // user made read-only is not replaced.
  if (std::filesystem::is_symlink(target, ec)) {
    const std::filesystem::path resolved = std::filesystem::weakly_canonical(target, ec);
    if (ec) return make_error(ErrorKind::io, "{}: a link that cannot be followed: {}", path, ec.message());
    if (std::filesystem::is_directory(resolved, ec)) {
      return make_error(ErrorKind::io, "{}: links to the directory {}, expected a file name", path, resolved.string());
    }
    target = resolved;
  }
  // Its mode, not access(): root may write anything, but a file without write permission was
  // made so on purpose.
  const std::filesystem::file_status status = std::filesystem::status(target, ec);
  if (!ec && std::filesystem::exists(status) &&
      (status.permissions() & std::filesystem::perms::owner_write) == std::filesystem::perms::none) {
    return make_error(ErrorKind::io, "{}: exists and is read-only; refusing to replace it", path);
  }
  std::random_device rd;
  const std::filesystem::path temp =
      target.parent_path() / fmt::format(".{}.tmp-{:08x}", target.filename().string(), rd());
  {
    std::ofstream out(temp, std::ios::binary | std::ios::trunc);
    if (!out) return make_error(ErrorKind::io, "{}: cannot write: {}", path, std::strerror(errno));
    out << text;
    out.flush();
    if (!out) {
      std::filesystem::remove(temp, ec);
      return make_error(ErrorKind::io, "{}: write failed: {}", path, std::strerror(errno));
    }
  }
  std::filesystem::rename(temp, target, ec);
  if (ec) {
    std::filesystem::remove(temp, ec);
    return make_error(ErrorKind::io, "{}: cannot write: {}", path, ec.message());
  }
  return std::nullopt;
}

}  // namespace mstplan
