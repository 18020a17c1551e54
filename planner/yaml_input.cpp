#include "planner/yaml_input.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <fstream>
#include <system_error>
#include <variant>

namespace mstplan {
namespace {

// Levenshtein distance, for "did you mean" on unknown fields.
std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// Values are quoted in messages; keep them short and printable.
std::string printable(std::string_view text) {
  std::string out;
  for (char c : text.substr(0, 60)) {
    const auto u = static_cast<unsigned char>(c);
    out += (u < 0x20 || u == 0x7f) ? '?' : c;
  }
  if (text.size() > 60) out += "...";
  return out;
}

}  // namespace

Expected<std::string> read_text_file(const std::filesystem::path& path, std::int64_t max_bytes) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(status)) {
    return make_error(ErrorKind::not_found, "{}: no such file", path.string());
  }
  if (std::filesystem::is_directory(status)) {
    return make_error(ErrorKind::io, "{}: is a directory, expected a file", path.string());
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return make_error(ErrorKind::io, "{}: cannot open for reading: {}", path.string(), std::strerror(errno));
  }
  std::string text;
  char buffer[1 << 16];
  while (in.read(buffer, sizeof buffer) || in.gcount() > 0) {
    const std::size_t start = text.size();
    text.append(buffer, static_cast<std::size_t>(in.gcount()));
    // Checked per chunk, so an endless binary stream (/dev/urandom) stops at its first NUL.
    if (const auto nul = text.find('\0', start); nul != std::string::npos) {
      return make_error(ErrorKind::parse, "{}: binary data (NUL byte at offset {}), expected a text file",
                        path.string(), nul);
    }
    if (static_cast<std::int64_t>(text.size()) > max_bytes) {
      return make_error(ErrorKind::parse, "{}: larger than {} bytes; not a spec file", path.string(), max_bytes);
    }
  }
  if (in.bad()) return make_error(ErrorKind::io, "{}: read failed", path.string());
  return text;
}

std::string yaml_scalar(const std::string& text) {
  YAML::Emitter emitter;
  emitter << text;
  return emitter.c_str();
}

std::string yaml_location(const std::string& origin, const YAML::Mark& mark) {
  if (mark.is_null()) return origin;
  return fmt::format("{}:{}:{}", origin, mark.line + 1, mark.column + 1);
}

Expected<YAML::Node> load_yaml(const std::string& text, const std::string& origin, std::string_view what) {
  YAML::Node node;
  try {
    node = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    return make_error(ErrorKind::parse, "{}: malformed YAML: {}", yaml_location(origin, e.mark), e.msg);
  }
  if (!node.IsDefined() || node.IsNull()) {
    return make_error(ErrorKind::parse, "{}: empty document, expected a {} (a YAML mapping)", origin, what);
  }
  if (!node.IsMap()) {
    return make_error(ErrorKind::parse, "{}: expected a {} (a YAML mapping of fields), got {}",
                      yaml_location(origin, node.Mark()), what,
                      node.IsScalar() ? fmt::format("the text '{}'", printable(node.Scalar())) : "a list");
  }
  return node;
}

FieldReader FieldReader::root(const YAML::Node& node, std::string origin, std::string_view what) {
  auto state = std::make_shared<State>();
  state->origin = std::move(origin);
  return FieldReader(std::move(state), node, "", std::string(what));
}

FieldReader::FieldReader(std::shared_ptr<State> state, const YAML::Node& node, std::string prefix, std::string what)
    : state_(std::move(state)), mark_(node.Mark()), prefix_(std::move(prefix)), what_(std::move(what)) {
  if (!node.IsMap()) {
    fail_at(node.Mark(), fmt::format("{}: expected a mapping of fields", prefix_.empty() ? what_ : prefix_));
    return;
  }
  for (const auto& entry : node) {
    if (!entry.first.IsScalar()) {
      fail_at(entry.first.Mark(), fmt::format("{}: field names must be plain text", what_));
      return;
    }
    const std::string key = entry.first.Scalar();
    const bool duplicate =
        std::any_of(fields_.begin(), fields_.end(), [&](const Field& f) { return f.key == key; });
    if (duplicate) {
      fail_at(entry.first.Mark(), fmt::format("field '{}' appears twice", prefix_ + key));
      return;
    }
    fields_.push_back(Field{key, entry.first.Mark(), entry.second, false});
  }
}

std::string FieldReader::describe(std::string_view key) const { return prefix_ + std::string(key); }

void FieldReader::fail_at(const YAML::Mark& mark, std::string message, ErrorKind kind) {
  if (state_->error) return;
  state_->error = Error{kind, fmt::format("{}: {}", yaml_location(state_->origin, mark), message)};
}

void FieldReader::fail(std::string_view key, std::string_view message) {
  auto it = std::find_if(fields_.begin(), fields_.end(), [&](const Field& f) { return f.key == key; });
  const YAML::Mark mark = it != fields_.end() ? it->value.Mark() : mark_;
  fail_at(mark, fmt::format("field '{}': {}", describe(key), message));
}

bool FieldReader::has(std::string_view key) const {
  return std::any_of(fields_.begin(), fields_.end(),
                     [&](const Field& f) { return f.key == key && !f.value.IsNull(); });
}

FieldReader::Field* FieldReader::lookup(std::string_view key, bool required, std::string_view expected) {
  if (std::find(asked_.begin(), asked_.end(), key) == asked_.end()) asked_.emplace_back(key);
  if (!ok()) return nullptr;
  auto it = std::find_if(fields_.begin(), fields_.end(), [&](const Field& f) { return f.key == key; });
  if (it != fields_.end()) it->read = true;
  if (it == fields_.end() || it->value.IsNull()) {
    if (required) {
      const YAML::Mark mark = it != fields_.end() ? it->value.Mark() : mark_;
      fail_at(mark, fmt::format("{} field '{}' ({}) in {}", it == fields_.end() ? "missing" : "null",
                                describe(key), expected, what_));
    }
    return nullptr;
  }
  return &*it;
}

std::optional<std::string> FieldReader::scalar(Field& field, std::string_view key, std::string_view expected) {
  if (!field.value.IsScalar()) {
    fail(key, fmt::format("expected {}, got a {}", expected, field.value.IsMap() ? "mapping" : "list"));
    return std::nullopt;
  }
  return field.value.Scalar();
}

namespace {

std::string int_expectation(IntRange range) {
  if (range.max != INT64_MAX) return fmt::format("an integer from {} to {}", range.min, range.max);
  if (range.min == 1) return "a positive integer";
  if (range.min == 0) return "a non-negative integer";
  return fmt::format("an integer of at least {}", range.min);
}

// Parses one integer scalar; returns an explanation on failure.
std::variant<std::int64_t, std::string> parse_int(const std::string& text, IntRange range, const std::string& expected) {
  std::int64_t value = 0;
  const char* first = text.data();
  const char* last = first + text.size();
  auto [end, ec] = std::from_chars(first, last, value);
  if (ec == std::errc::result_out_of_range) {
    return fmt::format("expected {}, got '{}', which is out of the 64-bit range", expected, printable(text));
  }
  if (ec != std::errc() || end != last) return fmt::format("expected {}, got '{}'", expected, printable(text));
  if (value < range.min || value > range.max) return fmt::format("expected {}, got {}", expected, value);
  return value;
}

}  // namespace

std::optional<std::int64_t> FieldReader::optional_int(std::string_view key, IntRange range, std::string_view word) {
  std::string expected = int_expectation(range);
  if (!word.empty()) expected += fmt::format(" or '{}'", word);
  Field* field = lookup(key, false, expected);
  if (!field) return std::nullopt;
  auto text = scalar(*field, key, expected);
  if (!text) return std::nullopt;
  if (!word.empty() && *text == word) return std::nullopt;
  auto parsed = parse_int(*text, range, expected);
  if (auto* message = std::get_if<std::string>(&parsed)) {
    fail(key, *message);
    return std::nullopt;
  }
  return std::get<std::int64_t>(parsed);
}

std::optional<std::vector<std::int64_t>> FieldReader::optional_int_list(std::string_view key, IntRange range,
                                                                        std::string_view word) {
  const std::string expected = fmt::format("'{}' or a list of {}s", word, int_expectation(range).substr(3));
  Field* field = lookup(key, false, expected);
  if (!field) return std::nullopt;
  if (field->value.IsScalar() && field->value.Scalar() == word) return std::nullopt;
  if (!field->value.IsSequence()) {
    fail(key, fmt::format("expected {}, like [0, 1, 2]", expected));
    return std::nullopt;
  }
  std::vector<std::int64_t> out;
  for (const auto& item : field->value) {
    auto parsed = item.IsScalar() ? parse_int(item.Scalar(), range, int_expectation(range))
                                  : std::variant<std::int64_t, std::string>(std::string("expected integer items"));
    if (auto* message = std::get_if<std::string>(&parsed)) {
      fail_at(item.Mark(), fmt::format("field '{}': {}", describe(key), *message));
      return std::nullopt;
    }
    out.push_back(std::get<std::int64_t>(parsed));
  }
  return out;
}

std::int64_t FieldReader::required_int(std::string_view key, IntRange range) {
  if (ok()) lookup(key, true, range.min == 1 ? "a positive integer" : "an integer");
  if (!ok()) return range.min;
  return optional_int(key, range).value_or(range.min);
}

std::optional<double> FieldReader::optional_number(std::string_view key, NumberRange range) {
  const std::string expected = range.min_exclusive && range.min == 0.0 ? "a positive number"
                               : range.min == 0.0                      ? "a non-negative number"
                                                                       : fmt::format("a number above {}", range.min);
  Field* field = lookup(key, false, expected);
  if (!field) return std::nullopt;
  auto text = scalar(*field, key, expected);
  if (!text) return std::nullopt;
  double value = 0.0;
  const char* first = text->data();
  const char* last = first + text->size();
  if (first != last && *first == '+') ++first;
  auto [end, ec] = std::from_chars(first, last, value);
  if (ec != std::errc() || end != last || !std::isfinite(value)) {
    fail(key, fmt::format("expected {}, got '{}'", expected, printable(*text)));
    return std::nullopt;
  }
  if (value < range.min || (range.min_exclusive && value == range.min)) {
    fail(key, fmt::format("expected {}, got {}", expected, printable(*text)));
    return std::nullopt;
  }
  return value;
}

double FieldReader::required_number(std::string_view key, NumberRange range) {
  if (ok()) lookup(key, true, "a number");
  if (!ok()) return 1.0;
  return optional_number(key, range).value_or(1.0);
}

std::optional<bool> FieldReader::optional_bool(std::string_view key) {
  Field* field = lookup(key, false, "true or false");
  if (!field) return std::nullopt;
  auto text = scalar(*field, key, "true or false");
  if (!text) return std::nullopt;
  if (*text == "true" || *text == "True") return true;
  if (*text == "false" || *text == "False") return false;
  fail(key, fmt::format("expected true or false, got '{}'", printable(*text)));
  return std::nullopt;
}

bool FieldReader::required_bool(std::string_view key) {
  if (ok()) lookup(key, true, "true or false");
  if (!ok()) return false;
  return optional_bool(key).value_or(false);
}

std::optional<std::string> FieldReader::optional_string(std::string_view key) {
  Field* field = lookup(key, false, "text");
  if (!field) return std::nullopt;
  auto text = scalar(*field, key, "text");
  if (text && text->empty()) {
    fail(key, "expected non-empty text");
    return std::nullopt;
  }
  return text;
}

std::string FieldReader::required_string(std::string_view key) {
  if (ok()) lookup(key, true, "text");
  if (!ok()) return {};
  return optional_string(key).value_or("");
}

std::optional<std::string> FieldReader::optional_scalar(std::string_view key) {
  Field* field = lookup(key, false, "a value");
  if (!field) return std::nullopt;
  return scalar(*field, key, "a single value");
}

std::vector<std::string> FieldReader::optional_string_list(std::string_view key) {
  Field* field = lookup(key, false, "a list of text");
  if (!field) return {};
  if (!field->value.IsSequence()) {
    fail(key, "expected a list of text, like [a, b]");
    return {};
  }
  std::vector<std::string> out;
  for (const auto& item : field->value) {
    if (!item.IsScalar() || item.Scalar().empty()) {
      fail_at(item.Mark(), fmt::format("field '{}': expected non-empty text items", describe(key)));
      return {};
    }
    out.push_back(item.Scalar());
  }
  return out;
}

std::optional<std::string> FieldReader::enum_text(std::string_view key, bool required, std::string_view choices) {
  const std::string expected = fmt::format("one of {}", choices);
  if (required && ok()) lookup(key, true, expected);
  Field* field = lookup(key, false, expected);
  if (!field) return std::nullopt;
  return scalar(*field, key, expected);
}

std::optional<FieldReader> FieldReader::optional_map(std::string_view key) {
  Field* field = lookup(key, false, "a mapping");
  if (!field) return std::nullopt;
  if (!field->value.IsMap()) {
    fail(key, field->value.IsScalar() ? fmt::format("expected a mapping of fields, got '{}'", printable(field->value.Scalar()))
                                      : std::string("expected a mapping of fields, got a list"));
    return std::nullopt;
  }
  return FieldReader(state_, field->value, describe(key) + ".", what_);
}

std::optional<Error> FieldReader::finish() {
  if (!ok()) return state_->error;
  for (const Field& field : fields_) {
    if (field.read) continue;
    // Every field the schema knows was asked for by name before finish(): suggest the closest
    // (at most two edits away, or a known name inside the unknown one: "batchsize" -> "batch").
    std::string hint;
    std::size_t best = 3;
    for (const std::string& known : asked_) {
      const bool contains = known.size() >= 4 && field.key.find(known) != std::string::npos;
      const std::size_t distance = contains ? 1 : edit_distance(field.key, known);
      if (distance < best) {
        best = distance;
        hint = fmt::format("; did you mean '{}'?", describe(known));
      }
    }
    if (hint.empty() && !asked_.empty()) {
      std::string names;
      for (const std::string& known : asked_) names += (names.empty() ? "" : ", ") + known;
      hint = fmt::format(" (known fields: {})", names);
    }
    fail_at(field.key_mark, fmt::format("unknown field '{}' in {}{}", describe(field.key), what_, hint));
    break;
  }
  return state_->error;
}

}  // namespace mstplan
