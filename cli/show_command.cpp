// mst-plan show PLAN: rebuilds the step of a plan file and checks the prediction it carries.
#include "cli/command.h"

#include <fmt/ostream.h>
#include "cli/plan_output.h"
#include "planner/analysis.h"
#include "planner/builder.h"
#include "planner/json_output.h"
#include "planner/placement.h"
#include "planner/plan_io.h"
#include "planner/schedule_check.h"
#include "planner/search_json.h"
#include "planner/units.h"

namespace mstplan::cli {

namespace {
constexpr std::int64_t kMaxPlacedKernels = 2'000'000;
}  // namespace

// Rebuilds the step a plan file describes and compares the analysis with what the file predicted.
std::optional<Failure> run_show(const std::string& path, bool json, std::ostream& out) {
  auto file = load_plan_file(path);
  if (!file) return Failure{exit_code_of(file.error()), file.error().message};
  SearchOptions options;
  options.cluster = file->cluster;
  Evaluator evaluator(file->model, file->gpu, file->setup, options);
  const Evaluation e = evaluator.evaluate(file->plan, file->seq_len);
  const bool same = e.analysis.peak.allocated_bytes == file->predicted.peak_allocated_bytes &&
                    e.analysis.peak_live_bytes == file->predicted.peak_live_bytes && e.peak_at == file->predicted.peak_at;
  // Where a planned allocator would put every tensor: one arena, best fit, over every kernel the
  // step runs (loops unrolled), up to kMaxPlacedKernels of them: beyond, the placement's memory
  // (a few hundred bytes per kernel and tensor instance) would grow past what a check should take.
  const Program program = build_program(file->model, file->setup, file->plan, file->seq_len);
  if (auto problem = check_schedule(program)) MSTPLAN_CHECK(false, "the builder made an invalid schedule: {}", *problem);
  std::int64_t kernels = static_cast<std::int64_t>(program.ops.size());
  for (const Loop& loop : program.loops) kernels += (loop.iterations - 1) * static_cast<std::int64_t>(loop.end_op - loop.first_op);
  std::optional<Placement> placement;
  if (kernels <= kMaxPlacedKernels) placement = place(program, AllocatorModel::for_profile(file->setup.profile));
  if (json) {
    nlohmann::json j = {{"file", path},
                        {"model", model_json(file->model)},
                        {"gpu", gpu_json(file->gpu)},
                        {"setup", setup_json(file->setup)},
                        {"evaluation", evaluation_json(e, file->model)},
                        {"predicted_peak_bytes", file->predicted.peak_allocated_bytes},
                        {"matches_prediction", same},
                        {"arena_high_water_bytes", placement ? nlohmann::json(placement->high_water_bytes) : nlohmann::json()},
                        {"ops_executed", kernels}};
    out << json_text(j) << '\n';
  } else {
    fmt::print(out, "{}: {} on {}, {} tokens, batch {}\n", path, file->model.name, file->gpu.name,
               format_thousands(file->seq_len), file->setup.batch);
    fmt::print(out, "setup: {}\n", describe_setup(file->setup));
    fmt::print(out, "plan ({}): {}\n", file->predicted.method, describe_plan(file->plan, file->model, file->seq_len / file->setup.parallel.sequence_group()));
    fmt::print(out, "peak {} GiB (+ {} GiB reserve = {} GiB of {} GiB: {}) during {}\n",
               format_gib(e.analysis.peak.allocated_bytes), format_gib(file->gpu.reserve_bytes),
               format_gib(e.required_bytes), format_gib(file->gpu.capacity_bytes), e.fits ? "fits" : "does not fit",
               e.peak_at);
    if (placement) {
      fmt::print(out, "arena (best-fit placement of every tensor, in step order): {} GiB for a live peak of {} GiB "
                      "({:.1f}% fragmentation), {} kernels\n",
                 format_gib(placement->high_water_bytes), format_gib(placement->live_peak_bytes),
                 placement->live_peak_bytes > 0
                     ? 100.0 * static_cast<double>(placement->high_water_bytes - placement->live_peak_bytes) /
                           static_cast<double>(placement->live_peak_bytes)
                     : 0.0,
                 format_thousands(kernels));
    } else {
      fmt::print(out, "arena: not placed ({} kernels, over the {} a check places)\n", format_thousands(kernels),
                 format_thousands(kMaxPlacedKernels));
    }
    fmt::print(out, "the file predicted {} bytes at {}: {}\n", format_thousands(file->predicted.peak_allocated_bytes),
               file->predicted.peak_at,
               same ? "the same" : fmt::format("now {} bytes", format_thousands(e.analysis.peak.allocated_bytes)));
  }
  if (auto error = check_recorded_prediction(path, *file, e)) return Failure{ExitCode::mismatch, error->message};
  return std::nullopt;
}

}  // namespace mstplan::cli
