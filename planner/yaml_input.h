#pragma once
// Strict reading of YAML (and text files in general) into our structs.
//
// `read_text_file` refuses what is not a regular UTF-8 text file of reasonable size.
// `load_yaml` turns yaml-cpp's exceptions into an Error with file:line:column.
// `FieldReader` reads one mapping field by field: each field is read by name; missing required
// fields, unknown or duplicate fields and ill-typed or out-of-range values become one Error that
// names file:line:column, the field and the value. Numbers and booleans must be plain scalars
// (`64`, not `"64"`). The first error wins; later reads return defaults and do nothing, so
// parsing code stays linear:
//
//   FieldReader r = FieldReader::root(node, "models/x.yaml", "model spec");
//   spec.hidden_size = r.required_int("hidden_size");
//   spec.eps = r.optional_number("eps").value_or(1e-5);
//   if (auto error = r.finish()) return *error;
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "planner/enum_names.h"
#include "planner/error.h"

namespace mstplan {

/// Reads a whole text file. Refuses a missing path (not_found), a directory, device, FIFO or
/// unreadable file (io), files over `max_bytes`, data with NUL bytes and text that is not UTF-8
/// (parse). An empty file is returned as "".
[[nodiscard]] Expected<std::string> read_text_file(const std::filesystem::path& path,
                                                   std::int64_t max_bytes = 16 << 20);

/// Reads the file at `path` and hands its text to `parse(text, path)`.
template <typename T>
[[nodiscard]] Expected<T> parse_file(const std::string& path, Expected<T> (*parse)(const std::string&, const std::string&)) {
  auto text = read_text_file(path);
  if (!text) return text.error();
  return parse(*text, path);
}

/// Parses YAML text holding one document; `origin` (a file name) prefixes messages. An empty
/// document is an error naming `what` ("model spec").
[[nodiscard]] Expected<YAML::Node> load_yaml(const std::string& text, const std::string& origin,
                                             std::string_view what);

/// `text` as one YAML scalar, quoted when it must be ("x: y" -> "'x: y'").
[[nodiscard]] std::string yaml_scalar(const std::string& text);

/// "file:line:column" of a node (1-based).
[[nodiscard]] std::string yaml_location(const std::string& origin, const YAML::Mark& mark);

/// Accepted integers: [min, max], and with `size_suffixes` also "128K" / "1M" (x 1024, x 1048576).
struct IntRange {
  std::int64_t min = 1;
  std::int64_t max = INT64_MAX;
  bool size_suffixes = false;
  static IntRange positive() { return {1, INT64_MAX, false}; }
  static IntRange non_negative() { return {0, INT64_MAX, false}; }
  static IntRange tokens() { return {1, INT64_MAX, true}; }
};

/// A value as messages quote it: its first 60 bytes, control bytes as '?', "..." after a longer
/// one (a 1 MB field is not echoed whole).
[[nodiscard]] std::string printable(std::string_view text);

class FieldReader {
 public:
  /// Reads `node`, which must be a mapping; `what` names the document in messages.
  static FieldReader root(const YAML::Node& node, std::string origin, std::string_view what);

  // Required fields: absent or null is an error; the return value is meaningless after an error.
  std::int64_t required_int(std::string_view key, IntRange range = IntRange::positive());
  double required_number(std::string_view key);  ///< a positive, finite number
  bool required_bool(std::string_view key);
  std::string required_string(std::string_view key);
  template <typename E>
  E required_enum(std::string_view key) {
    return read_enum<E>(key, true).value_or(EnumNames<E>::table[0].first);
  }

  // Optional fields: absent or null gives nullopt.
  /// An integer; `word` (if given) is accepted in its place and also gives nullopt ("search").
  std::optional<std::int64_t> optional_int(std::string_view key, IntRange range = IntRange::positive(),
                                           std::string_view word = {});
  /// A list of integers, or `word` in its place (an empty list: `layers: all` is a choice, not
  /// an absence); nullopt when absent.
  std::optional<std::vector<std::int64_t>> optional_int_list(std::string_view key, IntRange range,
                                                             std::string_view word);
  std::optional<double> optional_number(std::string_view key);  ///< a positive, finite number
  std::optional<bool> optional_bool(std::string_view key);
  std::optional<std::string> optional_string(std::string_view key);
  std::vector<std::string> optional_string_list(std::string_view key);
  template <typename E>
  std::optional<E> optional_enum(std::string_view key) {
    return read_enum<E>(key, false);
  }
  /// A nested mapping; nullopt when absent or null (or after an error).
  std::optional<FieldReader> optional_map(std::string_view key);
  /// A list of mappings ("key[2].field" in messages); empty when absent, null or after an error.
  /// Each item's line and column are in `marks` when given.
  std::vector<FieldReader> optional_map_list(std::string_view key, std::vector<YAML::Mark>* marks = nullptr);

  /// Records an error at `key` (or at the mapping when the key is absent), unless one is set.
  void fail(std::string_view key, std::string_view message);
  /// Checks that every field of this mapping was read; returns the first error, if any.
  [[nodiscard]] std::optional<Error> finish();
  [[nodiscard]] bool ok() const { return !state_->error.has_value(); }

 private:
  struct State {
    std::string origin;
    std::optional<Error> error;
  };
  struct Field {
    std::string key;
    YAML::Mark key_mark;
    YAML::Node value;
    bool read = false;
  };
  FieldReader(std::shared_ptr<State> state, const YAML::Node& node, std::string prefix, std::string what);

  /// The field, marked read; nullptr when absent or null (an error if `expected` is given).
  Field* find(std::string_view key, std::string_view required_expectation = {});
  /// The text of a plain (unquoted, untagged) scalar, for numbers and booleans.
  std::optional<std::string> plain_scalar(Field& field, std::string_view expected);
  bool is_plain(const Field& field, const std::string& text, std::string_view expected);
  std::optional<std::string> read_string(Field& field);
  std::optional<std::string> any_scalar(Field& field, std::string_view expected);
  std::optional<std::int64_t> read_int(Field& field, IntRange range, std::string_view word);
  std::optional<double> read_number(Field& field);
  std::optional<bool> read_bool(Field& field);
  void fail_at(const YAML::Mark& mark, std::string message, ErrorKind kind = ErrorKind::invalid);
  void fail_field(const Field& field, std::string_view message);
  std::string describe(std::string_view key) const;

  template <typename E>
  std::optional<E> read_enum(std::string_view key, bool required) {
    const std::string expected = fmt::format("one of {}", enum_choices<E>());
    Field* field = find(key, required ? std::string_view(expected) : std::string_view());
    if (!field) return std::nullopt;
    auto text = any_scalar(*field, expected);
    if (!text) return std::nullopt;
    if (auto value = parse_enum<E>(*text)) return value;
    fail_field(*field, fmt::format("expected {}, got '{}'", expected, printable(*text)));
    return std::nullopt;
  }

  std::shared_ptr<State> state_;
  YAML::Mark mark_;
  std::string prefix_;
  std::string what_;
  std::vector<Field> fields_;
  std::vector<std::string> asked_;  // every key asked for: the schema, for "did you mean"
};

}  // namespace mstplan
