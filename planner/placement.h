#pragma once
// Placement: offsets in one arena for every device tensor instance of a step, best fit in the
// order the step allocates. The arena's high-water mark is what a planned allocator needs; its
// excess over the live-bytes peak is fragmentation. Static tensors (alive the whole step) sit at
// the bottom.
//
//   Placement pl = place(program, AllocatorModel::for_profile(Profile::native));
//   fmt::print("arena {} for a live peak of {}\n", format_bytes(pl.high_water_bytes), ...);
#include <cstdint>
#include <vector>

#include "planner/analysis.h"
#include "planner/liveness.h"
#include "planner/program.h"

namespace mstplan {

struct Placement {
  FlatProgram flat;                       ///< the unrolled step the offsets refer to
  std::vector<std::int64_t> offset;       ///< per instance of `flat`: byte offset, -1 for host tensors
  std::vector<std::int64_t> size;         ///< per instance: allocated (rounded) bytes
  std::vector<std::int64_t> first_op;     ///< per instance: the flat op that allocates it
  std::vector<std::int64_t> last_op;      ///< per instance: the flat op after which it is freed
  std::int64_t high_water_bytes = 0;      ///< the arena's size
  std::int64_t live_peak_bytes = 0;       ///< the largest sum of allocated bytes live at once
};

/// Best-fit placement of every device tensor instance of `program`.
[[nodiscard]] Placement place(const Program& program, const AllocatorModel& allocator);

}  // namespace mstplan
