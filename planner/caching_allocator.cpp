#include "planner/caching_allocator.h"

#include <algorithm>
#include <set>
#include <optional>
#include <tuple>
#include <vector>

#include "planner/error.h"
#include "planner/liveness.h"

namespace mstplan {
namespace {

std::int64_t round_up(std::int64_t value, std::int64_t multiple) { return (value + multiple - 1) / multiple * multiple; }

// round_size(): every request is a multiple of 512 bytes, at least 512.
std::int64_t round_size(std::int64_t requested) {
  return std::max(kTorchMinBlockBytes, round_up(requested, kTorchMinBlockBytes));
}

// get_allocation_size(): the segment cudaMalloc'd for a request no cached block serves.
std::int64_t allocation_size(std::int64_t size) {
  if (size <= kTorchSmallSizeBytes) return kTorchSmallBufferBytes;
  if (size < kTorchMinLargeAllocBytes) return kTorchLargeBufferBytes;
  return round_up(size, kTorchRoundLargeBytes);
}

// A sorted vector as a set: the pools hold tens to hundreds of free blocks, where a vector's
// binary search and short moves beat a tree's node allocations.
template <typename T>
class FlatSet {
 public:
  using const_iterator = typename std::set<T>::const_iterator;
  void insert(const T& v) { items_.insert(v); }
  void erase(const T& v) {
    const std::size_t erased = items_.erase(v);
    MSTPLAN_CHECK(erased == 1, "erasing a block the pool does not hold");
  }
  void erase(const_iterator it) { items_.erase(it); }
  [[nodiscard]] const_iterator lower_bound(const T& v) const { return items_.lower_bound(v); }
  [[nodiscard]] const_iterator begin() const { return items_.begin(); }
  [[nodiscard]] const_iterator end() const { return items_.end(); }

 private:
  std::set<T> items_;
};

// A virtual address range per expandable segment: far more than any device holds.
constexpr std::int64_t kExpandableRangeBytes = std::int64_t{1} << 46;

}  // namespace

struct CachingAllocator::Impl {
  struct Block {
    std::int64_t addr = 0;
    std::int64_t size = 0;
    std::int64_t requested = 0;
    BlockId prev = kFailed, next = kFailed;
    bool small = false;
    bool allocated = false;
    bool mapped = true;  // expandable segments: false for address space with no pages behind it
    bool live = true;    // false once merged away (its id is reused)
  };
  // Free mapped blocks of a pool, smallest first, then by address (BlockComparatorSize).
  using Key = std::tuple<std::int64_t, std::int64_t, BlockId>;

  CachingAllocatorOptions options;
  std::vector<Block> blocks;
  std::vector<BlockId> unused;
  FlatSet<Key> pools[2];                                   // [small]: free mapped blocks
  FlatSet<std::pair<std::int64_t, BlockId>> unmapped[2];   // [small]: expandable address space without pages, by address
  std::int64_t next_addr = 0;

  Block& at(BlockId b) { return blocks[static_cast<std::size_t>(b)]; }
  Key key(BlockId b) { return {at(b).size, at(b).addr, b}; }
  static std::int64_t page(bool small) { return small ? kTorchSmallBufferBytes : kTorchLargeBufferBytes; }

  BlockId make(const Block& b) {
    if (!unused.empty()) {
      const BlockId id = unused.back();
      unused.pop_back();
      at(id) = b;
      return id;
    }
    blocks.push_back(b);
    return static_cast<BlockId>(blocks.size() - 1);
  }
  // A free block enters or leaves the set it belongs to (pool when mapped, unmapped otherwise).
  void index(BlockId b) {
    if (at(b).mapped) {
      pools[at(b).small ? 1 : 0].insert(key(b));
    } else {
      unmapped[at(b).small ? 1 : 0].insert({at(b).addr, b});
    }
  }
  void unindex(BlockId b) {
    if (at(b).mapped) {
      pools[at(b).small ? 1 : 0].erase(key(b));
    } else {
      unmapped[at(b).small ? 1 : 0].erase({at(b).addr, b});
    }
  }

  // Splits unindexed `b` at `size`: b keeps the first `size` bytes, the rest becomes a new free
  // block after it with the same mapping state, indexed. Returns the rest.
  BlockId split(BlockId b, std::int64_t size) {
    Block rest;
    rest.addr = at(b).addr + size;
    rest.size = at(b).size - size;
    rest.small = at(b).small;
    rest.mapped = at(b).mapped;
    rest.prev = b;
    rest.next = at(b).next;
    const BlockId r = make(rest);
    if (at(r).next != kFailed) at(at(r).next).prev = r;
    at(b).next = r;
    at(b).size = size;
    index(r);
    return r;
  }

  // try_merge_blocks(): absorbs a free neighbour with the same mapping state into unindexed `b`.
  void merge(BlockId b, BlockId other) {
    if (other == kFailed || at(other).allocated || at(other).mapped != at(b).mapped) return;
    unindex(other);
    if (at(b).prev == other) {
      at(b).addr = at(other).addr;
      at(b).prev = at(other).prev;
      if (at(b).prev != kFailed) at(at(b).prev).next = b;
    } else {
      at(b).next = at(other).next;
      if (at(b).next != kFailed) at(at(b).next).prev = b;
    }
    at(b).size += at(other).size;
    at(other).live = false;
    unused.push_back(other);
  }

  // Expandable segments: find_expandable_block(). The lowest-addressed unmapped block that, with
  // the free block before it and the free blocks after it, spans `size` bytes; a new range when
  // none does.
  BlockId expandable_candidate(bool small, std::int64_t size) {
    for (const auto& [addr, u] : unmapped[small ? 1 : 0]) {
      BlockId c = u;
      if (at(c).prev != kFailed && !at(at(c).prev).allocated) c = at(c).prev;
      std::int64_t bytes = 0;
      for (BlockId x = c; x != kFailed && bytes < size && !at(x).allocated; x = at(x).next) bytes += at(x).size;
      if (bytes >= size) return c;
    }
    Block range;
    range.addr = next_addr;
    range.size = kExpandableRangeBytes;
    range.small = small;
    range.mapped = false;
    next_addr += kExpandableRangeBytes;
    const BlockId r = make(range);
    index(r);
    return r;
  }
  // The bytes of pages that serving `size` from candidate `c` maps.
  std::int64_t pages_needed(BlockId c, std::int64_t size) {
    std::int64_t have = 0, need = 0;
    for (BlockId x = c; have < size; x = at(x).next) {
      if (at(x).mapped) {
        have += at(x).size;
      } else {
        const std::int64_t m = std::min(at(x).size, round_up(size - have, page(at(x).small)));
        need += m;
        have += m;
      }
    }
    return need;
  }
  // map_block(): pages behind the first `bytes` (rounded to pages) of unmapped `x`, merged with
  // free mapped neighbours and indexed. Returns the mapped block.
  BlockId map(BlockId x, std::int64_t bytes, std::int64_t& reserved) {
    unindex(x);
    const std::int64_t len = std::min(at(x).size, round_up(bytes, page(at(x).small)));
    if (len < at(x).size) split(x, len);
    at(x).mapped = true;
    reserved += len;
    merge(x, at(x).prev);
    merge(x, at(x).next);
    index(x);
    return x;
  }
};

void CachingAllocator::ImplDeleter::operator()(Impl* impl) const { delete impl; }

CachingAllocator::CachingAllocator(const CachingAllocatorOptions& options) : impl_(new Impl) {
  impl_->options = options;
}

CachingAllocator::CachingAllocator(const CachingAllocator& other)
    : impl_(new Impl(*other.impl_)), allocated_(other.allocated_), reserved_(other.reserved_),
      requested_(other.requested_), stats_(other.stats_) {}

CachingAllocator& CachingAllocator::operator=(const CachingAllocator& other) {
  if (this != &other) *this = CachingAllocator(other);
  return *this;
}

void CachingAllocator::set_options(const CachingAllocatorOptions& options) {
  MSTPLAN_CHECK(options.expandable_segments == impl_->options.expandable_segments,
                "an allocator's segment kind cannot change");
  impl_->options = options;
}

bool CachingAllocator::overcommit(std::int64_t size) {
  if (!impl_->options.overcommit) return false;
  if (!stats_.out_of_memory) {
    stats_.out_of_memory = true;
    stats_.oom_request_bytes = size;
  }
  return true;
}

void CachingAllocator::state(std::vector<std::int64_t>& out) const {
  out.clear();
  out.push_back(allocated_);
  out.push_back(reserved_);
  out.push_back(requested_);
  for (int which = 0; which < 2; ++which) {
    out.push_back(-1);
    for (const Impl::Key& k : impl_->pools[which]) {
      out.push_back(std::get<0>(k));
      out.push_back(std::get<1>(k));
    }
    out.push_back(-2);
    for (const auto& [addr, b] : impl_->unmapped[which]) {
      out.push_back(addr);
      out.push_back(impl_->blocks[static_cast<std::size_t>(b)].size);
    }
  }
}

std::int64_t CachingAllocator::block_bytes(BlockId block) const {
  return impl_->blocks[static_cast<std::size_t>(block)].size;
}

CachingAllocator::BlockId CachingAllocator::malloc(std::int64_t requested_bytes) {
  Impl& s = *impl_;
  const std::int64_t size = round_size(requested_bytes);
  const bool small = size <= kTorchSmallSizeBytes;
  FlatSet<Impl::Key>& pool = s.pools[small ? 1 : 0];
  const std::int64_t capacity = s.options.capacity_bytes;

  // release_cached_blocks(): frees whole free segments, or (expandable) unmaps the pages that lie
  // entirely inside free blocks.
  auto release_cached = [&]() {
    ++stats_.cache_flushes;
    for (int which = 0; which < 2; ++which) {
      std::vector<BlockId> candidates;
      for (const Impl::Key& k : s.pools[which]) candidates.push_back(std::get<2>(k));
      for (BlockId b : candidates) {
        if (!s.options.expandable_segments) {
          if (s.at(b).prev != kFailed || s.at(b).next != kFailed) continue;
          s.unindex(b);
          reserved_ -= s.at(b).size;
          s.at(b).live = false;
          s.unused.push_back(b);
          continue;
        }
        const std::int64_t pg = Impl::page(which == 1);
        const std::int64_t begin = round_up(s.at(b).addr, pg);
        const std::int64_t end = (s.at(b).addr + s.at(b).size) / pg * pg;
        if (end <= begin) continue;
        s.unindex(b);
        BlockId middle = b;
        if (begin > s.at(b).addr) {
          middle = s.split(b, begin - s.at(b).addr);
          s.unindex(middle);
          s.index(b);
        }
        if (s.at(middle).addr + s.at(middle).size > end) s.split(middle, end - s.at(middle).addr);
        s.at(middle).mapped = false;
        reserved_ -= s.at(middle).size;
        s.merge(middle, s.at(middle).next);
        s.merge(middle, s.at(middle).prev);
        s.index(middle);
      }
    }
  };

  BlockId b = kFailed;
  auto it = pool.lower_bound(Impl::Key{size, std::numeric_limits<std::int64_t>::min(), kFailed});
  if (it != pool.end()) {
    b = std::get<2>(*it);
    pool.erase(it);
  } else if (!s.options.expandable_segments) {
    // alloc_block(): a new segment, after freeing the cache if the device is full.
    const std::int64_t segment = allocation_size(size);
    if (reserved_ + segment > capacity) release_cached();
    if (reserved_ + segment > capacity && !overcommit(size)) return kFailed;
    Impl::Block nb;
    nb.addr = s.next_addr;
    nb.size = segment;
    nb.small = small;
    s.next_addr += segment;
    b = s.make(nb);
    reserved_ += segment;
    ++stats_.segments_created;
  } else {
    // try_allocate_expandable_block(): map pages of a candidate run of free address space.
    BlockId c = s.expandable_candidate(small, size);
    if (reserved_ + s.pages_needed(c, size) > capacity) {
      release_cached();
      c = s.expandable_candidate(small, size);
      if (reserved_ + s.pages_needed(c, size) > capacity && !overcommit(size)) return kFailed;
    }
    if (!s.at(c).mapped) c = s.map(c, std::min(s.at(c).size, size), reserved_);
    while (s.at(c).size < size) c = s.map(s.at(c).next, size - s.at(c).size, reserved_);
    ++stats_.segments_created;
    s.unindex(c);
    b = c;
  }

  const std::int64_t remaining = s.at(b).size - size;
  // should_split(): at 512 bytes of rest in the small pool and with expandable segments, above
  // 1 MiB in the large pool otherwise.
  const bool split = small || s.options.expandable_segments ? remaining >= kTorchMinBlockBytes
                                                            : remaining > kTorchSmallSizeBytes;
  if (split) s.split(b, size);
  s.at(b).allocated = true;
  s.at(b).requested = requested_bytes;
  allocated_ += s.at(b).size;
  requested_ += requested_bytes;
  stats_.peak_reserved_bytes = std::max(stats_.peak_reserved_bytes, reserved_);
  if (s.options.overcommit && reserved_ > capacity) {
    stats_.overshoot_bytes = std::max(stats_.overshoot_bytes, reserved_ - capacity);
  }
  stats_.peak_requested_bytes = std::max(stats_.peak_requested_bytes, requested_);
  if (allocated_ > stats_.peak_allocated_bytes) {
    stats_.peak_allocated_bytes = allocated_;
    stats_.reserved_at_peak_allocated_bytes = reserved_;
  }
  return b;
}

void CachingAllocator::free(BlockId block) {
  Impl& s = *impl_;
  MSTPLAN_CHECK(block >= 0 && static_cast<std::size_t>(block) < s.blocks.size() && s.at(block).live &&
                    s.at(block).allocated,
                "freeing block {} that is not allocated", block);
  allocated_ -= s.at(block).size;
  requested_ -= s.at(block).requested;
  s.at(block).allocated = false;
  s.merge(block, s.at(block).prev);
  s.merge(block, s.at(block).next);
  s.index(block);
}

CachingAllocatorResult simulate_caching_allocator(const Program& p, const CachingAllocatorOptions& options) {
  // Scratch kept per thread: the search simulates many steps in a row.
  thread_local Lifetimes lt;
  thread_local std::vector<std::uint32_t> alloc_start, free_start, allocs, frees, cursor_a, cursor_f;
  thread_local std::vector<CachingAllocator::BlockId> block;
  thread_local std::vector<std::size_t> allocated_at;
  lifetimes(p, lt);
  const std::size_t ops = lt.op.size();
  // Instances allocated and freed at each flat op, in instance order (a counting sort).
  alloc_start.assign(ops + 1, 0);
  free_start.assign(ops + 1, 0);
  auto on_device = [&](std::uint32_t inst) {
    const Tensor& t = p.tensors[lt.instances[inst].tensor];
    return lt.first_op[inst] >= 0 && t.device == Device::device && t.bytes > 0;
  };
  const auto n = static_cast<std::uint32_t>(lt.instances.size());
  for (std::uint32_t i = 0; i < n; ++i) {
    if (!on_device(i)) continue;
    ++alloc_start[static_cast<std::size_t>(lt.first_op[i]) + 1];
    ++free_start[static_cast<std::size_t>(lt.last_op[i]) + 1];
  }
  for (std::size_t i = 0; i < ops; ++i) {
    alloc_start[i + 1] += alloc_start[i];
    free_start[i + 1] += free_start[i];
  }
  allocs.resize(alloc_start[ops]);
  frees.resize(free_start[ops]);
  cursor_a.assign(alloc_start.begin(), alloc_start.end() - 1);
  cursor_f.assign(free_start.begin(), free_start.end() - 1);
  for (std::uint32_t i = 0; i < n; ++i) {
    if (!on_device(i)) continue;
    allocs[cursor_a[static_cast<std::size_t>(lt.first_op[i])]++] = i;
    frees[cursor_f[static_cast<std::size_t>(lt.last_op[i])]++] = i;
  }
  block.assign(n, CachingAllocator::kFailed);
  allocated_at.assign(n, 0);  // the flat op that allocated each instance
  // The parameters and their optimizer state come first and are the same for every length and
  // plan of a model and setup: their allocation is simulated once per thread and copied.
  struct StaticPrefix {
    std::vector<std::int64_t> bytes;
    bool expandable = false;
    std::optional<CachingAllocator> state;
    std::vector<CachingAllocator::BlockId> blocks;
  };
  thread_local StaticPrefix cached;
  std::vector<std::int64_t> prefix_bytes;
  std::uint32_t prefix = 0;
  if (ops > 0 && !options.first_step) {
    for (std::uint32_t k = alloc_start[0]; k < alloc_start[1]; ++k, ++prefix) {
      const Tensor& t = p.tensors[lt.instances[allocs[k]].tensor];
      const bool parameter_state = t.kind == TensorKind::weight || t.kind == TensorKind::master_weight ||
                                   t.kind == TensorKind::optimizer_state || t.kind == TensorKind::gradient;
      if (!parameter_state) break;
      prefix_bytes.push_back(t.bytes);
    }
  }
  CachingAllocator allocator(options);
  std::uint32_t first_alloc = 0;  // of op 0, the first not restored from the cache
  if (prefix > 0 && cached.state && cached.expandable == options.expandable_segments && cached.bytes == prefix_bytes) {
    allocator = *cached.state;
    allocator.set_options(options);
    for (std::uint32_t k = 0; k < prefix; ++k) {
      block[allocs[alloc_start[0] + k]] = cached.blocks[k];
    }
    first_alloc = prefix;
  } else if (prefix > 0) {
    CachingAllocator fresh(CachingAllocatorOptions{.expandable_segments = options.expandable_segments});
    std::vector<CachingAllocator::BlockId> ids;
    for (std::uint32_t k = 0; k < prefix; ++k) ids.push_back(fresh.malloc(prefix_bytes[k]));
    const bool within = fresh.reserved_bytes() <= options.capacity_bytes;
    if (within) {
      cached = StaticPrefix{prefix_bytes, options.expandable_segments, fresh, ids};
      allocator = std::move(fresh);
      allocator.set_options(options);
      for (std::uint32_t k = 0; k < prefix; ++k) block[allocs[alloc_start[0] + k]] = ids[k];
      first_alloc = prefix;
    }
  }
  OpId failed_op = 0;
  std::int64_t failed_iteration = 0;
  // The parameters and what persists with them (outputs of step.begin, not the per-step data).
  auto parameter_state = [&](std::uint32_t inst) {
    const TensorKind k = p.tensors[lt.instances[inst].tensor].kind;
    return lt.first_op[inst] == 0 && (k == TensorKind::weight || k == TensorKind::master_weight ||
                                      k == TensorKind::optimizer_state || k == TensorKind::gradient);
  };
  // First step: optimizer state is created by each parameter's first update (torch.optim's lazy
  // state init), at the flat op of that update.
  std::vector<std::pair<std::size_t, std::uint32_t>> lazy;  // (flat op, instance), by op
  if (options.first_step) {
    std::vector<std::int64_t> first_update(n, -1);
    for (std::size_t i = 1; i < ops; ++i) {
      const Op& op = p.ops[lt.op[i]];
      if (op.kind != OpKind::optimizer) continue;
      for (TensorId t : p.outputs(op)) {
        if (p.tensors[t].kind != TensorKind::optimizer_state || p.tensors[t].loop != kNone) continue;
        // A non-array tensor has one instance: the first of its tensor's.
        const auto inst = static_cast<std::uint32_t>(
            std::lower_bound(lt.instances.begin(), lt.instances.end(), t,
                             [](const TensorInstance& x, TensorId id) { return x.tensor < id; }) -
            lt.instances.begin());
        if (first_update[inst] < 0) {
          first_update[inst] = static_cast<std::int64_t>(i);
          lazy.emplace_back(i, inst);
        }
      }
    }
    std::sort(lazy.begin(), lazy.end());
  }
  std::int64_t skipped = 0;
  // Loop iterations: the state at the start of the previous one, and whether it freed all it allocated.
  std::vector<std::int64_t> previous_state, state;
  for (int pass = options.first_step ? 0 : 1; pass < 2; ++pass) {
  const bool warmup = pass == 0;
  std::size_t next_lazy = 0;
  bool have_previous = false;
  std::size_t iteration_start = 0;
  std::int64_t own_allocations = 0, own_frees = 0;
  std::size_t i = 0;
  while (i < ops) {
    const Op& op = p.ops[lt.op[i]];
    if (op.loop != kNone && lt.op[i] == p.loops[static_cast<std::size_t>(op.loop)].first_op) {
      const Loop& loop = p.loops[static_cast<std::size_t>(op.loop)];
      const std::int64_t it = lt.iteration[i];
      const bool clean = own_allocations == own_frees;
      if (it == 0 || !options.skip_repeated_iterations) {
        have_previous = false;
      } else {
        allocator.state(state);
        if (have_previous && clean && state == previous_state && it + 1 < loop.iterations) {
          // Iteration it would repeat iteration it - 1 and leave the same state: on to the last.
          skipped += loop.iterations - 1 - it;
          i += static_cast<std::size_t>(loop.iterations - 1 - it) * (loop.end_op - loop.first_op);
          have_previous = false;
          iteration_start = i;
          own_allocations = own_frees = 0;
          continue;
        }
        std::swap(previous_state, state);
        have_previous = clean;
      }
      if (it == 0) {
        allocator.state(previous_state);
        have_previous = options.skip_repeated_iterations;
      }
      iteration_start = i;
      own_allocations = own_frees = 0;
    }
    for (std::uint32_t k = alloc_start[i] + (i == 0 && !options.first_step ? first_alloc : 0); k < alloc_start[i + 1]; ++k) {
      const std::uint32_t inst = allocs[k];
      if (block[inst] != CachingAllocator::kFailed) continue;  // a parameter's, from the first step
      if (warmup && i == 0 && p.tensors[lt.instances[inst].tensor].kind == TensorKind::optimizer_state) continue;
      const std::int64_t bytes = p.tensors[lt.instances[inst].tensor].bytes;
      const bool fitted = !allocator.stats().out_of_memory;
      block[inst] = allocator.malloc(bytes);
      allocated_at[inst] = i;
      ++own_allocations;
      if (fitted && allocator.stats().out_of_memory) {
        failed_op = lt.op[i];  // overcommitted: recorded, and the simulation goes on
        failed_iteration = lt.iteration[i];
      }
      if (block[inst] == CachingAllocator::kFailed) {
        CachingAllocatorResult r = allocator.stats();
        r.skipped_iterations = skipped;
        r.out_of_memory = true;
        r.oom_request_bytes = bytes;
        r.oom_op = lt.op[i];
        r.oom_iteration = lt.iteration[i];
        return r;
      }
    }
    for (; warmup && next_lazy < lazy.size() && lazy[next_lazy].first == i; ++next_lazy) {
      const std::uint32_t inst = lazy[next_lazy].second;
      block[inst] = allocator.malloc(p.tensors[lt.instances[inst].tensor].bytes);
      if (block[inst] == CachingAllocator::kFailed) {
        CachingAllocatorResult r = allocator.stats();
        r.skipped_iterations = skipped;
        r.out_of_memory = true;
        r.oom_request_bytes = p.tensors[lt.instances[inst].tensor].bytes;
        r.oom_op = lt.op[i];
        r.oom_iteration = lt.iteration[i];
        return r;
      }
    }
    for (std::uint32_t k = free_start[i]; k < free_start[i + 1]; ++k) {
      const std::uint32_t inst = frees[k];
      if (warmup && parameter_state(inst)) continue;  // parameters and their state outlive the step
      MSTPLAN_CHECK(block[inst] != CachingAllocator::kFailed, "freeing an instance never allocated");
      allocator.free(block[inst]);
      block[inst] = CachingAllocator::kFailed;
      if (allocated_at[inst] >= iteration_start) ++own_frees;
    }
    ++i;
  }
  }
  CachingAllocatorResult r = allocator.stats();
  r.skipped_iterations = skipped;
  r.oom_op = failed_op;
  r.oom_iteration = failed_iteration;
  return r;
}

}  // namespace mstplan
