#include "planner/analysis.h"

#include <algorithm>

#include "planner/liveness.h"

namespace mstplan {

AllocatorModel AllocatorModel::for_profile(Profile profile) {
  return AllocatorModel{profile == Profile::pytorch ? 512 : 256};
}

MemoryState& MemoryState::operator+=(const MemoryState& o) {
  live_bytes += o.live_bytes;
  allocated_bytes += o.allocated_bytes;
  host_bytes += o.host_bytes;
  for (std::size_t k = 0; k < kTensorKinds; ++k) by_kind[k] += o.by_kind[k];
  return *this;
}

MemoryState& MemoryState::operator-=(const MemoryState& o) {
  live_bytes -= o.live_bytes;
  allocated_bytes -= o.allocated_bytes;
  host_bytes -= o.host_bytes;
  for (std::size_t k = 0; k < kTensorKinds; ++k) by_kind[k] -= o.by_kind[k];
  return *this;
}

namespace {

// When an event of a loop op happens.
enum class When : std::uint8_t { every, first_iteration, last_iteration };

struct Event {
  When when;
  std::uint8_t kind;       // TensorKind of the tensor, for the breakdown
  bool host;
  std::int64_t instances;  // how many instances it allocates or frees at once
  std::int64_t bytes;      // per instance, requested
  std::int64_t allocated;  // per instance, rounded
};

// Buffers of one analysis, kept per thread between calls: the search analyses dozens of programs
// in a row, and fresh allocations of these sizes cost page faults each time.
struct Buffers {
  TensorSpans spans;
  std::vector<std::size_t> alloc_offset, free_offset, alloc_fill, free_fill;
  std::vector<Event> alloc, free;
};

// Allocation and free events of every op, from first writes and last uses, in flat arrays:
// op i's allocations are alloc_[alloc_offset_[i] .. alloc_offset_[i + 1]), its frees likewise.
class Events {
 public:
  Events(const Program& p, const AllocatorModel& allocator) {
    const std::size_t n_tensors = p.tensors.size();
    const std::size_t n_ops = p.ops.size();
    TensorSpans& spans = buffers().spans;
    tensor_spans(p, spans);
    const std::vector<std::int64_t>& first = spans.first_write;
    const std::vector<std::int64_t>& last = spans.last_touch;
    alloc_offset_.assign(n_ops + 1, 0);
    free_offset_.assign(n_ops + 1, 0);
    for (TensorId t = 0; t < n_tensors; ++t) {
      if (first[t] < 0) continue;  // never written: not part of the step
      ++alloc_offset_[static_cast<std::size_t>(first[t]) + 1];
      ++free_offset_[static_cast<std::size_t>(last[t]) + 1];
    }
    for (std::size_t i = 0; i < n_ops; ++i) {
      alloc_offset_[i + 1] += alloc_offset_[i];
      free_offset_[i + 1] += free_offset_[i];
    }
    alloc_.resize(alloc_offset_.back());
    free_.resize(free_offset_.back());
    std::vector<std::size_t>& alloc_fill = buffers().alloc_fill;
    std::vector<std::size_t>& free_fill = buffers().free_fill;
    alloc_fill.assign(alloc_offset_.begin(), alloc_offset_.end() - 1);
    free_fill.assign(free_offset_.begin(), free_offset_.end() - 1);
    for (TensorId t = 0; t < n_tensors; ++t) {
      if (first[t] < 0) continue;
      const Tensor& tensor = p.tensors[t];
      const Op& writer = p.ops[static_cast<std::size_t>(first[t])];
      const Op& reader = p.ops[static_cast<std::size_t>(last[t])];
      const bool array = tensor.loop != kNone;
      const std::int64_t instances = array ? p.loops[static_cast<std::size_t>(tensor.loop)].iterations : 1;
      MSTPLAN_CHECK(!array || writer.loop == tensor.loop, "array {} first written outside its loop", tensor_name(p, t));
      Event e{When::every, static_cast<std::uint8_t>(tensor.kind), tensor.device == Device::host, 1, tensor.bytes,
              allocator.allocated(tensor.bytes)};
      e.when = array || writer.loop == kNone ? When::every : When::first_iteration;
      alloc_[alloc_fill[static_cast<std::size_t>(first[t])]++] = e;
      if (reader.loop == kNone) {
        e.when = When::every;
        e.instances = instances;
      } else {
        e.when = array ? When::every : When::last_iteration;
        e.instances = 1;
      }
      free_[free_fill[static_cast<std::size_t>(last[t])]++] = e;
    }
  }

  // Applies op `i`'s allocations at `iteration` of `iterations`, reports the state during the op,
  // then applies its frees.
  template <typename Report>
  void run(OpId i, std::int64_t iteration, std::int64_t iterations, MemoryState& state, Report&& report) const {
    for (std::size_t e = alloc_offset_[i]; e < alloc_offset_[i + 1]; ++e) {
      apply(alloc_[e], iteration, iterations, state, +1);
    }
    report(i, iteration, state);
    for (std::size_t e = free_offset_[i]; e < free_offset_[i + 1]; ++e) {
      apply(free_[e], iteration, iterations, state, -1);
    }
  }

 private:
  static void apply(const Event& e, std::int64_t iteration, std::int64_t iterations, MemoryState& state, int sign) {
    if (e.when == When::first_iteration && iteration != 0) return;
    if (e.when == When::last_iteration && iteration != iterations - 1) return;
    const std::int64_t k = sign * e.instances;
    if (e.host) {
      state.host_bytes += k * e.bytes;
      return;
    }
    state.live_bytes += k * e.bytes;
    state.allocated_bytes += k * e.allocated;
    state.by_kind[e.kind] += k * e.bytes;
  }

  static Buffers& buffers() {
    thread_local Buffers b;
    return b;
  }
  std::vector<Event>& alloc_ = buffers().alloc;
  std::vector<Event>& free_ = buffers().free;
  std::vector<std::size_t>& alloc_offset_ = buffers().alloc_offset;
  std::vector<std::size_t>& free_offset_ = buffers().free_offset;
};

// Walks the program, simulating loop iterations as `all_iterations` says.
template <typename Report>
void simulate(const Program& p, const Events& events, bool all_iterations, Report&& report) {
  MemoryState state;
  OpId i = 0;
  while (i < p.ops.size()) {
    const Op& op = p.ops[i];
    if (op.loop == kNone) {
      events.run(i, 0, 1, state, report);
      ++i;
      continue;
    }
    const Loop& loop = p.loops[static_cast<std::size_t>(op.loop)];
    const std::int64_t n = loop.iterations;
    auto iteration = [&](std::int64_t it) {
      for (OpId j = loop.first_op; j < loop.end_op; ++j) events.run(j, it, n, state, report);
    };
    if (all_iterations || n <= 4) {
      for (std::int64_t it = 0; it < n; ++it) iteration(it);
    } else {
      iteration(0);
      const MemoryState after_first = state;
      iteration(1);
      MemoryState delta = state;
      delta -= after_first;
      for (std::int64_t skipped = 0; skipped < n - 4; ++skipped) state += delta;
      iteration(n - 2);
      iteration(n - 1);
    }
    i = loop.end_op;
  }
}

}  // namespace

Analysis analyze(const Program& p, const AllocatorModel& allocator) {
  const Events events(p, allocator);
  Analysis a;
  a.op_peak_bytes.assign(p.ops.size(), 0);
  bool first = true;
  simulate(p, events, false, [&](OpId op, std::int64_t iteration, const MemoryState& during) {
    a.op_peak_bytes[op] = std::max(a.op_peak_bytes[op], during.allocated_bytes);
    auto& phase = a.phase_peak_bytes[static_cast<std::size_t>(p.ops[op].phase)];
    phase = std::max(phase, during.allocated_bytes);
    a.peak_live_bytes = std::max(a.peak_live_bytes, during.live_bytes);
    a.host_peak_bytes = std::max(a.host_peak_bytes, during.host_bytes);
    if (first || during.allocated_bytes > a.peak.allocated_bytes) {
      a.peak = during;
      a.peak_op = op;
      a.peak_iteration = iteration;
      first = false;
    }
  });
  return a;
}

std::vector<TimelinePoint> timeline(const Program& p, const AllocatorModel& allocator) {
  const Events events(p, allocator);
  std::vector<TimelinePoint> out;
  simulate(p, events, true, [&](OpId op, std::int64_t iteration, const MemoryState& during) {
    out.push_back(TimelinePoint{op, iteration, during});
  });
  return out;
}

}  // namespace mstplan
