#pragma once
// PyTorch's CUDA caching allocator, simulated: what it reserves from the device for the requests
// of one training step, what it reports as allocated, and whether the step runs out of memory.
//
// Note [Caching allocator]
// ------------------------
// Source: c10/cuda/CUDACachingAllocator.cpp (torch 2.4 to 2.9; the rules below did not change
// between them). Requests are rounded up to 512 bytes (round_size, kMinBlockSize). Requests of
// at most 1 MiB (kSmallSize) are served from the small pool, larger ones from the large pool;
// each pool caches freed blocks and hands out the smallest cached block that is large enough
// (BlockComparatorSize: size, then address). When none is, a new segment is taken from the
// device with cudaMalloc: 2 MiB (kSmallBuffer) for a small request, 20 MiB (kLargeBuffer) for a
// request under 10 MiB (kMinLargeAlloc), the request rounded up to 2 MiB (kRoundLarge) above.
// A block larger than the request is split (should_split) when the rest is at least 512 bytes
// (small pool, or any pool with expandable segments) or more than 1 MiB (large pool); otherwise
// the whole block is handed out, and `allocated` counts the whole block. A freed block merges with free neighbours of its segment.
// When cudaMalloc fails, the allocator frees every cached segment that is entirely free
// (release_cached_blocks) and tries once more; then it raises OutOfMemoryError. `allocated` is the
// sum of the blocks in use (torch.cuda.max_memory_allocated), `reserved` the sum of the segments
// (max_memory_reserved).
// With expandable_segments:True (PYTORCH_CUDA_ALLOC_CONF) each pool is one virtual address range
// mapped in pages (2 MiB in the small pool, 20 MiB in the large one) as it grows, so free blocks
// at the end of the range merge with new pages, and freeing cached memory unmaps whole free pages.
// Not modelled: max_split_size_mb, roundup_power2_divisions, garbage_collection_threshold (all
// off by default), several streams, and the first step's lazy allocation of optimizer state (the
// simulated step is a later one: static tensors exist when it starts).
//
//   CachingAllocatorResult r = simulate_caching_allocator(program, {.capacity_bytes = usable});
//   if (r.out_of_memory) fmt::print("out of memory at {}\n", op_name(program, r.oom_op, r.oom_iteration));
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include "planner/program.h"

namespace mstplan {

inline constexpr std::int64_t kTorchMinBlockBytes = 512;             ///< kMinBlockSize
inline constexpr std::int64_t kTorchSmallSizeBytes = 1 << 20;        ///< kSmallSize: the small pool's largest request
inline constexpr std::int64_t kTorchSmallBufferBytes = 2 << 20;      ///< kSmallBuffer: a small pool's segment
inline constexpr std::int64_t kTorchLargeBufferBytes = 20 << 20;     ///< kLargeBuffer: a segment for 1-10 MiB requests
inline constexpr std::int64_t kTorchMinLargeAllocBytes = 10 << 20;   ///< kMinLargeAlloc
inline constexpr std::int64_t kTorchRoundLargeBytes = 2 << 20;       ///< kRoundLarge: larger segments round to this

struct CachingAllocatorOptions {
  /// Bytes the allocator may reserve: the device's capacity less what is not PyTorch's (the CUDA
  /// context). Unlimited: nothing is ever released, and `reserved` is what an unbounded device
  /// would show.
  std::int64_t capacity_bytes = std::numeric_limits<std::int64_t>::max();
  /// PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True.
  bool expandable_segments = false;
  /// A request the capacity cannot serve is recorded (out_of_memory) and then served anyway, so
  /// that the simulation runs to the end and `overshoot_bytes` says how far over it went: how much
  /// a step that does not fit is short of fitting, for the search.
  bool overcommit = false;
  /// simulate_caching_allocator(): simulate the training's first step before the step itself. In
  /// it the optimizer state does not exist yet and is created by each parameter's first update
  /// (torch.optim's lazy state), so it lands in the holes that step's activations leave; the step
  /// then runs on that heap. Peaks are over both steps.
  bool first_step = false;
  /// simulate_caching_allocator(): once a loop iteration starts from the state the previous one
  /// started from, having freed all it allocated, the iterations up to the last are the same and
  /// are skipped. Off only to test that this changes nothing.
  bool skip_repeated_iterations = true;
};

struct CachingAllocatorResult {
  std::int64_t peak_allocated_bytes = 0;  ///< blocks in use at most (max_memory_allocated)
  std::int64_t peak_reserved_bytes = 0;   ///< segments held at most (max_memory_reserved)
  std::int64_t peak_requested_bytes = 0;  ///< unrounded requests live at most
  /// Reserved bytes at the moment allocated bytes peak: their difference is the fragmentation
  /// the peak sees.
  std::int64_t reserved_at_peak_allocated_bytes = 0;
  std::int64_t segments_created = 0;      ///< cudaMalloc calls (pages mapped, with expandable segments)
  std::int64_t cache_flushes = 0;         ///< times cached segments were freed to retry a failed cudaMalloc
  std::int64_t skipped_iterations = 0;    ///< loop iterations not simulated: they repeat the one before
  bool out_of_memory = false;
  std::int64_t overshoot_bytes = 0;       ///< overcommit: reserved bytes beyond the capacity, at most
  std::int64_t oom_request_bytes = 0;     ///< the (first) request that failed
  OpId oom_op = 0;                        ///< the op whose allocation failed
  std::int64_t oom_iteration = 0;
};

/// Runs every device allocation and free of `program` through the caching allocator, in the
/// order the step makes them (an op's outputs are allocated before it runs, tensors freed after
/// their last op), and stops at the first allocation that fails.
[[nodiscard]] CachingAllocatorResult simulate_caching_allocator(const Program& program,
                                                                const CachingAllocatorOptions& options = {});

/// The allocator itself, for tests and for traces that do not come from a program.
class CachingAllocator {
 public:
  using BlockId = std::int32_t;
  static constexpr BlockId kFailed = -1;

  explicit CachingAllocator(const CachingAllocatorOptions& options = {});
  CachingAllocator(const CachingAllocator& other);
  CachingAllocator& operator=(const CachingAllocator& other);
  CachingAllocator(CachingAllocator&&) noexcept = default;
  CachingAllocator& operator=(CachingAllocator&&) noexcept = default;
  ~CachingAllocator() = default;
  /// Changes the capacity and overcommit for what follows (a state copied for another run).
  void set_options(const CachingAllocatorOptions& options);
  /// A block of at least `requested_bytes`, or kFailed when the device cannot provide it.
  [[nodiscard]] BlockId malloc(std::int64_t requested_bytes);
  void free(BlockId block);

  [[nodiscard]] std::int64_t allocated_bytes() const { return allocated_; }
  [[nodiscard]] std::int64_t reserved_bytes() const { return reserved_; }
  [[nodiscard]] const CachingAllocatorResult& stats() const { return stats_; }
  /// The size of a block handed out (its rounded, possibly unsplit, size).
  [[nodiscard]] std::int64_t block_bytes(BlockId block) const;
  /// The state as numbers (byte counts, and every free and unmapped block's size and address):
  /// equal states serve equal request sequences alike.
  void state(std::vector<std::int64_t>& out) const;

 private:
  bool overcommit(std::int64_t size);  // options.overcommit: records the failure, serves anyway
  struct Impl;
  struct ImplDeleter {
    void operator()(Impl* impl) const;
  };
  std::unique_ptr<Impl, ImplDeleter> impl_;
  std::int64_t allocated_ = 0;
  std::int64_t reserved_ = 0;
  std::int64_t requested_ = 0;
  CachingAllocatorResult stats_;
};

}  // namespace mstplan
