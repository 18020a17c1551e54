#include "cli/cli.h"

#include <regex>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "planner/catalog.h"
#include "planner/units.h"
#include "runtime/device_probe.h"
#include "test_util.h"

namespace mstplan {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

TEST(Cli, MainCommandStatesModelGpuAndSetupFirst) {
  const auto r = test::run({"--model", "llama3-8b", "--gpu", "A100-80G"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  std::istringstream lines(r.out);
  std::string first, second;
  std::getline(lines, first);
  std::getline(lines, second);
  EXPECT_EQ(first, "llama3-8b (8.03 B parameters) on A100-80G (79.32 GiB as CUDA reports it, 0.50 GiB reserved for "
                   "context/workspace)");
  EXPECT_EQ(second, "setup: bf16 weights, AdamW state bf16, optimizer in backward, batch 1, flash attention, profile native");
  // 8,030,261,248 x 2 bytes = 14.96 GiB of weights, x 4 = 29.92 GiB of AdamW state.
  EXPECT_THAT(r.out, HasSubstr("weights               14.96 GiB"));
  EXPECT_THAT(r.out, HasSubstr("optimizer state       29.92 GiB"));
  EXPECT_THAT(r.out, HasSubstr("left for activations and transients"));
}

TEST(Cli, JsonCarriesTheContractFields) {
  const auto r = test::run({"--model", "llama3-8b", "--gpu", "A100-80G", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["model"]["name"], "llama3-8b");
  ASSERT_TRUE(j["model"]["parameters"].is_number_integer());
  EXPECT_EQ(j["model"]["parameters"].get<std::int64_t>(), 8'030'261'248);
  ASSERT_TRUE(j["gpu"]["capacity_bytes"].is_number_integer());
  EXPECT_EQ(j["gpu"]["capacity_bytes"].get<std::int64_t>(), 81222 * kMiB);
  EXPECT_EQ(j["setup"]["seq_len"], "search");
  EXPECT_EQ(j["static"]["weights_bytes"].get<std::int64_t>(), 2 * 8'030'261'248);
  EXPECT_EQ(j["static"]["fits"], true);
  EXPECT_EQ(j["static"]["available_bytes"].get<std::int64_t>(),
            j["gpu"]["usable_bytes"].get<std::int64_t>() - j["static"]["total_bytes"].get<std::int64_t>());
}

// The --json contract of the planner: one object per method with its longest sequence.
TEST(Cli, JsonMethodsCarryTheContractFields) {
  const auto r = test::run({"--model", "llama3-8b", "--gpu", "A100-80G", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j["methods"].size(), 5u);
  std::vector<std::string> names;
  for (const auto& m : j["methods"]) {
    names.push_back(m["method"]);
    ASSERT_TRUE(m["max_seq_len"].is_number_integer());
    EXPECT_GT(m["max_seq_len"].get<std::int64_t>(), 0);
    EXPECT_TRUE(m["peak_bytes"].is_number_integer());
    EXPECT_LE(m["peak_bytes"].get<std::int64_t>(), j["gpu"]["usable_bytes"].get<std::int64_t>());
    EXPECT_TRUE(m["peak_at"].is_string());
    EXPECT_GT(m["tokens_per_s"].get<double>(), 0.0);
    EXPECT_TRUE(m["plan"]["mlp"]["chunks"].is_number_integer());
    EXPECT_FALSE(m.contains("seq_len"));  // only with --seq
  }
  EXPECT_THAT(names, ::testing::ElementsAre("vanilla", "recompute", "mst", "mst-offload", "auto"));
  EXPECT_EQ(j["chosen"]["method"], "auto");
  EXPECT_FALSE(j["pareto"].empty());
  // The chosen evaluation's peak is the largest of its phase peaks, and its breakdown sums to the
  // requested bytes at the peak.
  const auto& chosen = j["chosen"]["evaluation"];
  std::int64_t largest = 0, kinds = 0;
  for (const auto& [phase, bytes] : chosen["phase_peak_bytes"].items()) largest = std::max(largest, bytes.get<std::int64_t>());
  for (const auto& [kind, bytes] : chosen["peak_breakdown_bytes"].items()) kinds += bytes.get<std::int64_t>();
  EXPECT_EQ(largest, chosen["peak_bytes"].get<std::int64_t>());
  EXPECT_LE(kinds, chosen["peak_bytes"].get<std::int64_t>());
  EXPECT_GT(kinds, chosen["peak_bytes"].get<std::int64_t>() - 1024 * 1024);  // rounding only
}

TEST(Cli, JsonAtARequestedLength) {
  const auto r = test::run({"--model", "llama3-8b", "--gpu", "A100-80G", "--seq", "16K", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  for (const auto& m : j["methods"]) {
    EXPECT_EQ(m["seq_len"], 16384);
    ASSERT_TRUE(m["fits"].is_boolean());
    if (m["method"] == "vanilla") {
      EXPECT_FALSE(m["fits"].get<bool>());
    }
    if (m["method"] == "mst") {
      EXPECT_TRUE(m["fits"].get<bool>());
      EXPECT_TRUE(m["peak_bytes_at_seq"].is_number_integer());
    }
  }
  EXPECT_EQ(j["fastest_at_seq"]["seq_len"], 16384);
  EXPECT_TRUE(j["fastest_at_seq"]["fits"].get<bool>());
}

TEST(Cli, OneMethodOnly) {
  const auto r = test::run({"--model", "llama3-8b", "--gpu", "A100-80G", "--method", "mst", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j["methods"].size(), 1u);
  EXPECT_EQ(j["chosen"]["method"], "mst");
  EXPECT_EQ(test::run({"--model", "llama3-8b", "--gpu", "A100-80G", "--method", "magic"}).code, 2);
}

// --out writes the chosen plan; `show` rebuilds its step and finds the same peak.
TEST(Cli, PlanFilesRoundTrip) {
  test::ScratchDir dir;
  const std::string path = (dir.path() / "plan.yaml").string();
  const auto r = test::run({"--model", "tiny-gemma2", "--gpu", "A10G", "--seq", "2048", "--batch", "2", "--out", path});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto shown = test::run({"show", path, "--json"});
  ASSERT_EQ(shown.code, 0) << shown.err;
  const auto j = nlohmann::json::parse(shown.out);
  EXPECT_TRUE(j["matches_prediction"].get<bool>());
  EXPECT_EQ(j["evaluation"]["seq_len"], 2048);
  EXPECT_EQ(j["setup"]["batch"], 2);
  EXPECT_EQ(j["model"]["name"], "tiny-gemma2");
  EXPECT_THAT(test::run({"show", path}).out, HasSubstr(": the same"));
}

// When nothing fits, --out writes nothing and says so (exit 5); an existing file is untouched.
TEST(Cli, NothingFitsWritesNoPlan) {
  test::ScratchDir dir;
  const std::string path = dir.write("plan.yaml", "old contents\n");
  const auto r = test::run({"--model", "llama3-8b", "--gpu", "A100-80G", "--seq", "4M", "--method", "vanilla", "--out", path});
  EXPECT_EQ(r.code, 5);
  EXPECT_THAT(r.err, HasSubstr("not written: no vanilla plan fits 4194304 tokens"));
  EXPECT_EQ(test::source_file_at(path), "old contents\n");
  const auto into_dir = test::run({"--model", "tiny-llama", "--gpu", "A100-80G", "--out", dir.path().string()});
  EXPECT_EQ(into_dir.code, 1);
  EXPECT_THAT(into_dir.err, HasSubstr("is a directory"));
}

TEST(Cli, SaysByHowMuchItDoesNotFitAndWhatWould) {
  const auto r = test::run({"--model", "llama3-8b", "--gpu", "A100-40G", "--precision", "mixed"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("does not fit: the static state alone is"));
  EXPECT_THAT(r.out, HasSubstr("would fit with --precision bf16 --optimizer adamw-8bit"));
  const auto j = nlohmann::json::parse(test::run({"--model", "llama3-8b", "--gpu", "A100-40G", "--precision", "mixed",
                                                  "--json"}).out);
  EXPECT_EQ(j["static"]["fits"], false);
  EXPECT_LT(j["static"]["available_bytes"].get<std::int64_t>(), 0);
  EXPECT_EQ(j["static"]["fixes"][0]["flags"], "--precision bf16 --optimizer adamw-8bit");
}

TEST(Cli, FlagsOverrideTheScenarioFieldByField) {
  test::ScratchDir dir;
  const std::string spec = dir.write("my-model.yaml", test::source_file("models/tiny-qwen2.yaml"));
  const std::string scenario = dir.write("s.yaml", "model: my-model.yaml\ngpu: H100-80G\nbatch: 4\nprecision: mixed\n");
  const auto r = test::run({"--scenario", scenario, "--batch", "2", "--seq", "8K", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["model"]["name"], "tiny-qwen2");  // found next to the scenario
  EXPECT_EQ(j["gpu"]["name"], "H100-80G");
  EXPECT_EQ(j["setup"]["batch"], 2);           // flag beats file
  EXPECT_EQ(j["setup"]["seq_len"], 8192);      // K = 1024 tokens
  EXPECT_EQ(j["setup"]["precision"], "mixed");  // file beats default
  // An explicit flag also turns a default off.
  const auto off = nlohmann::json::parse(test::run({"--scenario", scenario, "--no-optimizer-in-backward", "--json"}).out);
  EXPECT_EQ(off["setup"]["optimizer_in_backward"], false);
  EXPECT_EQ(off["static"]["persistent_gradients"], true);
}

TEST(Cli, ReadsHuggingFaceConfigs) {
  const auto r = test::run({"--model", test::data_path("hf/gemma2-9b/config.json"), "--gpu", "a100", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["model"]["name"], "gemma2-9b");
  EXPECT_EQ(j["model"]["parameters"].get<std::int64_t>(), 9'241'705'984);

  const auto yaml = test::run({"models", test::data_path("hf/llama3.2-1b")});
  ASSERT_EQ(yaml.code, 0) << yaml.err;
  EXPECT_THAT(yaml.out, StartsWith("# 1,235,814,400 parameters"));
  EXPECT_THAT(yaml.out, HasSubstr("rope_scaling: {type: llama3, factor: 32"));
}

TEST(Cli, HelpDocumentsEveryFlagWithAnExample) {
  const auto r = test::run({"--help"});
  ASSERT_EQ(r.code, 0);
  for (const char* flag : {"--model", "--gpu", "--scenario", "--batch", "--seq", "--precision", "--optimizer",
                           "--optimizer-in-backward", "--no-optimizer-in-backward", "--grad-accum", "--attention", "--framework", "--hold-outputs",
                           "--expandable-segments", "--gpus", "--zero", "--cluster", "--profile", "--method", "--out", "--json", "--version"}) {
    EXPECT_THAT(r.out, HasSubstr(flag)) << flag;
  }
  // Every option's description carries an example ("e.g."), except --help and --version.
  std::istringstream lines(r.out);
  std::string line;
  int options = 0;
  while (std::getline(lines, line)) {
    if (!std::regex_search(line, std::regex("^  (-[a-z],)?--[a-z]"))) continue;
    if (line.find("--help") != std::string::npos || line.find("--version") != std::string::npos) continue;
    ++options;
    EXPECT_THAT(line, HasSubstr("e.g.")) << line;
  }
  EXPECT_EQ(options, 34);
  EXPECT_THAT(r.out, HasSubstr("Exit codes: 0 success"));
}

TEST(Cli, VersionAndCatalogs) {
  const auto v = test::run({"--version"});
  EXPECT_EQ(v.code, 0);
  EXPECT_THAT(v.out, StartsWith("mst-plan 0.1.0 (commit "));
  EXPECT_THAT(v.out, HasSubstr(runtime::cuda_compiled() ? "CUDA backend: compiled in" : "CUDA backend: not compiled in"));

  const auto models = test::run({"models"});
  ASSERT_EQ(models.code, 0);
  for (const ModelSpec& m : builtin_models()) EXPECT_THAT(models.out, HasSubstr(m.name));
  EXPECT_THAT(models.out, HasSubstr("70,553,706,496"));

  const auto gpus = test::run({"gpus", "--json"});
  ASSERT_EQ(gpus.code, 0);
  EXPECT_EQ(nlohmann::json::parse(gpus.out).size(), builtin_gpus().size());
  const auto one = test::run({"gpus", "h200"});
  EXPECT_THAT(one.out, HasSubstr("capacity_bytes: 150109945856"));
  // --json works before the subcommand too.
  const auto before = test::run({"--json", "models", "tiny-llama"});
  ASSERT_EQ(before.code, 0) << before.err;
  EXPECT_EQ(nlohmann::json::parse(before.out)["parameters"], 158'400);
}

TEST(Cli, JsonSurvivesFileNamesThatAreNotUtf8) {
  test::ScratchDir dir;
  const std::string spec = dir.write("model-\xff.yaml", test::source_file("models/tiny-llama.yaml"));
  const auto r = test::run({"--model", spec, "--gpu", "a100", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(nlohmann::json::parse(r.out)["model"]["source"].get<std::string>(), HasSubstr("model-\xef\xbf\xbd.yaml"));
}

TEST(Cli, DevicesSaysWhatItFound) {
  const auto r = test::run({"devices"});
  if (runtime::probe_devices().devices.empty()) {
    EXPECT_EQ(r.code, 4);
    EXPECT_EQ(r.out, "");  // an error writes no partial result
    EXPECT_THAT(r.err, StartsWith("mst-plan: no CUDA device: "));
  } else {
    EXPECT_EQ(r.code, 0) << r.err;
    EXPECT_THAT(r.out, HasSubstr("device 0: "));
  }
}

}  // namespace
}  // namespace mstplan
