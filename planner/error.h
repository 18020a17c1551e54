#pragma once
// Errors as values, invariants as aborts.
//
// Every recoverable failure (bad input, a missing file, an unknown name) is an `Error` whose
// message is one line naming the file, the field and the offending value. Functions that can
// fail return `Expected<T>`; callers test it like a pointer:
//
//   Expected<ModelSpec> spec = load_model_file("models/llama3-8b.yaml");
//   if (!spec) return spec.error();           // propagate
//   use(*spec);
//
// Conditions only a bug can break use MSTPLAN_CHECK, which prints file and line and aborts.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <variant>

#include <fmt/format.h>

namespace mstplan {

/// What kind of failure; the command line maps kinds to exit codes (see cli.h).
enum class ErrorKind {
  usage,        ///< the command line itself is wrong (unknown flag, missing argument)
  not_found,    ///< a named model, GPU or file does not exist
  io,           ///< a file exists but cannot be read or written
  parse,        ///< malformed YAML or JSON, empty file, binary data
  invalid,      ///< well-formed but wrong: missing/unknown field, bad value, inconsistent sizes
  unsupported,  ///< understood but not supported (an unknown architecture, say)
};

struct Error {
  ErrorKind kind = ErrorKind::invalid;
  std::string message;
};

template <typename... Args>
[[nodiscard]] Error make_error(ErrorKind kind, fmt::format_string<Args...> format, Args&&... args) {
  return Error{kind, fmt::format(format, std::forward<Args>(args)...)};
}

/// Aborts with file and line when an invariant is broken. Not for user input: use Error.
#define MSTPLAN_CHECK(cond, ...)                                                              \
  do {                                                                                        \
    if (!(cond)) [[unlikely]] {                                                               \
      std::fprintf(stderr, "%s:%d: invariant failed: %s: %s\n", __FILE__, __LINE__, #cond,    \
                   ::fmt::format(__VA_ARGS__).c_str());                                       \
      std::abort();                                                                           \
    }                                                                                         \
  } while (false)

/// A value or an Error. Accessing the value of an error (or the error of a value) aborts.
template <typename T>
class [[nodiscard]] Expected {
 public:
  Expected(T value) : state_(std::in_place_index<0>, std::move(value)) {}  // NOLINT: implicit by design
  Expected(Error error) : state_(std::in_place_index<1>, std::move(error)) {}  // NOLINT

  [[nodiscard]] bool has_value() const { return state_.index() == 0; }
  explicit operator bool() const { return has_value(); }

  T& value() & { return checked_value(); }
  const T& value() const& { return const_cast<Expected*>(this)->checked_value(); }
  T&& value() && { return std::move(checked_value()); }
  T& operator*() & { return checked_value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(checked_value()); }
  T* operator->() { return &checked_value(); }
  const T* operator->() const { return &value(); }

  [[nodiscard]] const Error& error() const {
    MSTPLAN_CHECK(!has_value(), "error() called on a value");
    return std::get<1>(state_);
  }

 private:
  T& checked_value() {
    MSTPLAN_CHECK(has_value(), "value() called on an error: {}", std::get<1>(state_).message);
    return std::get<0>(state_);
  }
  std::variant<T, Error> state_;
};

}  // namespace mstplan
