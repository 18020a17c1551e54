// Issue 18's data-loss cases: the program replaces only what it writes. A report folder keeps the
// user's other files, a sweep does not overwrite an index it did not write, `--out` writes through
// a link (the link stays) and leaves a read-only file alone.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "test_util.h"

namespace mstplan {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

TEST(NoDataLoss, ReportKeepsTheUsersFilesInAnEarlierReportsFolder) {
  test::ScratchDir dir;
  dir.write("rep/report.md", "an earlier report\n");
  dir.write("rep/notes.txt", "my notes\n");
  dir.write("rep/data/mine.csv", "a,b\n");
  const std::string out = (dir.path() / "rep").string();
  const auto r = test::run({"report", "--model", "tiny-llama", "--gpu", "A100-80G", "--out", out});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(test::source_file_at(out + "/notes.txt"), "my notes\n");
  EXPECT_EQ(test::source_file_at(out + "/data/mine.csv"), "a,b\n");
  EXPECT_THAT(test::source_file_at(out + "/report.md"), HasSubstr("# tiny-llama on A100-80G"));
  EXPECT_TRUE(fs::exists(out + "/data/methods.csv"));
  // The manifest lists what the report wrote, not the user's files: the next report drops only those.
  const std::string manifest = test::source_file_at(out + "/.mst-plan-report");
  EXPECT_THAT(manifest, HasSubstr("\nreport.md\n"));
  EXPECT_THAT(manifest, ::testing::Not(HasSubstr("notes.txt")));
  EXPECT_THAT(manifest, ::testing::Not(HasSubstr("mine.csv")));
  // Only the staged and swapped-out folders were temporary: none is left beside it.
  for (const auto& entry : fs::directory_iterator(dir.path())) {
    EXPECT_FALSE(entry.path().filename().string().starts_with(".rep.")) << entry.path();
  }
}

TEST(NoDataLoss, SweepDoesNotReplaceAnIndexItDidNotWrite) {
  test::ScratchDir dir;
  const std::string sweep = dir.write("w.yaml", "scenarios:\n  - {model: tiny-llama, gpu: A100-80G, name: one}\n");
  const std::string out = (dir.path() / "out").string();
  for (const char* index : {"index.md", "index.json"}) {
    dir.write(std::string("out/") + index, "the user's own\n");
    const auto r = test::run({"sweep", sweep, "--out", out});
    EXPECT_NE(r.code, 0) << index;
    EXPECT_THAT(r.err, HasSubstr(std::string(index) + ": exists and was not written by a sweep; refusing to replace it"));
    EXPECT_EQ(test::source_file_at(out + "/" + index), "the user's own\n");
    EXPECT_FALSE(fs::exists(out + "/one")) << "nothing written before the refusal";
    fs::remove(out + "/" + index);
  }
  // Its own index it replaces: a second sweep into the same folder runs.
  ASSERT_EQ(test::run({"sweep", sweep, "--out", out}).code, 0);
  const auto again = test::run({"sweep", sweep, "--out", out});
  EXPECT_EQ(again.code, 0) << again.err;
}

TEST(NoDataLoss, OutWritesThroughALinkAndLeavesReadOnlyFiles) {
  test::ScratchDir dir;
  const std::string real = dir.write("real.yaml", "old\n");
  const fs::path link = dir.path() / "link.yaml";
  fs::create_symlink(real, link);
  const auto r = test::run({"--model", "tiny-llama", "--gpu", "A100-80G", "--out", link.string()});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::is_symlink(link));
  EXPECT_THAT(test::source_file_at(real), HasSubstr("mst_plan_version: 1"));

  const std::string ro = dir.write("ro.yaml", "mine\n");
  fs::permissions(ro, fs::perms::owner_read | fs::perms::group_read | fs::perms::others_read);
  const auto refused = test::run({"--model", "tiny-llama", "--gpu", "A100-80G", "--out", ro});
  EXPECT_EQ(refused.code, 1);
  EXPECT_THAT(refused.err, HasSubstr("ro.yaml: exists and is read-only; refusing to replace it"));
  EXPECT_EQ(refused.out, "") << "a failed write leaves nothing on stdout";
  EXPECT_EQ(test::source_file_at(ro), "mine\n");
  fs::permissions(ro, fs::perms::owner_write, fs::perm_options::add);  // so the scratch folder can go
}

}  // namespace
}  // namespace mstplan
