#pragma once
// A plan: every knob of one training step decided. The search varies plans; the builder turns a
// plan (with a model, a setup and a sequence length) into a step program; plan files record one.
//
//   Plan p = Plan::vanilla();                 // no chunking, no recompute
//   p.mlp = ChunkSetting{.chunk_tokens = 4096};
//   p.mlp_mode = MlpMode::tiled;
//   std::int64_t m = chunk_count(p.mlp, 8192); // 2 mini-sequences at S = 8192
#include <cstdint>
#include <string>
#include <vector>

#include "planner/model_spec.h"
#include "planner/setup.h"

namespace mstplan {

struct Plan {
  ChunkSetting mlp{1, {}};             ///< MLP mini-sequences: a count, or tokens per chunk
  MlpMode mlp_mode = MlpMode::paper;   ///< with one chunk, paper is plain autograd
  ChunkSetting lm_head{1, {}};         ///< LM head + loss mini-sequences
  LmHeadMode lm_head_mode = LmHeadMode::keep;
  RecomputeKind recompute = RecomputeKind::none;
  std::vector<std::int64_t> recompute_layers;  ///< sorted; empty means every layer (when recomputing)
  bool offload_checkpoints = false;    ///< checkpoints of recomputed layers kept in host memory
  /// pytorch profile: the MST authors' code as published (wdlctc/mini-s, minis/mini_sequence.py):
  /// the MLP's chunk outputs concatenated by torch.cat, the LM-head weight gradient accumulated by
  /// hand in place (addmm into .grad) and, with the optimizer in backward, its update delayed to
  /// the embedding's hook (Note [MST authors' code] in builder_pytorch.cpp).
  bool authors_code = false;

  /// No chunking, no recompute: what plain autograd does.
  static Plan vanilla();
  /// Full-layer recompute of every layer, nothing chunked.
  static Plan recompute_all();
  /// MST's reference rule: full recompute, MLP chunks of d tokens (tiled), LM head in
  /// ceil(V / d) chunks with logits recomputed in backward.
  static Plan mst_reference(const ModelSpec& model);
  /// The MST authors' own setup (their minisequence wrapper): full recompute, MLP in chunks of
  /// 4,096 tokens run one after another inside autograd (paper), LM head + loss in 64 chunks with
  /// logits recomputed in backward, `authors_code`.
  static Plan mst_authors();

  bool operator==(const Plan&) const = default;
};

/// Mini-sequences for `positions` positions per sequence: the count, or ceil(positions / tokens),
/// at least 1 and at most `positions` (a chunk holds at least one position).
[[nodiscard]] std::int64_t chunk_count(const ChunkSetting& setting, std::int64_t positions);

/// Whether layer `layer` is recomputed under `plan`.
[[nodiscard]] bool recomputes_layer(const Plan& plan, std::int64_t layer);

/// The knobs a setup fixes override the plan's ("mlp: {chunks: 8}" in a scenario).
[[nodiscard]] Plan apply_knobs(Plan plan, const PlanKnobs& knobs);

/// One line: "MLP 4 chunks (tiled), LM head 32 chunks (recompute), recompute full 32/32 layers".
[[nodiscard]] std::string describe_plan(const Plan& plan, const ModelSpec& model, std::int64_t seq_len);

}  // namespace mstplan
