#pragma once
// Builds the step program (program.h) of one training step from a model, a setup, a plan and a
// sequence length: embedding, every layer's forward, final norm + LM head + loss, every layer's
// backward in reverse (recomputing checkpointed layers first), and the optimizer (per parameter
// inside backward, or at the end).
//
// What is kept for backward depends on the setup's profile; see Note [Native step] and
// Note [PyTorch step] in builder_native.cpp and builder_pytorch.cpp, which list every tensor each op
// keeps and why; builder_internal.h shows how the two share one walk.
//
//   Program p = build_program(model, setup, Plan::mst_reference(model), 32768);
#include <cstdint>

#include "planner/model_spec.h"
#include "planner/plan.h"
#include "planner/program.h"
#include "planner/setup.h"

namespace mstplan {

/// Bytes of the GEMM library workspace the step allocates once (cuBLASLt on Hopper wants 32 MiB).
inline constexpr std::int64_t kGemmWorkspaceBytes = std::int64_t{32} << 20;

/// The program of one step (one micro-batch; with gradient accumulation, the last one, which
/// runs the optimizer). `seq_len` is at least 2 (one position needs a next token to predict).
[[nodiscard]] Program build_program(const ModelSpec& model, const TrainingSetup& setup, const Plan& plan,
                                    std::int64_t seq_len);
/// The same, reusing the storage of `recycled` (a program no longer needed): the search builds
/// many programs in a row.
[[nodiscard]] Program build_program(const ModelSpec& model, const TrainingSetup& setup, const Plan& plan,
                                    std::int64_t seq_len, Program&& recycled);

}  // namespace mstplan
