#include "runtime/allocator.h"

#include <cstring>

#include "planner/units.h"

namespace mstplan {
namespace {
constexpr unsigned char kGuard = 0xA5;
std::size_t pool_index(Device d) { return d == Device::device ? 0 : 1; }
}  // namespace

Allocator::~Allocator() {
  for (auto& [data, block] : blocks_) {
    auto* base = static_cast<unsigned char*>(data) - options_.guard_bytes;
    backend_.release(block.device, base, static_cast<std::size_t>(block.allocated_bytes + 2 * options_.guard_bytes));
  }
}

Expected<Block> Allocator::allocate(Device where, std::int64_t bytes) {
  MSTPLAN_CHECK(bytes >= 0, "negative allocation of {} bytes", bytes);
  Block b;
  b.device = where;
  b.requested_bytes = bytes;
  const std::int64_t g = options_.granularity_bytes;
  b.allocated_bytes = std::max<std::int64_t>(g, (bytes + g - 1) / g * g);
  const auto total = static_cast<std::size_t>(b.allocated_bytes + 2 * options_.guard_bytes);
  auto* base = static_cast<unsigned char*>(backend_.allocate(where, total));
  if (base == nullptr) {
    return make_error(ErrorKind::invalid, "the {} backend has no room for {} more bytes of {} memory ({} allocated)",
                      backend_.name(), b.allocated_bytes, to_string(where), pools_[pool_index(where)].allocated_bytes);
  }
  if (options_.guard_bytes > 0 && backend_.host_accessible()) {
    std::memset(base, kGuard, static_cast<std::size_t>(options_.guard_bytes));
    std::memset(base + options_.guard_bytes + b.allocated_bytes, kGuard, static_cast<std::size_t>(options_.guard_bytes));
  }
  b.data = base + options_.guard_bytes;
  blocks_.emplace(b.data, b);
  PoolStats& p = pools_[pool_index(where)];
  p.live_bytes += b.requested_bytes;
  p.allocated_bytes += b.allocated_bytes;
  p.peak_live_bytes = std::max(p.peak_live_bytes, p.live_bytes);
  p.allocations += 1;
  note_peaks();
  if (options_.trace) events_.push_back({op_, b.allocated_bytes, where, pools_[0].allocated_bytes});
  return b;
}

void Allocator::release(const Block& block) {
  const auto it = blocks_.find(block.data);
  MSTPLAN_CHECK(it != blocks_.end(), "release of a block this allocator did not hand out");
  PoolStats& p = pools_[pool_index(block.device)];
  p.live_bytes -= block.requested_bytes;
  p.allocated_bytes -= block.allocated_bytes;
  auto* base = static_cast<unsigned char*>(block.data) - options_.guard_bytes;
  backend_.release(block.device, base, static_cast<std::size_t>(block.allocated_bytes + 2 * options_.guard_bytes));
  blocks_.erase(it);
  if (options_.trace) events_.push_back({op_, -block.allocated_bytes, block.device, pools_[0].allocated_bytes});
}

void Allocator::note_peaks() {
  PoolStats& d = pools_[0];
  if (d.allocated_bytes > d.peak_allocated_bytes) {
    d.peak_allocated_bytes = d.allocated_bytes;
    peak_op_ = op_;
  }
  PoolStats& h = pools_[1];
  h.peak_allocated_bytes = std::max(h.peak_allocated_bytes, h.allocated_bytes);
  auto& phase = phase_peak_[static_cast<std::size_t>(phase_)];
  phase = std::max(phase, d.allocated_bytes);
  const auto slot = static_cast<std::size_t>(layer_ + 1);
  if (layer_peak_.size() <= slot) layer_peak_.resize(slot + 1, 0);
  layer_peak_[slot] = std::max(layer_peak_[slot], d.allocated_bytes);
}

void Allocator::enter(Phase phase, std::int32_t layer, OpId op) {
  phase_ = phase;
  layer_ = layer;
  op_ = op;
  note_peaks();
}

void Allocator::reset_peaks() {
  for (PoolStats& p : pools_) {
    p.peak_live_bytes = p.live_bytes;
    p.peak_allocated_bytes = p.allocated_bytes;
  }
  phase_peak_.fill(0);
  layer_peak_.clear();
  events_.clear();
  peak_op_ = op_;
}

std::optional<std::string> Allocator::check_guards() const {
  if (options_.guard_bytes <= 0 || !backend_.host_accessible()) return std::nullopt;
  for (const auto& [data, block] : blocks_) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (std::int64_t i = 1; i <= options_.guard_bytes; ++i) {
      if (p[-i] != kGuard) return fmt::format("guard byte {} before a {}-byte block was overwritten", i, block.requested_bytes);
      if (p[block.allocated_bytes + i - 1] != kGuard) {
        return fmt::format("guard byte {} after a {}-byte block was overwritten", i, block.requested_bytes);
      }
    }
  }
  return std::nullopt;
}

}  // namespace mstplan
