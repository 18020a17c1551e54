#pragma once
// The runtime's allocator: hands out backend memory for tensor instances and keeps the
// statistics that are compared with the planner's prediction.
//
// Requested bytes are what a tensor needs; allocated bytes are rounded up to `granularity_bytes`
// (256, as AllocatorModel::for_profile(native) assumes). Device and host are separate pools
// (offloaded checkpoints live on the host pool). The executor says which op is running
// (`enter`): the peak of every phase and every layer is the most memory live during any of its
// ops, which is what the planner's analysis reports per op.
//
// In test builds `guard_bytes` > 0 surrounds every block with a known pattern; `check_guards`
// finds any kernel that wrote outside its tensor. `trace` records every event, for timelines.
//
//   Allocator a(backend, {.guard_bytes = 64});
//   a.enter(Phase::forward, 3, op_id);
//   Expected<Block> b = a.allocate(Device::device, 4096);
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "planner/error.h"
#include "planner/program.h"
#include "runtime/backend.h"

namespace mstplan {

struct AllocatorOptions {
  std::int64_t granularity_bytes = 256;
  std::int64_t guard_bytes = 0;  ///< pattern bytes before and after each block (0: none)
  bool trace = false;            ///< keep every allocation and release in `events()`
};

struct Block {
  void* data = nullptr;
  std::int64_t requested_bytes = 0;
  std::int64_t allocated_bytes = 0;
  Device device = Device::device;
};

struct PoolStats {
  std::int64_t live_bytes = 0;  ///< requested, now
  std::int64_t allocated_bytes = 0;
  std::int64_t peak_live_bytes = 0;
  std::int64_t peak_allocated_bytes = 0;
  std::int64_t allocations = 0;  ///< count since construction
};

struct AllocatorEvent {
  OpId op = 0;            ///< the op entered last
  std::int64_t delta_bytes = 0;  ///< + allocated, - released (allocated bytes)
  Device device = Device::device;
  std::int64_t device_allocated_bytes = 0;  ///< the device pool after the event
};

class Allocator {
 public:
  Allocator(Backend& backend, AllocatorOptions options) : backend_(backend), options_(options) {}
  ~Allocator();
  Allocator(const Allocator&) = delete;
  Allocator& operator=(const Allocator&) = delete;

  /// A block of at least `bytes`; an error naming the pool when the backend has no room.
  [[nodiscard]] Expected<Block> allocate(Device where, std::int64_t bytes);
  void release(const Block& block);

  /// The op now running: its phase and layer (kNone outside layers) collect the peaks.
  void enter(Phase phase, std::int32_t layer, OpId op);
  /// Forget the peaks (per step); current bytes stay.
  void reset_peaks();

  /// The first damaged guard, named by block size and side; nullopt when all are intact.
  [[nodiscard]] std::optional<std::string> check_guards() const;

  [[nodiscard]] const PoolStats& device() const { return pools_[0]; }
  [[nodiscard]] const PoolStats& host() const { return pools_[1]; }
  /// Device allocated bytes at their highest during any op of a phase / of a layer (index
  /// layer + 1; 0 is outside the layers).
  [[nodiscard]] const std::array<std::int64_t, kPhases>& phase_peak_bytes() const { return phase_peak_; }
  [[nodiscard]] const std::vector<std::int64_t>& layer_peak_bytes() const { return layer_peak_; }
  /// The op during which the device allocated bytes first reached their peak.
  [[nodiscard]] OpId peak_op() const { return peak_op_; }
  [[nodiscard]] const std::vector<AllocatorEvent>& events() const { return events_; }

 private:
  void note_peaks();
  Backend& backend_;
  AllocatorOptions options_;
  std::array<PoolStats, 2> pools_{};
  std::array<std::int64_t, kPhases> phase_peak_{};
  std::vector<std::int64_t> layer_peak_;
  Phase phase_ = Phase::forward;
  std::int32_t layer_ = kNone;
  OpId op_ = 0, peak_op_ = 0;
  std::unordered_map<void*, Block> blocks_;  // by data pointer
  std::vector<AllocatorEvent> events_;
};

}  // namespace mstplan
