#pragma once
// Byte-level lifetime analysis of a step program (program.h).
//
// A tensor is allocated by the first op that writes it and freed after the last op that reads or
// writes it (the instance of the iteration, for arrays of chunk loops). The memory "during" an op
// is what is live before it plus what it allocates: its outputs and workspaces. That is the
// figure that meets the device's capacity, so peaks and timelines report it.
//
// Loops are not unrolled: iterations 0, 1, n-2 and n-1 are simulated and the ones between are
// applied as one linear step (every middle iteration allocates and frees the same instances),
// which is exact because between its ends the memory of an iteration is linear in its index.
// `timeline()` simulates every iteration, for plots and for tests against an independent oracle.
//
//   Analysis a = analyze(program, AllocatorModel::for_profile(Profile::native));
//   fmt::print("peak {} at {}\n", format_bytes(a.peak.allocated_bytes), op_name(program, a.peak_op, a.peak_iteration));
#include <array>
#include <cstdint>
#include <vector>

#include "planner/program.h"

namespace mstplan {

/// How an allocator turns requested bytes into allocated bytes: rounded up to a multiple of
/// `granularity_bytes`, and at least that much for any non-empty tensor.
struct AllocatorModel {
  std::int64_t granularity_bytes = 256;

  /// native: our runtime's pool hands out 256-byte aligned blocks (what cuBLAS and vectorised
  /// kernels want). pytorch: the caching allocator rounds every request up to 512 bytes
  /// (kMinBlockSize / round_size in c10/cuda/CUDACachingAllocator.cpp).
  static AllocatorModel for_profile(Profile profile);
  [[nodiscard]] std::int64_t allocated(std::int64_t bytes) const {
    return bytes <= 0 ? 0 : (bytes + granularity_bytes - 1) / granularity_bytes * granularity_bytes;
  }
};

/// Memory at one moment: device bytes requested (live), allocated (rounded), host bytes, and
/// the device's requested bytes by kind.
struct MemoryState {
  std::int64_t live_bytes = 0;
  std::int64_t allocated_bytes = 0;
  std::int64_t host_bytes = 0;
  std::array<std::int64_t, kTensorKinds> by_kind{};

  MemoryState& operator+=(const MemoryState& other);
  MemoryState& operator-=(const MemoryState& other);
};

struct Analysis {
  MemoryState peak;                 ///< during the op where device allocated bytes peak
  OpId peak_op = 0;
  std::int64_t peak_iteration = 0;  ///< the loop iteration of peak_op (0 outside loops)
  std::int64_t peak_live_bytes = 0; ///< the largest requested (unrounded) total, wherever it is
  std::int64_t host_peak_bytes = 0;
  std::array<std::int64_t, kPhases> phase_peak_bytes{};  ///< allocated, per phase
  std::vector<std::int64_t> op_peak_bytes;  ///< allocated during each op, largest over its iterations
};

[[nodiscard]] Analysis analyze(const Program& program, const AllocatorModel& allocator);

/// One executed op: the state during it.
struct TimelinePoint {
  OpId op = 0;
  std::int64_t iteration = 0;
  MemoryState during;
};

/// Every executed op of the step in order, with the memory during it.
[[nodiscard]] std::vector<TimelinePoint> timeline(const Program& program, const AllocatorModel& allocator);

}  // namespace mstplan
