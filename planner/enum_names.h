#pragma once
// One name table per enum, used by YAML, JSON and the command line alike.
//
//   enum class DType { bf16, fp32 };
//   template <> struct EnumNames<DType> {
//     static constexpr std::array<std::pair<DType, std::string_view>, 2> table{
//         {{DType::bf16, "bf16"}, {DType::fp32, "fp32"}}};
//   };
//   to_string(DType::bf16) == "bf16";  parse_enum<DType>("fp32") == DType::fp32;
#include <array>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "planner/error.h"

namespace mstplan {

template <typename E>
struct EnumNames;  // specialise with a constexpr `table` of (value, name) pairs

template <typename E>
[[nodiscard]] constexpr std::string_view to_string(E value) {
  for (const auto& [v, name] : EnumNames<E>::table) {
    if (v == value) return name;
  }
  MSTPLAN_CHECK(false, "enum value {} has no name", static_cast<int>(value));
  return {};
}

template <typename E>
[[nodiscard]] constexpr std::optional<E> parse_enum(std::string_view text) {
  for (const auto& [v, name] : EnumNames<E>::table) {
    if (name == text) return v;
  }
  return std::nullopt;
}

/// "bf16, fp16, fp32": the accepted names, for messages and --help.
template <typename E>
[[nodiscard]] std::string enum_choices(std::string_view separator = ", ") {
  std::string out;
  for (const auto& entry : EnumNames<E>::table) {
    if (!out.empty()) out += separator;
    out += entry.second;
  }
  return out;
}

}  // namespace mstplan
