#include "planner/yaml_input.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <fstream>
#include <system_error>

#include "planner/units.h"

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

// Offset of the first byte that breaks UTF-8 (overlong forms and surrogates included), if any.
std::optional<std::size_t> invalid_utf8_at(std::string_view text) {
  std::size_t i = 0;
  while (i < text.size()) {
    const auto c = static_cast<unsigned char>(text[i]);
    std::size_t length = 0;
    std::uint32_t code = 0;
    if (c < 0x80) {
      ++i;
      continue;
    }
    if ((c & 0xE0) == 0xC0) {
      length = 2;
      code = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      length = 3;
      code = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      length = 4;
      code = c & 0x07;
    } else {
      return i;
    }
    if (i + length > text.size()) return i;
    for (std::size_t k = 1; k < length; ++k) {
      const auto next = static_cast<unsigned char>(text[i + k]);
      if ((next & 0xC0) != 0x80) return i;
      code = (code << 6) | (next & 0x3F);
    }
    const std::uint32_t smallest[] = {0, 0, 0x80, 0x800, 0x10000};
    if (code < smallest[length] || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return i;
    i += length;
  }
  return std::nullopt;
}

// The 1-based line where a second YAML document begins, if the text holds more than one.
// yaml-cpp's LoadAll cannot be used to count them: it loops without end on some malformed input
// (a lone ","). The YAML spec makes this a line-level question: "---" or "..." at column 0,
// followed by white space or the end of the line, are document markers, never content.
std::optional<std::int64_t> second_document_line(std::string_view text) {
  bool content = false;  // the current document has content
  bool started = false;  // a "---" opened the current document
  bool ended = false;    // a "..." closed it
  std::int64_t line = 0;
  for (std::size_t begin = 0; begin <= text.size();) {
    std::size_t end = text.find('\n', begin);
    if (end == std::string_view::npos) end = text.size();
    std::string_view row = text.substr(begin, end - begin);
    if (!row.empty() && row.back() == '\r') row.remove_suffix(1);
    ++line;
    auto marker = [&](std::string_view m) {
      return row.starts_with(m) && (row.size() == 3 || row[3] == ' ' || row[3] == '\t');
    };
    auto has_text = [](std::string_view rest) {
      const auto first = rest.find_first_not_of(" \t");
      return first != std::string_view::npos && rest[first] != '#';
    };
    if (marker("---")) {
      if (content || started || ended) return line;
      started = true;
      content = has_text(row.substr(3));
    } else if (marker("...")) {
      ended = true;
    } else if (has_text(row) && !row.starts_with('%')) {
      if (ended) return line;
      content = true;
    }
    begin = end + 1;
  }
  return std::nullopt;
}

std::string int_expectation(IntRange range) {
  std::string out;
  if (range.max != INT64_MAX) {
    out = fmt::format("an integer from {} to {}", range.min, range.max);
  } else if (range.min == 1) {
    out = "a positive integer";
  } else if (range.min == 0) {
    out = "a non-negative integer";
  } else {
    out = fmt::format("an integer of at least {}", range.min);
  }
  if (range.size_suffixes) out += " (K = 1024 and M = 1048576 suffixes allowed)";
  return out;
}

}  // namespace

// Values are quoted in messages; keep them short and printable (input is valid UTF-8).
std::string printable(std::string_view text) {
  std::string out;
  for (char c : text.substr(0, 60)) {
    const auto u = static_cast<unsigned char>(c);
    out += (u < 0x20 || u == 0x7f) ? '?' : c;
  }
  if (text.size() > 60) out += "...";
  return out;
}


Expected<std::string> read_text_file(const std::filesystem::path& path, std::int64_t max_bytes) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (ec && ec != std::errc::no_such_file_or_directory && ec != std::errc::not_a_directory) {
    return make_error(ErrorKind::io, "{}: cannot read: {}", path.string(), ec.message());
  }
  if (!std::filesystem::exists(status)) return make_error(ErrorKind::not_found, "{}: no such file", path.string());
  if (std::filesystem::is_directory(status)) {
    return make_error(ErrorKind::io, "{}: is a directory, expected a file", path.string());
  }
  if (!std::filesystem::is_regular_file(status)) {
    return make_error(ErrorKind::io, "{}: not a regular file (a device, FIFO or socket), expected a file", path.string());
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
    if (const auto nul = text.find('\0', start); nul != std::string::npos) {
      return make_error(ErrorKind::parse, "{}: binary data (NUL byte at offset {}), expected a text file",
                        path.string(), nul);
    }
    if (static_cast<std::int64_t>(text.size()) > max_bytes) {
      return make_error(ErrorKind::parse, "{}: larger than {} bytes; not a spec file", path.string(), max_bytes);
    }
  }
  if (in.bad()) return make_error(ErrorKind::io, "{}: read failed", path.string());
  if (auto bad = invalid_utf8_at(text)) {
    return make_error(ErrorKind::parse, "{}: not UTF-8 text (byte 0x{:02x} at offset {}), expected a text file",
                      path.string(), static_cast<unsigned char>(text[*bad]), *bad);
  }
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
  if (auto bad = invalid_utf8_at(text)) {
    return make_error(ErrorKind::parse, "{}: not UTF-8 text (byte 0x{:02x} at offset {})", origin,
                      static_cast<unsigned char>(text[*bad]), *bad);
  }
  if (auto second = second_document_line(text)) {
    return make_error(ErrorKind::parse, "{}:{}:1: a second YAML document starts here, expected one {}", origin,
                      *second, what);
  }
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
    if (key == "<<") {
      fail_at(entry.first.Mark(), "YAML merge keys (<<) are not supported; write the fields out");
      return;
    }
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

void FieldReader::fail_field(const Field& field, std::string_view message) {
  fail_at(field.value.Mark(), fmt::format("field '{}': {}", describe(field.key), message));
}

void FieldReader::fail(std::string_view key, std::string_view message) {
  auto it = std::find_if(fields_.begin(), fields_.end(), [&](const Field& f) { return f.key == key; });
  fail_at(it != fields_.end() ? it->value.Mark() : mark_, fmt::format("field '{}': {}", describe(key), message));
}

FieldReader::Field* FieldReader::find(std::string_view key, std::string_view required_expectation) {
  if (std::find(asked_.begin(), asked_.end(), key) == asked_.end()) asked_.emplace_back(key);
  if (!ok()) return nullptr;
  auto it = std::find_if(fields_.begin(), fields_.end(), [&](const Field& f) { return f.key == key; });
  if (it != fields_.end()) it->read = true;
  if (it != fields_.end() && !it->value.IsNull()) return &*it;
  if (!required_expectation.empty()) {
    fail_at(it != fields_.end() ? it->value.Mark() : mark_,
            fmt::format("{} field '{}' ({}) in {}", it == fields_.end() ? "missing" : "null", describe(key),
                        required_expectation, what_));
  }
  return nullptr;
}

std::optional<std::string> FieldReader::any_scalar(Field& field, std::string_view expected) {
  if (!field.value.IsScalar()) {
    fail_field(field, fmt::format("expected {}, got a {}", expected, field.value.IsMap() ? "mapping" : "list"));
    return std::nullopt;
  }
  return field.value.Scalar();
}

bool FieldReader::is_plain(const Field& field, const std::string& text, std::string_view expected) {
  // yaml-cpp tags plain scalars "?"; quoted ones "!", explicitly tagged ones with their tag.
  if (field.value.Tag() == "?") return true;
  fail_field(field, fmt::format("expected {}, got the quoted or tagged text '{}'", expected, printable(text)));
  return false;
}

std::optional<std::string> FieldReader::plain_scalar(Field& field, std::string_view expected) {
  auto text = any_scalar(field, expected);
  if (text && !is_plain(field, *text, expected)) return std::nullopt;
  return text;
}

std::optional<std::int64_t> FieldReader::read_int(Field& field, IntRange range, std::string_view word) {
  std::string expected = int_expectation(range);
  if (!word.empty()) expected += fmt::format(" or '{}'", word);
  auto text = any_scalar(field, expected);
  if (!text) return std::nullopt;
  if (!word.empty() && *text == word) return std::nullopt;
  if (!is_plain(field, *text, expected)) return std::nullopt;
  const auto parsed = parse_count(*text, range.size_suffixes);
  if (std::holds_alternative<CountError>(parsed)) {
    fail_field(field, std::get<CountError>(parsed) == CountError::out_of_range
                          ? fmt::format("expected {}, got '{}', which is out of the 64-bit range", expected, printable(*text))
                          : fmt::format("expected {}, got '{}'", expected, printable(*text)));
    return std::nullopt;
  }
  const std::int64_t value = std::get<std::int64_t>(parsed);
  if (value < range.min || value > range.max) {
    fail_field(field, fmt::format("expected {}, got {}", expected, printable(*text)));
    return std::nullopt;
  }
  return value;
}

std::optional<double> FieldReader::read_number(Field& field) {
  constexpr std::string_view expected = "a positive number";
  auto text = plain_scalar(field, expected);
  if (!text) return std::nullopt;
  double value = 0.0;
  const char* first = text->data();
  const char* last = first + text->size();
  if (first != last && *first == '+') ++first;
  auto [end, ec] = std::from_chars(first, last, value);
  if (ec != std::errc() || end != last || !std::isfinite(value) || !(value > 0.0)) {
    fail_field(field, fmt::format("expected {}, got {}", expected, printable(*text)));
    return std::nullopt;
  }
  return value;
}

std::optional<bool> FieldReader::read_bool(Field& field) {
  auto text = plain_scalar(field, "true or false");
  if (!text) return std::nullopt;
  if (*text == "true" || *text == "True") return true;
  if (*text == "false" || *text == "False") return false;
  fail_field(field, fmt::format("expected true or false, got '{}'", printable(*text)));
  return std::nullopt;
}

std::int64_t FieldReader::required_int(std::string_view key, IntRange range) {
  Field* field = find(key, int_expectation(range));
  return field ? read_int(*field, range, {}).value_or(range.min) : range.min;
}

std::optional<std::int64_t> FieldReader::optional_int(std::string_view key, IntRange range, std::string_view word) {
  Field* field = find(key);
  return field ? read_int(*field, range, word) : std::nullopt;
}

std::optional<std::vector<std::int64_t>> FieldReader::optional_int_list(std::string_view key, IntRange range,
                                                                        std::string_view word) {
  Field* field = find(key);
  if (!field) return std::nullopt;
  if (field->value.IsScalar() && field->value.Scalar() == word) return std::vector<std::int64_t>{};
  const std::string item_expectation = int_expectation(range);
  if (!field->value.IsSequence()) {
    fail_field(*field, fmt::format("expected '{}' or a list of integers ({} each), like [0, 1, 2]", word, item_expectation));
    return std::nullopt;
  }
  std::vector<std::int64_t> out;
  for (const auto& item : field->value) {
    Field element{std::string(key), field->key_mark, item, true};
    auto value = read_int(element, range, {});
    if (!value) return std::nullopt;
    out.push_back(*value);
  }
  return out;
}

double FieldReader::required_number(std::string_view key) {
  Field* field = find(key, "a positive number");
  return field ? read_number(*field).value_or(1.0) : 1.0;
}

std::optional<double> FieldReader::optional_number(std::string_view key) {
  Field* field = find(key);
  return field ? read_number(*field) : std::nullopt;
}

bool FieldReader::required_bool(std::string_view key) {
  Field* field = find(key, "true or false");
  return field ? read_bool(*field).value_or(false) : false;
}

std::optional<bool> FieldReader::optional_bool(std::string_view key) {
  Field* field = find(key);
  return field ? read_bool(*field) : std::nullopt;
}

std::optional<std::string> FieldReader::read_string(Field& field) {
  auto text = any_scalar(field, "text");
  if (text && text->empty()) {
    fail_field(field, "expected non-empty text");
    return std::nullopt;
  }
  return text;
}

std::string FieldReader::required_string(std::string_view key) {
  Field* field = find(key, "text");
  return field ? read_string(*field).value_or("") : "";
}

std::optional<std::string> FieldReader::optional_string(std::string_view key) {
  Field* field = find(key);
  return field ? read_string(*field) : std::nullopt;
}

std::vector<std::string> FieldReader::optional_string_list(std::string_view key) {
  Field* field = find(key);
  if (!field) return {};
  if (!field->value.IsSequence()) {
    fail_field(*field, "expected a list of text, like [a, b]");
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

std::optional<FieldReader> FieldReader::optional_map(std::string_view key) {
  Field* field = find(key);
  if (!field) return std::nullopt;
  if (!field->value.IsMap()) {
    fail_field(*field, field->value.IsScalar()
                           ? fmt::format("expected a mapping of fields, got '{}'", printable(field->value.Scalar()))
                           : std::string("expected a mapping of fields, got a list"));
    return std::nullopt;
  }
  return FieldReader(state_, field->value, describe(key) + ".", what_);
}

std::vector<FieldReader> FieldReader::optional_map_list(std::string_view key, std::vector<YAML::Mark>* marks) {
  Field* field = find(key);
  if (!field) return {};
  if (!field->value.IsSequence()) {
    fail_field(*field, field->value.IsScalar()
                           ? fmt::format("expected a list of mappings, got '{}'", printable(field->value.Scalar()))
                           : std::string("expected a list of mappings, got a mapping"));
    return {};
  }
  std::vector<FieldReader> out;
  std::size_t index = 0;
  for (const auto& item : field->value) {
    const std::string prefix = fmt::format("{}[{}]", describe(key), index++);
    if (!item.IsMap()) {
      fail_at(item.Mark(), fmt::format("field '{}': expected a mapping of fields", prefix));
      return {};
    }
    out.push_back(FieldReader(state_, item, prefix + ".", what_));
    if (marks) marks->push_back(item.Mark());
  }
  return out;
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
