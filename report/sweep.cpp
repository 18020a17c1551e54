#include "report/sweep.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <fstream>
#include <iterator>
#include <mutex>
#include <thread>

#include <fmt/format.h>

#include "planner/catalog.h"
#include "planner/json_output.h"
#include "planner/plan_io.h"
#include "planner/spec_fields.h"
#include "planner/units.h"
#include "planner/yaml_input.h"

namespace mstplan::report {
namespace {

namespace fs = std::filesystem;

std::string folder_name(std::string_view text) {
  std::string out;
  for (char c : text) {
    const auto u = static_cast<unsigned char>(c);
    out += std::isalnum(u) || c == '.' || c == '_' || c == '-' ? static_cast<char>(std::tolower(u)) : '-';
  }
  return out;
}

// Resolves the model and GPU of one entry (references already relative to the working directory)
// and checks its setup; messages name `where` and the field.
std::optional<Error> complete(SweepItem& item, const std::string& model, const std::string& gpu, const std::string& where) {
  auto m = resolve_model(model);
  if (!m) return make_error(m.error().kind, "{}: field 'model': {}", where, m.error().message);
  auto g = resolve_gpu(gpu);
  if (!g) return make_error(g.error().kind, "{}: field 'gpu': {}", where, g.error().message);
  item.model = std::move(*m);
  item.gpu = std::move(*g);
  item.origin = where;
  if (auto error = check_one_gpu(item.setup, where, "sweeps")) return error;
  return check_setup_for_model(item.setup, item.model, where);
}

// A sweep file's entries; `title` is set when the file has one.
std::optional<Error> read_sweep(FieldReader& r, const std::string& origin, std::string& title, std::vector<SweepItem>& out) {
  if (auto t = r.optional_string("title")) title = *t;
  std::vector<YAML::Mark> scenario_marks, setup_marks;
  std::vector<FieldReader> scenarios = r.optional_map_list("scenarios", &scenario_marks);
  const std::vector<std::string> models = r.optional_string_list("models");
  const std::vector<std::string> gpus = r.optional_string_list("gpus");
  std::vector<FieldReader> setups = r.optional_map_list("setups", &setup_marks);
  if (auto error = r.finish()) return error;
  if (models.empty() != gpus.empty()) {
    return make_error(ErrorKind::invalid, "{}: field '{}': a sweep of every model x GPU needs both 'models' and 'gpus'",
                      origin, models.empty() ? "models" : "gpus");
  }
  if (!setups.empty() && models.empty()) {
    return make_error(ErrorKind::invalid, "{}: field 'setups': applies to 'models' x 'gpus', which are missing", origin);
  }
  if (scenarios.empty() && models.empty()) {
    return make_error(ErrorKind::invalid, "{}: a sweep file lists 'scenarios', or 'models' and 'gpus'; it has neither",
                      origin);
  }
  for (std::size_t i = 0; i < scenarios.size(); ++i) {
    FieldReader& e = scenarios[i];
    SweepItem item;
    const std::string model = e.required_string("model");
    const std::string gpu = e.required_string("gpu");
    const std::optional<std::string> name = e.optional_string("name");
    read_setup_fields(e, item.setup);
    if (auto error = e.finish()) return error;
    const std::string where = fmt::format("{}: scenarios[{}]", yaml_location(origin, scenario_marks[i]), i);
    if (auto error = complete(item, resolve_relative(model, origin), resolve_relative(gpu, origin), where)) return error;
    item.name = folder_name(name ? *name : fmt::format("{}-{}", item.model.name, item.gpu.name));
    out.push_back(std::move(item));
  }
  struct Setup {
    TrainingSetup setup;
    std::optional<std::string> name;
    std::string where;
  };
  std::vector<Setup> setup_list;
  for (std::size_t i = 0; i < setups.size(); ++i) {
    Setup s;
    s.name = setups[i].optional_string("name");
    read_setup_fields(setups[i], s.setup);
    if (auto error = setups[i].finish()) return error;
    s.where = fmt::format("{}: setups[{}]", yaml_location(origin, setup_marks[i]), i);
    setup_list.push_back(std::move(s));
  }
  if (setup_list.empty() && !models.empty()) setup_list.push_back(Setup{TrainingSetup{}, std::nullopt, origin});
  for (const std::string& model : models) {
    for (const std::string& gpu : gpus) {
      for (const Setup& s : setup_list) {
        SweepItem item;
        item.setup = s.setup;
        if (auto error = complete(item, resolve_relative(model, origin), resolve_relative(gpu, origin), s.where)) {
          return error;
        }
        item.name = folder_name(fmt::format("{}-{}{}", item.model.name, item.gpu.name, s.name ? "-" + *s.name : ""));
        out.push_back(std::move(item));
      }
    }
  }
  return std::nullopt;
}

std::string progress_bar(const SweepProgress& p) {
  constexpr int kWidth = 30;
  const int filled = p.total > 0 ? static_cast<int>(kWidth * p.done / p.total) : kWidth;
  return fmt::format("[{}{}] {}/{}", std::string(static_cast<std::size_t>(filled), '#'),
                     std::string(static_cast<std::size_t>(kWidth - filled), '.'), p.done, p.total);
}

// Part of index.md's first paragraph, by which a later sweep knows the file is a sweep's.
constexpr std::string_view kIndexMarker = ": one report per scenario; longest sequence per method";

std::string index_markdown(const SweepInputs& inputs, const SweepResult& result, const std::string& command) {
  std::string md = fmt::format("# {}\n\nGenerated by `{}`{} (tokens, batch as in the setup), and auto's estimated "
                               "tokens/s at its longest.\n\n",
                               inputs.title, command, kIndexMarker);
  md += "| scenario | model | GPU | setup | vanilla | recompute | mst | mst-offload | auto | auto vs vanilla | auto tokens/s | auto's plan |\n";
  md += "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n";
  for (const SweepResult::Row& row : result.rows) {
    const SweepItem& it = *row.item;
    if (row.error) {
      md += fmt::format("| {} | {} | {} | {} | failed: {} |||||||| \n", it.name, it.model.name, it.gpu.name,
                        describe_setup(it.setup), row.error->message);
      continue;
    }
    std::string cells;
    for (std::int64_t s : row.max_seq_len) cells += fmt::format(" {} |", s > 0 ? format_thousands(s) : "none");
    const std::int64_t vanilla = row.max_seq_len[0];
    const std::int64_t best = row.max_seq_len[4];
    md += fmt::format("| [{}]({}/report.md) | {} | {} | {} |{} {} | {} | {} |\n", it.name, it.name, it.model.name,
                      it.gpu.name, describe_setup(it.setup), cells,
                      vanilla > 0 && best > 0 ? fmt::format("{:.2f}x", static_cast<double>(best) / static_cast<double>(vanilla))
                                              : std::string("-"),
                      best > 0 ? format_thousands(static_cast<std::int64_t>(row.auto_tokens_per_s + 0.5)) : "-",
                      best > 0 ? row.auto_plan : "-");
  }
  return md;
}

nlohmann::json index_json(const SweepInputs& inputs, const SweepResult& result, const std::string& command) {
  nlohmann::json rows = nlohmann::json::array();
  for (const SweepResult::Row& row : result.rows) {
    nlohmann::json j = {{"name", row.item->name},
                        {"model", row.item->model.name},
                        {"gpu", row.item->gpu.name},
                        {"setup", setup_json(row.item->setup)}};
    if (row.error) {
      j["error"] = row.error->message;
    } else {
      nlohmann::json longest;
      for (std::size_t m = 0; m < all_methods().size(); ++m) {
        longest[std::string(to_string(all_methods()[m]))] = row.max_seq_len[m];
      }
      j["max_seq_len"] = longest;
      j["auto_tokens_per_s"] = row.auto_tokens_per_s;
      j["report"] = row.item->name + "/report.md";
    }
    rows.push_back(j);
  }
  return {{"title", inputs.title}, {"command", command}, {"scenarios", rows}};
}

}  // namespace

Expected<SweepInputs> load_sweep_inputs(const std::vector<std::string>& files) {
  SweepInputs inputs;
  for (const std::string& file : files) {
    auto text = read_text_file(file);
    if (!text) return text.error();
    auto node = load_yaml(*text, file, "sweep or scenario file");
    if (!node) return node.error();
    const bool sweep = node->IsMap() && (node->operator[]("scenarios") || node->operator[]("models") ||
                                         node->operator[]("gpus") || node->operator[]("setups") || node->operator[]("title"));
    if (sweep) {
      FieldReader r = FieldReader::root(*node, file, "sweep file");
      std::string title;
      if (auto error = read_sweep(r, file, title, inputs.items)) return *error;
      if (inputs.title.empty()) inputs.title = title;
      continue;
    }
    auto scenario = parse_scenario_yaml(*text, file);
    if (!scenario) return scenario.error();
    if (!scenario->model || !scenario->gpu) {
      return make_error(ErrorKind::invalid, "{}: field '{}': a scenario in a sweep must name its {} (or use a sweep file "
                                            "with 'models' and 'gpus')",
                        file, scenario->model ? "gpu" : "model", scenario->model ? "GPU" : "model");
    }
    if (scenario->cluster) {
      return make_error(ErrorKind::invalid, "{}: field 'cluster': sweeps cover one GPU for now", file);
    }
    SweepItem item;
    item.setup = scenario->setup;  // the scenario's paths are already relative to the working directory
    if (auto error = complete(item, *scenario->model, *scenario->gpu, file)) return *error;
    item.name = folder_name(fs::path(file).stem().string());
    inputs.items.push_back(std::move(item));
  }
  if (inputs.items.empty()) return make_error(ErrorKind::usage, "sweep: no scenario to run");
  for (std::size_t i = 0; i < inputs.items.size(); ++i) {
    for (std::size_t j = 0; j < i; ++j) {
      if (inputs.items[i].name == inputs.items[j].name) {
        return make_error(ErrorKind::invalid, "{} and {} would both write the report '{}'; give one of them a 'name'",
                          inputs.items[j].origin, inputs.items[i].origin, inputs.items[i].name);
      }
    }
  }
  if (inputs.title.empty()) inputs.title = "mst-plan sweep";
  return inputs;
}

std::int64_t SweepResult::failures() const {
  return std::count_if(rows.begin(), rows.end(), [](const Row& r) { return r.error.has_value(); });
}

namespace {

// An index a sweep wrote (index_markdown's line, index_json's fields), which a new sweep may
// replace; anything else at that name is the user's and is not replaced.
bool written_by_a_sweep(const fs::path& path, bool json) {
  std::ifstream in(path, std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!json) return text.find(kIndexMarker) != std::string::npos;
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  return j.is_object() && j.contains("title") && j.contains("command") && j.contains("scenarios") &&
         j["scenarios"].is_array();
}

}  // namespace

Expected<SweepResult> run_sweep(const SweepInputs& inputs, const fs::path& out, const SweepOptions& options) {
  std::error_code ec;
  for (const auto& [name, json] : {std::pair{"index.md", false}, std::pair{"index.json", true}}) {
    const fs::path index = out / name;
    if (fs::exists(fs::symlink_status(index, ec)) && !written_by_a_sweep(index, json)) {
      return make_error(ErrorKind::io,
                        "{}: exists and was not written by a sweep; refusing to replace it (give --out another folder)",
                        index.string());
    }
  }
  fs::create_directories(out, ec);
  if (ec || !fs::is_directory(out, ec)) {
    return make_error(ErrorKind::io, "{}: cannot create the output folder{}", out.string(), ec ? ": " + ec.message() : "");
  }
  SweepResult result;
  result.rows.resize(inputs.items.size());
  for (std::size_t i = 0; i < inputs.items.size(); ++i) result.rows[i].item = &inputs.items[i];

  std::atomic<std::size_t> next{0};
  std::mutex progress_mutex;
  std::int64_t done = 0;
  auto work = [&] {
    for (std::size_t i = next++; i < inputs.items.size(); i = next++) {
      const auto start = std::chrono::steady_clock::now();
      const SweepItem& item = inputs.items[i];
      SweepResult::Row& row = result.rows[i];
      ReportOptions report_options = options.report;
      report_options.timeline_seq_len.reset();
      const Report report = build_report(item.model, item.gpu, item.setup, report_options);
      for (std::size_t m = 0; m < all_methods().size(); ++m) {
        const MethodResult* r = report.method(all_methods()[m]);
        row.max_seq_len[m] = r && r->at_max ? r->at_max->seq_len : 0;
      }
      if (const MethodResult* best = report.method(Method::automatic); best && best->at_max) {
        row.auto_tokens_per_s = best->at_max->time.tokens_per_s;
        row.auto_plan = describe_plan(best->at_max->plan, item.model, best->at_max->positions);
      }
      auto written = write_report(out / item.name, report_files(report, options.command), options.gnuplot);
      if (!written) row.error = written.error();
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::lock_guard lock(progress_mutex);
      ++done;
      if (options.on_progress) {
        options.on_progress(SweepProgress{done, static_cast<std::int64_t>(inputs.items.size()), &item, !row.error, seconds});
      }
    }
  };
  const unsigned hardware = std::max(1U, std::thread::hardware_concurrency());
  const std::size_t jobs = std::min<std::size_t>(inputs.items.size(), options.jobs > 0 ? static_cast<std::size_t>(options.jobs) : hardware);
  std::vector<std::jthread> workers;
  for (std::size_t j = 1; j < jobs; ++j) workers.emplace_back(work);
  work();
  workers.clear();  // joins

  if (auto error = write_text_file((out / "index.md").string(), index_markdown(inputs, result, options.command))) return *error;
  if (auto error = write_text_file((out / "index.json").string(), json_text(index_json(inputs, result, options.command)) + "\n")) {
    return *error;
  }
  return result;
}

std::string format_progress(const SweepProgress& p, bool terminal) {
  const std::string what = fmt::format("{} {} ({:.1f} s)", p.item->name, p.ok ? "written" : "FAILED", p.seconds);
  return terminal ? fmt::format("\r{} {:<60}", progress_bar(p), what) : fmt::format("sweep: {}/{} {}\n", p.done, p.total, what);
}

}  // namespace mstplan::report
