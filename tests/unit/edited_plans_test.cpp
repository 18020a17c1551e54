// Issue 18: a plan file is what `show`, `run` and `verify` hold the planner and the runtime to, so
// one whose recorded prediction no longer matches the step it describes (edited by hand, or from
// another version) is refused with the field, and the work a check does is bounded.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <regex>
#include <string>
#include <vector>

#include "test_util.h"

namespace mstplan {
namespace {

using ::testing::HasSubstr;

struct Edit {
  std::string name;
  std::string pattern;  // replaced in the written plan file
  std::string with;
  int code;
  std::string message;
};

TEST(EditedPlans, ShowAndVerifyRefuseAPredictionTheStepNoLongerMakes) {
  test::ScratchDir dir;
  const std::string plan = (dir.path() / "p.yaml").string();
  ASSERT_EQ(test::run({"--model", "tiny-llama", "--gpu", "A100-80G", "--seq", "256", "--out", plan}).code, 0);
  const std::string text = test::source_file_at(plan);
  std::smatch peak, required;
  ASSERT_TRUE(std::regex_search(text, peak, std::regex("peak_allocated_bytes: ([0-9]+)")));
  ASSERT_TRUE(std::regex_search(text, required, std::regex("required_bytes: ([0-9]+)")));
  const std::int64_t bytes = std::stoll(peak[1]);
  // The untouched file passes both.
  EXPECT_EQ(test::run({"show", plan}).code, 0);
  EXPECT_EQ(test::run({"verify", plan}).code, 0);
  const std::string half = std::to_string(bytes / 2), small = std::to_string(std::stoll(required[1]) - 1);
  const std::vector<Edit> edits = {
      {"the peak halved", "peak_allocated_bytes: [0-9]+", "peak_allocated_bytes: " + half, 6,
       "field 'predicted.peak_allocated_bytes': " + half + ": the step the file describes peaks at " + std::to_string(bytes) +
           " bytes"},
      {"the model widened", "hidden_size: 64", "hidden_size: 128", 6,
       "field 'predicted.peak_allocated_bytes': " + std::to_string(bytes) + ":"},
      {"the GPU one byte short", "capacity_bytes: [0-9]+", "capacity_bytes: " + small, 6,
       "field 'gpu.capacity_bytes': " + small + ": the step needs " + std::string(required[1]) + " bytes"},
      {"a layer the model lacks", "recompute: \\{kind: none\\}", "recompute: {kind: full, layers: [0, 7]}", 3,
       "field 'plan.recompute.layers': layer 7 does not exist (tiny-llama has layers 0 to 1)"},
  };
  for (const Edit& e : edits) {
    const std::string edited = std::regex_replace(text, std::regex(e.pattern), e.with, std::regex_constants::format_first_only);
    ASSERT_NE(edited, text) << e.name;
    const std::string path = dir.write(e.name + ".yaml", edited);
    for (const char* command : {"show", "verify"}) {
      const auto r = test::run({command, path});
      EXPECT_EQ(r.code, e.code) << command << ": " << e.name << ": " << r.err;
      EXPECT_THAT(r.err, HasSubstr(e.message)) << command << ": " << e.name;
    }
  }
}

// 16M tokens of a tiny model in chunks of 64: six million kernels, which `show` reports without
// placing (the placement's memory grows with them) and refuses as edited.
TEST(EditedPlans, ShowBoundsItsWorkOnAHugeStep) {
  test::ScratchDir dir;
  const std::string plan = (dir.path() / "p.yaml").string();
  ASSERT_EQ(test::run({"--model", "tiny-llama", "--gpu", "A100-80G", "--seq", "4096", "--out", plan}).code, 0);
  std::string text = test::source_file_at(plan);
  text = std::regex_replace(text, std::regex("\nseq_len: 4096\n"), "\nseq_len: 16777216\n");
  text = std::regex_replace(text, std::regex("  mlp: \\{[^}]*\\}"), "  mlp: {chunk_tokens: 64, mode: paper}");
  const auto r = test::run({"show", dir.write("big.yaml", text)});
  EXPECT_EQ(r.code, 6) << r.err;
  EXPECT_THAT(r.out, HasSubstr("arena: not placed (6,291,538 kernels, over the 2,000,000 a check places)"));
  EXPECT_THAT(r.err, HasSubstr("field 'predicted.peak_allocated_bytes'"));
}

}  // namespace
}  // namespace mstplan
