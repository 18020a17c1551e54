#include "planner/placement.h"

#include <algorithm>
#include <iterator>
#include <map>

#include "planner/error.h"

namespace mstplan {

Placement place(const Program& p, const AllocatorModel& allocator) {
  Placement pl;
  pl.flat = expand(p);
  const std::size_t n = pl.flat.instances.size();
  pl.offset.assign(n, -1);
  pl.size.assign(n, 0);
  Lifetimes lt = lifetimes(p);
  MSTPLAN_CHECK(lt.instances.size() == n && lt.op.size() == pl.flat.ops.size(), "lifetimes disagree with expand()");
  pl.first_op = std::move(lt.first_op);
  pl.last_op = std::move(lt.last_op);
  // Instances allocated and freed at each flat op.
  std::vector<std::vector<std::uint32_t>> allocs(pl.flat.ops.size()), frees(pl.flat.ops.size());
  for (std::uint32_t inst = 0; inst < n; ++inst) {
    const Tensor& t = p.tensors[pl.flat.instances[inst].tensor];
    if (pl.first_op[inst] < 0 || t.device == Device::host) continue;
    pl.size[inst] = allocator.allocated(t.bytes);
    allocs[static_cast<std::size_t>(pl.first_op[inst])].push_back(inst);
    frees[static_cast<std::size_t>(pl.last_op[inst])].push_back(inst);
  }
  // Free blocks by offset; the arena grows at its end.
  std::map<std::int64_t, std::int64_t> free_blocks;  // offset -> size
  std::int64_t end = 0;
  std::int64_t live = 0;
  for (std::size_t i = 0; i < pl.flat.ops.size(); ++i) {
    for (std::uint32_t inst : allocs[i]) {
      const std::int64_t size = pl.size[inst];
      if (size == 0) {
        pl.offset[inst] = end;
        continue;
      }
      auto best = free_blocks.end();
      for (auto it = free_blocks.begin(); it != free_blocks.end(); ++it) {
        if (it->second >= size && (best == free_blocks.end() || it->second < best->second)) best = it;
      }
      if (best != free_blocks.end()) {
        pl.offset[inst] = best->first;
        const std::int64_t rest = best->second - size;
        const std::int64_t rest_offset = best->first + size;
        free_blocks.erase(best);
        if (rest > 0) free_blocks.emplace(rest_offset, rest);
      } else {
        // Extend the arena, reusing a free block that touches its end.
        std::int64_t offset = end;
        if (!free_blocks.empty()) {
          auto last = std::prev(free_blocks.end());
          if (last->first + last->second == end) {
            offset = last->first;
            free_blocks.erase(last);
          }
        }
        pl.offset[inst] = offset;
        end = offset + size;
      }
      live += size;
    }
    pl.high_water_bytes = std::max(pl.high_water_bytes, end);
    pl.live_peak_bytes = std::max(pl.live_peak_bytes, live);
    for (std::uint32_t inst : frees[i]) {
      const std::int64_t size = pl.size[inst];
      if (size == 0) continue;
      live -= size;
      std::int64_t offset = pl.offset[inst];
      std::int64_t length = size;
      // Merge with the neighbours.
      auto next = free_blocks.lower_bound(offset);
      if (next != free_blocks.end() && next->first == offset + length) {
        length += next->second;
        next = free_blocks.erase(next);
      }
      if (next != free_blocks.begin()) {
        auto prev = std::prev(next);
        if (prev->first + prev->second == offset) {
          offset = prev->first;
          length += prev->second;
          free_blocks.erase(prev);
        }
      }
      free_blocks.emplace(offset, length);
    }
  }
  return pl;
}

}  // namespace mstplan
