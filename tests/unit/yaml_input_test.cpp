#include "planner/yaml_input.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "test_util.h"

namespace mstplan {
namespace {

using ::testing::HasSubstr;

FieldReader reader(const std::string& text) {
  auto node = load_yaml(text, "t.yaml", "test document");
  EXPECT_TRUE(node) << node.error().message;
  return FieldReader::root(*node, "t.yaml", "test document");
}

TEST(FieldReader, ReadsTypedFieldsAndRefusesLeftovers) {
  FieldReader r = reader("a: 3\nb: 2.5\nc: true\nd: text\ne: [x, y]\nf: {g: 1}\n");
  EXPECT_EQ(r.required_int("a"), 3);
  EXPECT_EQ(r.required_number("b"), 2.5);
  EXPECT_TRUE(r.required_bool("c"));
  EXPECT_EQ(r.required_string("d"), "text");
  EXPECT_THAT(r.optional_string_list("e"), ::testing::ElementsAre("x", "y"));
  auto f = r.optional_map("f");
  ASSERT_TRUE(f);
  EXPECT_EQ(f->optional_int("g"), 1);
  EXPECT_FALSE(f->finish());
  EXPECT_FALSE(r.finish());
}

TEST(FieldReader, TheFirstErrorWinsAndLaterReadsDoNothing) {
  FieldReader r = reader("a: -1\nb: nope\n");
  EXPECT_EQ(r.required_int("a"), 1);  // a default after an error
  r.required_number("b");             // would fail too, but the first error stays
  auto error = r.finish();
  ASSERT_TRUE(error);
  EXPECT_EQ(error->message, "t.yaml:1:4: field 'a': expected a positive integer, got -1");
}

TEST(FieldReader, NullCountsAsAbsent) {
  FieldReader r = reader("a: null\nb: ~\n");
  EXPECT_EQ(r.optional_int("a"), std::nullopt);
  r.required_int("b");
  ASSERT_TRUE(r.finish());
  EXPECT_THAT(r.finish()->message, HasSubstr("null field 'b'"));
}

TEST(FieldReader, WordsStandInForIntegers) {
  FieldReader r = reader("seq: search\nlayers: all\nother: [1, 2]\n");
  EXPECT_EQ(r.optional_int("seq", IntRange::positive(), "search"), std::nullopt);
  EXPECT_EQ(r.optional_int_list("layers", IntRange::non_negative(), "all"), std::vector<std::int64_t>{});  // chosen
  EXPECT_EQ(r.optional_int_list("absent", IntRange::non_negative(), "all"), std::nullopt);
  EXPECT_EQ(r.optional_int_list("other", IntRange::non_negative(), "all"), (std::vector<std::int64_t>{1, 2}));
  EXPECT_FALSE(r.finish());
}

TEST(FieldReader, UnknownFieldsListTheKnownOnesWhenNothingIsClose) {
  FieldReader r = reader("alpha: 1\nzzzzzzzz: 2\n");
  r.optional_int("alpha");
  r.optional_int("beta");
  auto error = r.finish();
  ASSERT_TRUE(error);
  EXPECT_EQ(error->message, "t.yaml:2:1: unknown field 'zzzzzzzz' in test document (known fields: alpha, beta)");
}

TEST(LoadYaml, OneDocumentOnly) {
  EXPECT_TRUE(load_yaml("---\na: 1\n", "t.yaml", "doc"));
  EXPECT_TRUE(load_yaml("--- {a: 1}\n...\n# trailing comment\n", "t.yaml", "doc"));
  EXPECT_TRUE(load_yaml("a: |\n  --- inside a block scalar, indented\n", "t.yaml", "doc"));
  EXPECT_THAT(load_yaml("a: 1\n---\nb: 2\n", "t.yaml", "doc").error().message,
              HasSubstr("t.yaml:2:1: a second YAML document starts here"));
  EXPECT_THAT(load_yaml("a: 1\n...\nb: 2\n", "t.yaml", "doc").error().message,
              HasSubstr("t.yaml:3:1: a second YAML document"));
  EXPECT_FALSE(load_yaml(",", "t.yaml", "doc"));  // yaml-cpp's LoadAll never returns on this
}

TEST(ReadTextFile, RefusesDirectoriesBinaryAndHugeFiles) {
  test::ScratchDir dir;
  EXPECT_EQ(read_text_file(dir.path()).error().kind, ErrorKind::io);
  EXPECT_EQ(read_text_file(dir.path() / "absent").error().kind, ErrorKind::not_found);
  const std::string binary = dir.write("b", std::string("ab\0cd", 5));
  EXPECT_THAT(read_text_file(binary).error().message, HasSubstr("NUL byte at offset 2"));
  const std::string big = dir.write("big", std::string(2000, 'x'));
  EXPECT_THAT(read_text_file(big, 1000).error().message, HasSubstr("larger than 1000 bytes"));
  EXPECT_EQ(*read_text_file(dir.write("ok", "hello")), "hello");
}

}  // namespace
}  // namespace mstplan
