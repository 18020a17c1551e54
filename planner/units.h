#pragma once
// Byte arithmetic and human-readable units.
//
// Byte quantities are std::int64_t named *_bytes. Products of user-supplied sizes go through
// checked_mul / checked_add so that a spec whose byte counts would overflow 64 bits is refused
// instead of wrapping. Capacities use binary units: 1 GiB = 2^30 bytes.
//
//   auto row_bytes = checked_mul(vocab_size, dtype_bytes(DType::fp32));   // std::optional
//   fmt::print("{}\n", format_bytes(85899345920));                        // "80.00 GiB"
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

namespace mstplan {

inline constexpr std::int64_t kMiB = std::int64_t{1} << 20;
inline constexpr std::int64_t kGiB = std::int64_t{1} << 30;

/// a * b, or nullopt when the product leaves int64 (or either factor is negative).
[[nodiscard]] std::optional<std::int64_t> checked_mul(std::int64_t a, std::int64_t b);
/// a + b, or nullopt when the sum leaves int64 (or either term is negative).
[[nodiscard]] std::optional<std::int64_t> checked_add(std::int64_t a, std::int64_t b);

/// Why a text is not a count.
enum class CountError { not_an_integer, out_of_range };

/// A whole number written in decimal digits ("4096"); with `size_suffixes`, also with a K
/// (x 1024) or M (x 1048576) suffix ("128K"). Shared by the YAML readers and the flags so that
/// both accept the same spellings.
[[nodiscard]] std::variant<std::int64_t, CountError> parse_count(std::string_view text, bool size_suffixes);

/// "512 B", "3.50 KiB", "14.96 GiB", "1.20 TiB": two decimals above bytes.
[[nodiscard]] std::string format_bytes(std::int64_t bytes);
/// GiB with two decimals and no unit, for tables: "14.96".
[[nodiscard]] std::string format_gib(std::int64_t bytes);
/// 8030261248 -> "8,030,261,248".
[[nodiscard]] std::string format_thousands(std::int64_t value);
/// 8030261248 -> "8.03 B", 1235814400 -> "1.24 B", 4194304 -> "4.19 M".
[[nodiscard]] std::string format_count(std::int64_t value);

}  // namespace mstplan
