#pragma once
// When each tensor lives: the one last-use computation of the step program. The analysis reads it
// per program op (loops folded), and placement, the caching-allocator simulation and the runtime's
// executor read it per executed op (loops unrolled, as expand() emits them), so the bytes the
// planner predicts and the bytes the runtime frees come from the same spans.
//
//   TensorSpans spans;
//   tensor_spans(program, spans);               // per tensor: first write, last touch (program ops)
//   Lifetimes lt = lifetimes(program);          // per tensor instance: first and last flat op
//   if (lt.last_op[instance] == flat_op) free(instance);
#include <cstdint>
#include <vector>

#include "planner/expand.h"
#include "planner/program.h"

namespace mstplan {

/// Per tensor of the program, in program ops (loops not unrolled; -1 where no op qualifies). An op
/// touches a tensor when it lists it as an input or an output. In a valid schedule (schedule_check.h)
/// no op reads a tensor before its first write, so that is also its first touch.
struct TensorSpans {
  std::vector<std::int64_t> first_write;  ///< the first op that writes it: where it is allocated
  std::vector<std::int64_t> last_touch;   ///< the last op that reads or writes it: freed after it
};
/// Fills `out` for `program`, reusing its storage (the search analyses many programs in a row).
void tensor_spans(const Program& program, TensorSpans& out);

/// When each tensor instance lives, in the flat ops expand() emits: from the op that writes it
/// first to the last that reads or writes it, after which it is freed (-1 for instances no op
/// writes). Derived from tensor_spans(): an array instance of iteration k lives from its first
/// writer's iteration k to its last toucher's (or those ops' only run, outside loops); a tensor
/// touched in a loop without being an array of it lives from the first iteration to the last.
struct Lifetimes {
  std::vector<TensorInstance> instances;  ///< as in FlatProgram
  std::vector<std::int64_t> first_op;     ///< per instance
  std::vector<std::int64_t> last_op;      ///< per instance
  std::vector<OpId> op;                   ///< per flat op: the program's op
  std::vector<std::int64_t> iteration;    ///< per flat op: its loop iteration
};
[[nodiscard]] Lifetimes lifetimes(const Program& program);
/// The same into `out`, reusing its storage (the allocator simulation runs many in a row).
void lifetimes(const Program& program, Lifetimes& out);

}  // namespace mstplan
