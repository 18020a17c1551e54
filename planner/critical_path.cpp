#include "planner/critical_path.h"

#include <cstdlib>

#include "planner/error.h"

namespace mstplan {

void StreamSchedule::waits_for_a_later_task(std::uint32_t before) const {
  MSTPLAN_CHECK(false, "task {} waits for task {}, which is not an earlier one", finish_.size(), before);
  std::abort();
}

void StreamSchedule::clear() {
  finish_.clear();
  stream_end_.fill(0.0);
}

}  // namespace mstplan
