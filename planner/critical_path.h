#pragma once
// The step's schedule as a DAG: tasks on in-order streams (compute, the copy stream of checkpoint offload, and the
// communication stream of collectives),
// each with a duration, and the dependencies between streams. Its critical path is the step's wall
// time. A task may wait only for tasks added before it, so the order of adding is a topological
// order and each task's earliest finish is known as it is added: the longest path, computed online
// in O(tasks + dependencies). The tests hold it to Boost.Graph's dag_shortest_paths (the longest
// path, with the comparison reversed) on random DAGs.
//
//   StreamSchedule s;
//   const std::uint32_t load = s.add(Stream::copy, 0.004);
//   const std::uint32_t gemm = s.add(Stream::compute, 0.010, {&load, 1});   // reads what the copy brings
//   s.finish_seconds(gemm);   // 0.014
//   s.seconds();              // 0.014: the step's wall time
#include <algorithm>
#include <array>
#include <cstdint>
#include <span>
#include <vector>

namespace mstplan {

/// Where a task runs. Tasks of one stream run one after another, in the order they were added.
enum class Stream : std::uint8_t { compute, copy, comm };
inline constexpr std::size_t kStreams = 3;

class StreamSchedule {
 public:
  /// Adds a task at the end of stream `on`, starting once the stream's previous task and every
  /// task of `after` (added earlier: an invariant, aborts otherwise) have finished; returns its index.
  std::uint32_t add(Stream on, double task_seconds, std::span<const std::uint32_t> after = {}) {
    double& stream_clock = stream_end_[static_cast<std::size_t>(on)];
    double start = stream_clock;
    for (std::uint32_t before : after) {
      if (before >= finish_.size()) waits_for_a_later_task(before);
      start = std::max(start, finish_[before]);
    }
    stream_clock = start + task_seconds;
    finish_.push_back(stream_clock);
    return static_cast<std::uint32_t>(finish_.size() - 1);
  }

  [[nodiscard]] double finish_seconds(std::uint32_t task) const { return finish_[task]; }
  /// When the last task ends: the step's wall time (0 without tasks).
  [[nodiscard]] double seconds() const { return *std::max_element(stream_end_.begin(), stream_end_.end()); }
  /// When the last task of stream `on` ends (0 if it has none).
  [[nodiscard]] double stream_end(Stream on) const { return stream_end_[static_cast<std::size_t>(on)]; }
  [[nodiscard]] std::size_t size() const { return finish_.size(); }
  /// Empties the schedule, keeping its storage (the search times many steps in a row).
  void clear();

 private:
  [[noreturn]] void waits_for_a_later_task(std::uint32_t before) const;  // aborts, naming both tasks

  std::vector<double> finish_;  // per task
  std::array<double, kStreams> stream_end_{};  // a stream's clock only grows: the last is the latest
};

}  // namespace mstplan
