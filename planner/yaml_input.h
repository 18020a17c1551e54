#pragma once
// Strict reading of YAML (and text files in general) into our structs.
//
// `read_text_file` refuses directories, files over a size limit and binary data.
// `load_yaml` turns yaml-cpp's exceptions into an Error with file:line:column.
// `FieldReader` reads one mapping field by field: each field is read by name; missing required
// fields, unknown or duplicate fields and ill-typed or out-of-range values become one Error that
// names file:line:column, the field and the value. The first error wins; later reads return
// defaults and do nothing, so parsing code stays linear:
//
//   FieldReader r = FieldReader::root(node, "models/x.yaml", "model spec");
//   spec.hidden_size = r.required_int("hidden_size");
//   spec.eps = r.optional_number("eps", NumberRange::positive()).value_or(1e-5);
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

/// Reads a whole text file. Refuses a missing path (not_found), a directory or unreadable file
/// (io), files over `max_bytes` and data with NUL bytes (parse). An empty file is returned as "".
[[nodiscard]] Expected<std::string> read_text_file(const std::filesystem::path& path,
                                                   std::int64_t max_bytes = 16 << 20);

/// Parses YAML text; `origin` (a file name) prefixes messages. An empty document is an error
/// naming `what` ("model spec").
[[nodiscard]] Expected<YAML::Node> load_yaml(const std::string& text, const std::string& origin,
                                             std::string_view what);

/// Reads the file at `path` and hands its text to `parse(text, path)`.
template <typename T>
[[nodiscard]] Expected<T> parse_file(const std::string& path, Expected<T> (*parse)(const std::string&, const std::string&)) {
  auto text = read_text_file(path);
  if (!text) return text.error();
  return parse(*text, path);
}

/// `text` as one YAML scalar, quoted when it must be ("x: y" -> "'x: y'").
[[nodiscard]] std::string yaml_scalar(const std::string& text);

/// "file:line:column" of a node (1-based).
[[nodiscard]] std::string yaml_location(const std::string& origin, const YAML::Mark& mark);

struct IntRange {
  std::int64_t min = 1;
  std::int64_t max = INT64_MAX;
  static IntRange positive() { return {1, INT64_MAX}; }
  static IntRange non_negative() { return {0, INT64_MAX}; }
};

struct NumberRange {
  double min = 0.0;
  bool min_exclusive = true;
  static NumberRange positive() { return {0.0, true}; }
  static NumberRange non_negative() { return {0.0, false}; }
};

class FieldReader {
 public:
  /// Reads `node`, which must be a mapping; `what` names the document in messages.
  static FieldReader root(const YAML::Node& node, std::string origin, std::string_view what);

  // Required fields: absent or null is an error; the return value is meaningless after an error.
  std::int64_t required_int(std::string_view key, IntRange range = IntRange::positive());
  double required_number(std::string_view key, NumberRange range = NumberRange::positive());
  bool required_bool(std::string_view key);
  std::string required_string(std::string_view key);
  template <typename E>
  E required_enum(std::string_view key) {
    return optional_enum_impl<E>(key, true).value_or(EnumNames<E>::table[0].first);
  }

  // Optional fields: absent or null gives nullopt.
  /// An integer; `word` (if given) is accepted in its place and also gives nullopt ("search").
  std::optional<std::int64_t> optional_int(std::string_view key, IntRange range = IntRange::positive(),
                                           std::string_view word = {});
  /// A list of integers, or `word` in its place (nullopt, as when absent).
  std::optional<std::vector<std::int64_t>> optional_int_list(std::string_view key, IntRange range,
                                                             std::string_view word);
  std::optional<double> optional_number(std::string_view key, NumberRange range = NumberRange::positive());
  std::optional<bool> optional_bool(std::string_view key);
  std::optional<std::string> optional_string(std::string_view key);
  std::vector<std::string> optional_string_list(std::string_view key);
  template <typename E>
  std::optional<E> optional_enum(std::string_view key) {
    return optional_enum_impl<E>(key, false);
  }
  /// The scalar text of a field, for fields with a union type ("search" or an integer).
  std::optional<std::string> optional_scalar(std::string_view key);

  /// A nested mapping; nullopt when absent or null (or after an error).
  std::optional<FieldReader> optional_map(std::string_view key);
  bool has(std::string_view key) const;

  /// Records an error at `key` (or at the mapping when the key is absent), unless one is set.
  void fail(std::string_view key, std::string_view message);
  /// Checks that every field of this mapping was read; returns the first error, if any.
  [[nodiscard]] std::optional<Error> finish();
  [[nodiscard]] bool ok() const { return !state_->error.has_value(); }
  [[nodiscard]] const std::string& origin() const { return state_->origin; }

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

  Field* lookup(std::string_view key, bool required, std::string_view expected);
  void fail_at(const YAML::Mark& mark, std::string message, ErrorKind kind = ErrorKind::invalid);
  std::string describe(std::string_view key) const;
  std::optional<std::string> scalar(Field& field, std::string_view key, std::string_view expected);
  std::optional<std::string> enum_text(std::string_view key, bool required, std::string_view choices);

  template <typename E>
  std::optional<E> optional_enum_impl(std::string_view key, bool required) {
    const std::string choices = enum_choices<E>();
    auto text = enum_text(key, required, choices);
    if (!text) return std::nullopt;
    if (auto value = parse_enum<E>(*text)) return value;
    fail(key, fmt::format("expected one of {}, got '{}'", choices, *text));
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
