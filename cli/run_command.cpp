#include "cli/run_command.h"

#include <cmath>

#include <fmt/format.h>
#include <fmt/ostream.h>
#include <nlohmann/json.hpp>

#include "cli/cli.h"
#include "planner/json_output.h"
#include "planner/plan_io.h"
#include "planner/units.h"
#include "runtime/cpu_backend.h"
#include "runtime/cuda_backend.h"
#include "runtime/verify.h"

namespace mstplan::cli {
namespace {

int code(ExitCode c) { return static_cast<int>(c); }

std::string signed_bytes(std::int64_t bytes) {
  return bytes == 0 ? std::string("0") : fmt::format("{:+}", bytes);
}

void print_memory(const RunReport& r, std::ostream& out) {
  fmt::print(out, "memory of one step, predicted by the planner and measured by the {} allocator (bytes; tolerance {}):\n",
             r.backend, r.tolerance_bytes);
  fmt::print(out, "  {:<24} {:>16} {:>16} {:>10}\n", "", "predicted", "measured", "diff");
  for (const MemoryRow& row : r.memory) {
    fmt::print(out, "  {:<24} {:>16} {:>16} {:>10}{}\n", row.what, format_thousands(row.predicted_bytes),
               format_thousands(row.measured_bytes), signed_bytes(row.measured_bytes - row.predicted_bytes),
               row.tolerance_bytes > 0 ? fmt::format("  (tolerance {})", format_thousands(row.tolerance_bytes)) : "");
  }
  fmt::print(out, "  peak during: predicted {}, measured {}\n", r.predicted_peak_at, r.measured_peak_at);
  if (r.device) {
    const DeviceMemoryReport& d = *r.device;
    fmt::print(out, "  device {}: {} in all; context and other processes {}, cuBLASLt {}, used after the step {}\n",
               d.device, format_bytes(d.total_bytes), format_bytes(d.context_bytes), format_bytes(d.library_bytes),
               format_bytes(d.used_after_bytes));
  }
  fmt::print(out, "memory {}\n", r.memory_ok ? "matches the prediction" : "DIFFERS from the prediction");
}

nlohmann::json memory_json(const RunReport& r) {
  nlohmann::json rows = nlohmann::json::array();
  for (const MemoryRow& row : r.memory) {
    rows.push_back({{"what", row.what},
                    {"predicted_bytes", row.predicted_bytes},
                    {"measured_bytes", row.measured_bytes},
                    {"tolerance_bytes", row.tolerance_bytes}});
  }
  nlohmann::json device = nullptr;
  if (r.device) {
    const DeviceMemoryReport& d = *r.device;
    device = {{"name", d.device},
              {"total_bytes", d.total_bytes},
              {"context_bytes", d.context_bytes},
              {"library_bytes", d.library_bytes},
              {"pool_used_high_bytes", d.pool_used_high_bytes},
              {"pool_reserved_high_bytes", d.pool_reserved_high_bytes},
              {"used_after_bytes", d.used_after_bytes}};
  }
  return {{"backend", r.backend},
          {"device", device},
          {"rows", rows},
          {"tolerance_bytes", r.tolerance_bytes},
          {"predicted_peak_at", r.predicted_peak_at},
          {"measured_peak_at", r.measured_peak_at},
          {"matches", r.memory_ok}};
}

nlohmann::json check_json(const TensorCheck& c) {
  return {{"name", c.name}, {"error", c.error}, {"tolerance", c.tolerance}, {"ok", c.ok}};
}

}  // namespace

RunOutcome run_command(const RunCommand& c, std::ostream& out) {
  if (c.backend != "cpu" && c.backend != "cuda") {
    return {code(ExitCode::usage), fmt::format("--backend: expected cpu or cuda, got '{}'", c.backend)};
  }
  auto file = load_plan_file(c.plan_file);
  if (!file) return {code(ExitCode::input), file.error().message};
  std::unique_ptr<Backend> backend;
  if (c.backend == "cpu") {
    if (auto e = check_fits_host(*file, c.plan_file)) return {code(ExitCode::unavailable), e->message};
    backend = make_cpu_backend();
  } else {
    auto gpu = make_cuda_backend();
    if (!gpu) return {code(ExitCode::unavailable), fmt::format("--backend cuda: {}", gpu.error().message)};
    backend = std::move(*gpu);
  }
  RunOptions options;
  options.seed = c.seed;
  options.ignore_fraction = c.ignore_fraction;
  options.memory_only = c.memory_only;
  const std::string header =
      fmt::format("{}: {} ({}), {} tokens x batch {}, backend {}", c.plan_file, file->model.name,
                  describe_plan(file->plan, file->model, file->seq_len), format_thousands(file->seq_len),
                  file->setup.batch, backend->name());

  if (!c.verify) {
    auto r = run_plan(*file, *backend, options, c.steps);
    if (!r) return {code(r.error().kind == ErrorKind::unsupported ? ExitCode::unavailable : ExitCode::input),
                    fmt::format("{}: {}", c.plan_file, r.error().message)};
    if (c.json) {
      nlohmann::json j = {{"file", c.plan_file},      {"model", file->model.name}, {"seq_len", file->seq_len},
                          {"batch", file->setup.batch}, {"losses", r->losses},     {"memory", memory_json(*r)},
                          {"seconds_per_step", r->seconds_per_step}, {"memory_only", c.memory_only}};
      out << json_text(j) << '\n';
    } else {
      fmt::print(out, "{}\n", header);
      if (c.memory_only) {
        fmt::print(out, "{} steps, memory only: every tensor allocated and freed as planned, no kernel run\n",
                   r->losses.size());
      } else {
        for (std::size_t s = 0; s < r->losses.size(); ++s) fmt::print(out, "step {:>3}  loss {:.6f}\n", s + 1, r->losses[s]);
      }
      print_memory(*r, out);
      fmt::print(out, "{:.3f} s per step on this machine\n", r->seconds_per_step);
    }
    if (!r->memory_ok) return {code(ExitCode::mismatch), "measured memory differs from the prediction"};
    return {};
  }

  auto v = verify_plan(*file, *backend, options);
  if (!v) return {code(v.error().kind == ErrorKind::unsupported ? ExitCode::unavailable : ExitCode::input),
                  fmt::format("{}: {}", c.plan_file, v.error().message)};
  if (c.json) {
    nlohmann::json grads = nlohmann::json::array(), params = nlohmann::json::array();
    for (const auto& g : v->gradients) grads.push_back(check_json(g));
    for (const auto& p : v->parameters) params.push_back(check_json(p));
    nlohmann::json j = {{"file", c.plan_file},
                        {"model", file->model.name},
                        {"seq_len", file->seq_len},
                        {"batch", file->setup.batch},
                        {"loss", v->loss},
                        {"reference_loss", v->reference_loss},
                        {"loss_check", check_json(v->loss_check)},
                        {"gradients", grads},
                        {"parameters", params},
                        {"memory", memory_json(v->run)},
                        {"ok", v->ok}};
    out << json_text(j) << '\n';
  } else {
    fmt::print(out, "{}\n", header);
    fmt::print(out, "loss {:.7f}, plain step {:.7f}: relative error {:.1e} (tolerance {:.0e}) {}\n", v->loss,
               v->reference_loss, v->loss_check.error, v->loss_check.tolerance, v->loss_check.ok ? "ok" : "FAILED");
    auto summary = [&](const char* what, const std::vector<TensorCheck>& checks) {
      const TensorCheck* worst = nullptr;
      int failed = 0;
      for (const auto& t : checks) {
        if (!t.ok) ++failed;
        if (worst == nullptr || t.error / t.tolerance > worst->error / worst->tolerance) worst = &t;
      }
      fmt::print(out, "{} {}: {}", checks.size(), what, failed == 0 ? "all within tolerance" : fmt::format("{} FAILED", failed));
      if (worst != nullptr) {
        fmt::print(out, "; closest to its bound: {} (error {:.1e}, tolerance {:.1e})", worst->name, worst->error,
                   worst->tolerance);
      }
      fmt::print(out, "\n");
      for (const auto& t : checks) {
        if (!t.ok) fmt::print(out, "  FAILED {}: error {:.3e} > {:.3e}\n", t.name, t.error, t.tolerance);
      }
    };
    summary("gradients against the plain step", v->gradients);
    summary("updated parameters against the plain step", v->parameters);
    print_memory(v->run, out);
    fmt::print(out, "{}\n", v->ok ? "verified" : "NOT verified");
  }
  if (!v->ok) return {code(ExitCode::mismatch), "verification failed (see the table)"};
  return {};
}

}  // namespace mstplan::cli
