#pragma once
// Element types of tensors and their sizes.
#include <array>
#include <cstdint>
#include <string_view>
#include <utility>

#include "planner/enum_names.h"

namespace mstplan {

enum class DType { bf16, fp16, fp32, int8, int32, int64 };

template <>
struct EnumNames<DType> {
  static constexpr std::array<std::pair<DType, std::string_view>, 6> table{{{DType::bf16, "bf16"},
                                                                           {DType::fp16, "fp16"},
                                                                           {DType::fp32, "fp32"},
                                                                           {DType::int8, "int8"},
                                                                           {DType::int32, "int32"},
                                                                           {DType::int64, "int64"}}};
};

/// Bytes per element.
[[nodiscard]] constexpr std::int64_t dtype_bytes(DType dtype) {
  switch (dtype) {
    case DType::bf16:
    case DType::fp16: return 2;
    case DType::fp32: return 4;
    case DType::int8: return 1;
    case DType::int32: return 4;
    case DType::int64: return 8;
  }
  return 0;
}

}  // namespace mstplan
