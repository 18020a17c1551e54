#include "report/report_files.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <set>
#include <sstream>

#include <fmt/format.h>

#include "planner/json_output.h"
#include "planner/plan_io.h"
#include "planner/yaml_input.h"
#include "report/report_formats.h"

extern char** environ;

namespace mstplan::report {
namespace {

namespace fs = std::filesystem;

// Runs gnuplot on `scripts` in `dir`; gnuplot's messages go to `log`.
std::optional<Error> run_gnuplot(const fs::path& gnuplot, const fs::path& dir, const std::vector<std::string>& scripts,
                                 const fs::path& log) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addchdir_np(&actions, dir.c_str());
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  std::vector<std::string> args{gnuplot.string()};
  args.insert(args.end(), scripts.begin(), scripts.end());
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  const int spawned = posix_spawn(&pid, gnuplot.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (spawned != 0) return make_error(ErrorKind::io, "{}: cannot run: {}", gnuplot.string(), std::strerror(spawned));
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return make_error(ErrorKind::io, "{}: wait failed: {}", gnuplot.string(), std::strerror(errno));
  }
  std::string messages;
  if (auto text = read_text_file(log)) messages = *text;
  const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  // gnuplot reports some script errors as warnings and carries on; both are our bugs.
  if (!ok || !messages.empty()) {
    return make_error(ErrorKind::io, "gnuplot ({}) failed drawing the figures (a bug in mst-plan's scripts; please report "
                                     "it): {}",
                      gnuplot.string(), messages.empty() ? fmt::format("exit status {}", status) : messages);
  }
  return std::nullopt;
}

std::string unique_suffix() {
  std::random_device rd;
  return fmt::format("{}-{:08x}", ::getpid(), rd());
}

}  // namespace

std::vector<ReportFile> report_files(const Report& r, const std::string& command) {
  using namespace detail;
  std::vector<ReportFile> files;
  std::vector<std::string> figures;
  auto add_figure = [&](std::string name, std::string data_name, std::string data, std::string script) {
    if (!data_name.empty()) files.push_back({"data/" + data_name, std::move(data)});
    files.push_back({fmt::format("figures/{}.gp", name), std::move(script)});
    figures.push_back(fmt::format("figures/{}.svg", name));
  };
  files.push_back({"data/methods.csv", methods_csv(r)});
  const bool any_fits = std::any_of(r.search.methods.begin(), r.search.methods.end(),
                                    [](const MethodResult& m) { return m.at_max.has_value(); });
  if (any_fits) {
    add_figure("max-length", "", "", max_length_gp(r));
    add_figure("breakdown", "breakdown.csv", breakdown_csv(r), breakdown_gp(r));
  }
  if (!r.timelines.empty()) {
    for (const TimelineSeries& t : r.timelines) files.push_back({fmt::format("data/timeline-{}.csv", t.label), timeline_csv(t)});
    add_figure("timeline", "", "", timeline_gp(r));
  }
  // gnuplot refuses a plot whose data has no point: draw the grid only when some count fits.
  const bool grid_fits = std::any_of(r.chunk_grid.begin(), r.chunk_grid.end(),
                                     [](const ChunkPoint& c) { return c.longest.has_value(); });
  if (grid_fits) {
    add_figure("chunks", "chunks.csv", chunks_csv(r), chunks_gp(r));
  } else if (!r.chunk_grid.empty()) {
    files.push_back({"data/chunks.csv", chunks_csv(r)});
  }
  if (!r.throughput.empty()) {
    files.push_back({"data/pareto.csv", pareto_csv(r)});
    add_figure("throughput", "throughput.csv", throughput_csv(r), throughput_gp(r));
  }
  if (!r.measured.empty()) add_figure("measured", "measured.csv", measured_csv(r), measured_gp(r));
  files.push_back({"report.json", json_text(report_json(r, command)) + "\n"});
  files.insert(files.begin(), {"report.md", markdown(r, command, figures)});
  return files;
}

std::optional<fs::path> find_gnuplot() {
  if (const char* env = std::getenv("MSTPLAN_GNUPLOT")) {
    const std::string value(env);
    if (value.empty() || value == "none") return std::nullopt;
    if (::access(value.c_str(), X_OK) == 0) return fs::path(value);
    return std::nullopt;
  }
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    const fs::path candidate = fs::path(dir.empty() ? "." : dir) / "gnuplot";
    std::error_code ec;
    if (fs::is_regular_file(candidate, ec) && ::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return std::nullopt;
}

Expected<WrittenReport> write_report(const fs::path& dir, const std::vector<ReportFile>& files,
                                     const std::optional<fs::path>& gnuplot) {
  std::error_code ec;
  const fs::path target = dir.lexically_normal();
  const bool exists = fs::exists(target, ec);
  if (exists) {
    if (!fs::is_directory(target, ec)) {
      return make_error(ErrorKind::io, "{}: exists and is not a folder; give --out a folder name", dir.string());
    }
    const bool empty = fs::is_empty(target, ec);
    if (!empty && !fs::exists(target / "report.md", ec)) {
      return make_error(ErrorKind::io, "{}: exists, is not empty and holds no report.md, so it is not an earlier report; "
                                       "refusing to replace it (give --out a new or empty folder)",
                        dir.string());
    }
  }
  fs::path parent = target.has_parent_path() ? target.parent_path() : fs::path(".");
  if (target.filename().empty() || target.filename() == "." || target.filename() == "..") {
    return make_error(ErrorKind::io, "{}: give --out a folder name (not '.', '..' or a path ending in '/')", dir.string());
  }
  fs::create_directories(parent, ec);
  if (ec) return make_error(ErrorKind::io, "{}: cannot create the folder: {}", parent.string(), ec.message());
  const std::string suffix = unique_suffix();
  // Absolute: gnuplot runs with the staging folder as its working directory.
  const fs::path staging = fs::absolute(parent / fmt::format(".{}.partial-{}", target.filename().string(), suffix), ec);
  auto fail = [&](Error error) -> Expected<WrittenReport> {
    std::error_code ignored;
    fs::remove_all(staging, ignored);
    return error;
  };
  fs::create_directory(staging, ec);
  if (ec) return make_error(ErrorKind::io, "{}: cannot create the folder: {}", staging.string(), ec.message());
  WrittenReport written;
  std::vector<std::string> scripts;
  for (const ReportFile& f : files) {
    const fs::path path = staging / f.path;
    fs::create_directories(path.parent_path(), ec);
    if (ec) return fail(make_error(ErrorKind::io, "{}: cannot create the folder: {}", path.parent_path().string(), ec.message()));
    if (auto error = write_text_file(path.string(), f.text)) return fail(*error);
    if (f.path.starts_with("figures/") && f.path.ends_with(".gp")) scripts.push_back(f.path);
  }
  if (!scripts.empty()) {
    if (gnuplot) {
      const fs::path log = staging / "figures" / ".gnuplot.log";
      if (auto error = run_gnuplot(*gnuplot, staging, scripts, log)) return fail(*error);
      fs::remove(log, ec);
      for (const std::string& s : scripts) {
        const std::string svg = s.substr(0, s.size() - 3) + ".svg";
        if (!fs::is_regular_file(staging / svg, ec)) {
          return fail(make_error(ErrorKind::io, "gnuplot ran {} but wrote no {}", s, svg));
        }
        written.figures.push_back(svg);
      }
    } else {
      written.figures_note = fmt::format(
          "gnuplot not found (install it: apt-get install gnuplot-nox), so the figures are not drawn; the data and the "
          "scripts are written: draw them with `cd {} && gnuplot figures/*.gp`",
          target.string());
    }
  }
  // The files this report wrote, for the next one into the same folder (kReportManifest).
  {
    std::vector<std::string> mine;
    for (const auto& entry : fs::recursive_directory_iterator(staging, ec)) {
      if (entry.is_regular_file()) mine.push_back(entry.path().lexically_relative(staging).generic_string());
    }
    std::sort(mine.begin(), mine.end());
    std::string manifest = "# the files mst-plan wrote here; the next report into this folder replaces these and keeps the rest\n";
    for (const std::string& f : mine) manifest += f + "\n";
    if (auto error = write_text_file((staging / kReportManifest).string(), manifest)) return fail(*error);
  }
  // What the earlier folder holds that the new report does not write moves into the staged
  // folder first, so the swap deletes only what this report replaces: the earlier report's own
  // files (its manifest lists them; without one, none) go, the user's files stay. On a failure
  // they move back.
  std::set<std::string> earlier_files;
  if (exists) {
    std::ifstream in(target / kReportManifest);
    for (std::string line; std::getline(in, line);) {
      if (!line.empty() && line[0] != '#') earlier_files.insert(line);
    }
  }
  std::vector<std::pair<fs::path, fs::path>> kept;  // (in the earlier folder, in the staged one)
  auto restore = [&]() {
    std::error_code ignored;
    for (auto it = kept.rbegin(); it != kept.rend(); ++it) fs::rename(it->second, it->first, ignored);
    kept.clear();
  };
  if (exists) {
    std::vector<fs::path> foreign;
    for (auto it = fs::recursive_directory_iterator(target, ec); !ec && it != fs::recursive_directory_iterator();
         it.increment(ec)) {
      const fs::path relative = it->path().lexically_relative(target);
      std::error_code probe;
      if (fs::exists(fs::symlink_status(staging / relative, probe))) continue;  // replaced (a folder: looked into)
      if (earlier_files.contains(relative.generic_string())) continue;         // the earlier report's: goes
      // A folder is looked into, its files kept one by one; an empty one is kept as it is.
      if (it->is_directory(probe) && !it->is_symlink(probe) && !fs::is_empty(it->path(), probe)) continue;
      foreign.push_back(relative);
    }
    if (ec) return fail(make_error(ErrorKind::io, "{}: cannot read: {}", dir.string(), ec.message()));
    for (const fs::path& relative : foreign) {
      fs::create_directories((staging / relative).parent_path(), ec);
      if (!ec) fs::rename(target / relative, staging / relative, ec);
      if (ec) {
        restore();
        return fail(make_error(ErrorKind::io, "{}: cannot keep {}: {}", dir.string(), relative.string(), ec.message()));
      }
      kept.emplace_back(target / relative, staging / relative);
    }
  }
  // Swap the staged folder in: an earlier report moves aside first and goes only once the new one is in place.
  const fs::path old = parent / fmt::format(".{}.old-{}", target.filename().string(), suffix);
  if (exists) {
    fs::rename(target, old, ec);
    if (ec) {
      restore();
      return fail(make_error(ErrorKind::io, "{}: cannot replace: {}", dir.string(), ec.message()));
    }
  }
  fs::rename(staging, target, ec);
  if (ec) {
    std::error_code ignored;
    if (exists) fs::rename(old, target, ignored);
    restore();  // the kept files are still in the staged folder: back into the earlier one
    return fail(make_error(ErrorKind::io, "{}: cannot write: {}", dir.string(), ec.message()));
  }
  if (exists) fs::remove_all(old, ec);
  return written;
}

}  // namespace mstplan::report
