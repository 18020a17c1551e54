// Published measurements (report/published.h): the committed corpus held to its documented
// bounds, every case's error printed, and the case format's errors.
#include <cmath>
#include <iostream>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "report/published.h"
#include "test_util.h"

namespace mstplan {
namespace {

using report::PublishedCase;
using report::PublishedQuantity;
using report::PublishedRow;

// CI prints every case and fails past the bounds (PublishedBounds: peak median 3%, worst 8%;
// longest 20%; tokens/s median 15%).
TEST(Published, CorpusWithinTheDocumentedBounds) {
  const std::vector<PublishedCase>& cases = report::builtin_published_cases();
  ASSERT_GE(cases.size(), 15U) << "the corpus holds at least 15 cases";
  const std::vector<PublishedRow> rows = report::predict_published(cases);
  std::size_t per_quantity[3] = {0, 0, 0};
  for (const PublishedRow& r : rows) {
    ++per_quantity[static_cast<std::size_t>(r.c.quantity)];
    std::cout << fmt::format("  {:<45} published {:>16.0f}  predicted {:>16.0f}  error {:+7.2f}%\n", r.c.id, r.published,
                             r.predicted, 100 * r.error);
    EXPECT_GT(r.predicted, 0) << r.c.id;
  }
  for (std::size_t q = 0; q < 3; ++q) EXPECT_GE(per_quantity[q], 1U) << "every quantity has a case";
  const report::PublishedSummary s = report::summarize(rows, cases.size() - rows.size());
  const auto v = report::violations(s, rows, report::PublishedBounds{});
  EXPECT_TRUE(v.empty()) << fmt::format("{}", fmt::join(v, "\n"));
  // Every case names where to read it, and a case that cannot be predicted says what it needs.
  for (const PublishedCase& c : cases) {
    EXPECT_TRUE(c.url.starts_with("https://")) << c.id;
    EXPECT_TRUE(c.setup || !c.missing.empty()) << c.id;
  }
}

std::string case_text(const std::string& published, const std::string& setup, const std::string& extra = "") {
  return "source: a test\nurl: https://example.org\nhardware: one GPU\nnote: test\n" + extra + published + setup;
}

TEST(Published, ReadsUnitsAndTheFailedRange) {
  const std::string setup = "setup: {model: llama3-8b, layers: 2, gpu: A100-80G, method: mst, profile: pytorch}\n";
  auto c = report::parse_published_case(
      case_text("quantity: longest_seq_len\npublished: {value: 64, unit: Ki tokens, failed: 4096}\n", setup), "x.yaml");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->scale, 1024);
  // A 2-layer llama3-8b on an 80 GB A100 fits far more than 64 Ki tokens and less than 4 Mi: no error.
  const std::vector<PublishedRow> rows = report::predict_published({*c});
  ASSERT_EQ(rows.size(), 1U);
  EXPECT_GT(rows[0].predicted, 65536);
  EXPECT_LT(rows[0].predicted, 4096.0 * 1024);
  EXPECT_EQ(rows[0].error, 0);
  // With no failed length, the same prediction is far above 64 Ki tokens.
  c = report::parse_published_case(case_text("quantity: longest_seq_len\npublished: {value: 64, unit: Ki tokens}\n", setup),
                                   "x.yaml");
  ASSERT_TRUE(c);
  EXPECT_GT(report::predict_published({*c})[0].error, 1.0);
}

TEST(Published, RefusesBadCasesNamingTheField) {
  const std::string setup = "setup: {model: llama3-8b, gpu: A100-80G, method: vanilla, seq_len: 4096}\n";
  auto expect_error = [](const std::string& text, const std::string& what) {
    auto c = report::parse_published_case(text, "bad.yaml");
    ASSERT_FALSE(c) << text;
    EXPECT_NE(c.error().message.find(what), std::string::npos) << c.error().message;
    EXPECT_NE(c.error().message.find("bad.yaml"), std::string::npos) << c.error().message;
  };
  expect_error(case_text("quantity: peak_memory\npublished: {value: 60, unit: GiBs}\n", setup),
               "expected one of bytes, MB, MiB, GB, GiB for peak_memory, got 'GiBs'");
  expect_error(case_text("quantity: peak_memory\npublished: {value: 60, unit: GiB, failed: 70}\n", setup),
               "only a longest length has a failed length");
  expect_error(case_text("quantity: peak_memory\npublished: {value: 60, unit: GiB}\n", ""), "field 'setup'");
  expect_error(case_text("quantity: speed\npublished: {value: 60, unit: GiB}\n", setup), "quantity");
  expect_error(case_text("quantity: peak_memory\npublished: {value: 60, unit: GiB}\n", setup, "colour: red\n"), "colour");
  expect_error(case_text("quantity: longest_seq_len\npublished: {value: 60, unit: K tokens, failed: 50}\n",
                         "setup: {model: llama3-8b, gpu: A100-80G, method: vanilla}\n"),
               "is not above the value 60");
  expect_error(case_text("quantity: peak_memory\npublished: {value: 60, unit: GiB}\n",
                         "setup: {model: llama9, gpu: A100-80G, method: vanilla, seq_len: 4096}\n"),
               "setup.model");
  // A case the planner cannot express yet needs no setup, only what is missing.
  auto ok = report::parse_published_case(
      case_text("quantity: peak_memory\npublished: {value: 60, unit: GiB}\n", "", "missing: LoRA (issue 17)\n"), "ok.yaml");
  ASSERT_TRUE(ok) << ok.error().message;
  EXPECT_FALSE(ok->setup);
  EXPECT_TRUE(report::predict_published({*ok}).empty());
}

TEST(Published, CommandLineTableAndExitCode) {
  test::ScratchDir dir;
  // 2-layer llama3-8b, vanilla at 4,096 tokens: a figure 50% off the prediction exits 6.
  const std::string setup =
      "setup: {model: llama3-8b, layers: 2, gpu: A100-80G, method: vanilla, seq_len: 4096, profile: pytorch}\n";
  const std::string off = dir.write("off.yaml", case_text("quantity: peak_memory\npublished: {value: 1, unit: GiB}\n", setup));
  test::CliResult r = test::run({"fidelity", "--published", "--no-builtin", "--case", off});
  EXPECT_EQ(r.code, 6) << r.err;
  EXPECT_NE(r.err.find("peak-memory error"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("| off | llama3-8b/2L vanilla S=4,096"), std::string::npos) << r.out;
  // The built-in corpus: within its bounds, every case listed, the inexpressible ones apart.
  r = test::run({"fidelity", "--published"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("| mst-notebook-llama3-8b-8k |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("not expressible yet:"), std::string::npos) << r.out;
  r = test::run({"fidelity", "--published", "--json"});
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("\"not_expressible\""), std::string::npos);
  // A known gap: printed with its error and held out of the bound, until it closes.
  const std::string gap = dir.write(
      "gap.yaml", case_text("quantity: peak_memory\npublished: {value: 1, unit: GiB}\n", setup, "known_gap: a test gap\n"));
  r = test::run({"fidelity", "--published", "--no-builtin", "--case", gap});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("known gaps (held out of the bounds until closed):\n  gap: +"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("1 known gaps"), std::string::npos) << r.out;
  const std::string closed = dir.write(
      "closed.yaml", case_text("quantity: longest_seq_len\npublished: {value: 64, unit: Ki tokens, failed: 4096}\n",
                               "setup: {model: llama3-8b, layers: 2, gpu: A100-80G, method: mst, profile: pytorch}\n",
                               "known_gap: closed since\n"));
  r = test::run({"fidelity", "--published", "--no-builtin", "--case", closed});
  EXPECT_EQ(r.code, 6);
  EXPECT_NE(r.err.find("is marked known_gap but its error +0.00% is within 20.0%: remove the field"), std::string::npos)
      << r.err;
  // --case belongs to --published; a missing file is bad input.
  EXPECT_EQ(test::run({"fidelity", "--case", off}).code, 2);
  EXPECT_EQ(test::run({"fidelity", "--published", "--case", dir.path().string() + "/none.yaml"}).code, 3);
}

}  // namespace
}  // namespace mstplan
