#include "planner/units.h"

#include <gtest/gtest.h>

namespace mstplan {
namespace {

TEST(Units, CheckedArithmeticRefusesOverflowAndNegatives) {
  EXPECT_EQ(checked_mul(128256, 4096), 525336576);
  EXPECT_EQ(checked_mul(INT64_MAX, 1), INT64_MAX);
  EXPECT_EQ(checked_mul(INT64_MAX / 2 + 1, 2), std::nullopt);  // 2^63 does not fit
  EXPECT_EQ(checked_mul(-1, 2), std::nullopt);
  EXPECT_EQ(checked_add(INT64_MAX, 0), INT64_MAX);
  EXPECT_EQ(checked_add(INT64_MAX, 1), std::nullopt);
  EXPECT_EQ(checked_add(3, -1), std::nullopt);
}

TEST(Units, FormatsBytesInBinaryUnits) {
  EXPECT_EQ(format_bytes(0), "0 B");
  EXPECT_EQ(format_bytes(1023), "1023 B");
  EXPECT_EQ(format_bytes(1536), "1.50 KiB");
  EXPECT_EQ(format_bytes(80 * kGiB), "80.00 GiB");
  EXPECT_EQ(format_bytes(3 * kGiB * 1024), "3.00 TiB");
  EXPECT_EQ(format_bytes(-2 * kMiB), "-2.00 MiB");
  EXPECT_EQ(format_gib(16060522496), "14.96");  // llama3-8b bf16 weights
}

TEST(Units, FormatsCounts) {
  EXPECT_EQ(format_thousands(8030261248), "8,030,261,248");
  EXPECT_EQ(format_thousands(999), "999");
  EXPECT_EQ(format_thousands(1000), "1,000");
  EXPECT_EQ(format_thousands(-1234567), "-1,234,567");
  EXPECT_EQ(format_count(8030261248), "8.03 B");
  EXPECT_EQ(format_count(158400), "158.40 K");
  EXPECT_EQ(format_count(12), "12");
}

}  // namespace
}  // namespace mstplan
