#include "cli/run_command.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ostream.h>
#include <nlohmann/json.hpp>

#include "cli/cli.h"
#include "cli/plan_output.h"
#include "planner/json_output.h"
#include "planner/plan_io.h"
#include "planner/yaml_input.h"
#include "planner/units.h"
#include "runtime/communicator.h"
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

// A multi-GPU plan: rank 0 prints (the others' reports are in its per-rank table), every rank
// exits with the worst rank's code, and rank 0 shows each rank's peak against its prediction.
struct RankSummary {
  std::int64_t predicted_bytes = 0, measured_bytes = 0, memory_ok = 1, ok = 1;
};

// Every rank's summary, in rank order (a collective: every rank calls it).
std::vector<RankSummary> gather_ranks(Communicator& world, const RankSummary& mine) {
  std::vector<std::int64_t> all(4 * static_cast<std::size_t>(world.size()));
  const std::array<std::int64_t, 4> row{mine.predicted_bytes, mine.measured_bytes, mine.memory_ok, mine.ok};
  world.all_gather(row, all);
  std::vector<RankSummary> rows;
  for (std::size_t r = 0; r < static_cast<std::size_t>(world.size()); ++r) {
    rows.push_back({all[4 * r], all[4 * r + 1], all[4 * r + 2], all[4 * r + 3]});
  }
  return rows;
}

void print_ranks(const std::vector<RankSummary>& rows, bool verified, std::ostream& out) {
  fmt::print(out, "{} ranks (MPI processes), each running its own step program:\n", rows.size());
  fmt::print(out, "  {:<6} {:>16} {:>16} {:>10}  {}\n", "rank", "predicted peak", "measured peak", "diff",
             verified ? "verified" : "memory");
  for (std::size_t r = 0; r < rows.size(); ++r) {
    const RankSummary& v = rows[r];
    fmt::print(out, "  {:<6} {:>16} {:>16} {:>10}  {}\n", r, format_thousands(v.predicted_bytes),
               format_thousands(v.measured_bytes), signed_bytes(v.measured_bytes - v.predicted_bytes),
               (verified ? v.ok : v.memory_ok) != 0 ? "ok" : "FAILED");
  }
}

// `ranks` in --json: null for one GPU, else one object per rank.
nlohmann::json ranks_json(Communicator* world, const RankSummary& mine) {
  if (world == nullptr) return nullptr;
  nlohmann::json rows = nlohmann::json::array();
  for (const RankSummary& v : gather_ranks(*world, mine)) {
    rows.push_back({{"predicted_peak_bytes", v.predicted_bytes},
                    {"measured_peak_bytes", v.measured_bytes},
                    {"memory_matches", v.memory_ok != 0},
                    {"ok", v.ok != 0}});
  }
  return rows;
}

// The ranks sharing this machine's memory: mpirun's count for this node, else all of them.
std::int64_t local_ranks(const Communicator& world) {
  if (const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE")) {
    const long long n = std::atoll(local);
    if (n > 0) return n;
  }
  return world.size();
}

RunOutcome agree(Communicator* world, RunOutcome outcome) {
  if (world == nullptr) return outcome;
  const std::int64_t mine = outcome.code;
  std::vector<std::int64_t> codes(static_cast<std::size_t>(world->size()));
  world->all_gather(std::span(&mine, 1), codes);
  const std::int64_t worst = *std::max_element(codes.begin(), codes.end());
  if (outcome.code == 0 && worst != 0) {
    outcome = {static_cast<int>(worst), fmt::format("rank {}: another rank failed (exit {})", world->rank(), worst)};
  }
  return outcome;
}

}  // namespace

RunOutcome run_command(const RunCommand& c, std::ostream& user_out) {
  if (c.backend != "cpu" && c.backend != "cuda") {
    return {code(ExitCode::usage), fmt::format("--backend: expected cpu or cuda, got '{}'", printable(c.backend))};
  }
  auto file = load_plan_file(c.plan_file);
  if (!file) return {code(ExitCode::input), file.error().message};
  {
    // What the file predicted must be what its step is: run and verify hold the runtime to it.
    SearchOptions search;
    search.cluster = file->cluster;
    Evaluator evaluator(file->model, file->gpu, file->setup, search);
    if (auto error = check_recorded_prediction(c.plan_file, *file, evaluator.evaluate(file->plan, file->seq_len))) {
      return {code(ExitCode::mismatch), error->message};
    }
  }
  // A multi-GPU plan runs one rank per MPI process (Note [Ranks] in runtime/executor.h).
  Communicator* world = nullptr;
  const std::int64_t gpus = file->setup.parallel.gpus;
  if (gpus > 1 && c.backend == "cpu") {
    if (!launched_by_mpi()) {
      return {code(ExitCode::unavailable),
              fmt::format("{}: field 'gpus': {}: a multi-GPU plan runs one rank per process; start them with mpirun -np "
                          "{} mst-plan {} {}",
                          c.plan_file, gpus, gpus, c.verify ? "verify" : "run", c.plan_file)};
    }
    auto w = mpi_world();
    if (!w) return {code(ExitCode::unavailable), fmt::format("{}: {}", c.plan_file, w.error().message)};
    world = *w;
  }
  std::ostringstream discarded;  // the other ranks' reports: rank 0 prints the table of all
  std::ostream& out = world != nullptr && world->rank() != 0 ? discarded : user_out;
  std::unique_ptr<Backend> backend;
  if (c.backend == "cpu") {
    if (auto e = check_fits_host(*file, c.plan_file, world != nullptr ? local_ranks(*world) : 1)) {
      return agree(world, {code(ExitCode::unavailable), e->message});
    }
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
  options.communicator = world;
  const std::string header =
      fmt::format("{}: {} ({}), {} tokens x batch {}, backend {}{}", c.plan_file, file->model.name,
                  describe_plan(file->plan, file->model, file->seq_len), format_thousands(file->seq_len),
                  file->setup.batch, backend->name(),
                  world != nullptr ? fmt::format(", rank {} of {} shown", world->rank(), world->size()) : "");
  auto summary_of = [](const RunReport& r, bool ok) {
    return RankSummary{r.memory.empty() ? 0 : r.memory.front().predicted_bytes,
                       r.memory.empty() ? 0 : r.memory.front().measured_bytes, r.memory_ok ? 1 : 0, ok ? 1 : 0};
  };

  if (!c.verify) {
    auto r = run_plan(*file, *backend, options, c.steps);
    if (!r) return agree(world, {code(r.error().kind == ErrorKind::unsupported ? ExitCode::unavailable : ExitCode::input),
                                 fmt::format("{}: {}", c.plan_file, r.error().message)});
    if (c.json) {
      nlohmann::json j = {{"file", c.plan_file},      {"model", file->model.name}, {"seq_len", file->seq_len},
                          {"batch", file->setup.batch}, {"losses", r->losses},     {"memory", memory_json(*r)},
                          {"seconds_per_step", r->seconds_per_step}, {"memory_only", c.memory_only},
                          {"ranks", ranks_json(world, summary_of(*r, r->memory_ok))}};
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
      if (world != nullptr) print_ranks(gather_ranks(*world, summary_of(*r, r->memory_ok)), false, out);
      fmt::print(out, "{:.3f} s per step on this machine\n", r->seconds_per_step);
    }
    if (!r->memory_ok) return agree(world, {code(ExitCode::mismatch), "measured memory differs from the prediction"});
    return agree(world, {});
  }

  auto v = verify_plan(*file, *backend, options);
  if (!v) return agree(world, {code(v.error().kind == ErrorKind::unsupported ? ExitCode::unavailable : ExitCode::input),
                               fmt::format("{}: {}", c.plan_file, v.error().message)});
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
                        {"ranks", ranks_json(world, summary_of(v->run, v->ok))},
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
    if (world != nullptr) print_ranks(gather_ranks(*world, summary_of(v->run, v->ok)), true, out);
    fmt::print(out, "{}\n", v->ok ? "verified" : "NOT verified");
  }
  if (!v->ok) return agree(world, {code(ExitCode::mismatch), "verification failed (see the table)"});
  return agree(world, {});
}

}  // namespace mstplan::cli
