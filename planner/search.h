#pragma once
// The search: for each method, the longest sequence that fits on the GPU, its peak and where it
// happens, and the estimated throughput; for `auto`, the best plan over the knobs, the Pareto set
// of (longest sequence, tokens/s), and the fastest plan that reaches a requested length.
//
// A plan fits at S when the device bytes its step allocates at the peak, plus the GPU's reserve,
// stay within the GPU's capacity. Maximum lengths are multiples of `granularity` tokens, found by
// false position with bisection fallback on the (nearly affine) peak against S, each point
// checked exactly by building and analysing the step.
//
//   SearchResult r = search(model, gpu, setup, all_methods(), SearchOptions{});
//   for (const MethodResult& m : r.methods) fmt::print("{} {}\n", to_string(m.method), m.at_max->seq_len);
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "planner/analysis.h"
#include "planner/cluster_spec.h"
#include "planner/caching_allocator.h"
#include "planner/cost_model.h"
#include "planner/gpu_spec.h"
#include "planner/model_spec.h"
#include "planner/plan.h"
#include "planner/program.h"
#include "planner/setup.h"

namespace mstplan {

/// mst_reference is the MST authors' own setup (Plan::mst_authors, pytorch profile only): asked for
/// by name, never among the default methods.
enum class Method { vanilla, recompute, mst, mst_offload, automatic, mst_reference };

template <>
struct EnumNames<Method> {
  static constexpr std::array<std::pair<Method, std::string_view>, 6> table{
      {{Method::vanilla, "vanilla"},
       {Method::recompute, "recompute"},
       {Method::mst, "mst"},
       {Method::mst_offload, "mst-offload"},
       {Method::automatic, "auto"},
       {Method::mst_reference, "mst-reference"}}};
};

/// vanilla, recompute, mst, mst-offload, auto (not mst-reference).
[[nodiscard]] std::span<const Method> all_methods();

struct SearchOptions {
  std::int64_t granularity = 64;           ///< maximum lengths are multiples of this many tokens
  /// The search stops at 16M tokens per rank-share of a sequence: this times the ranks sharing
  /// one (the Ulysses or context-parallel degree).
  std::int64_t max_seq_len = 1 << 24;
  /// Threads the longest lengths of the plans are searched on (0: one per hardware thread); the
  /// answer does not depend on it.
  std::int32_t threads = 0;
  CostOptions cost;
  /// The cluster the ranks' collectives run on: required when setup.parallel.gpus > 1 (an
  /// invariant), at least that many GPUs.
  std::optional<ClusterSpec> cluster;
  /// When set, auto's candidates (and its partial recompute) are mapped through this, with the
  /// setup of the layout searched, and those it maps to nullopt dropped: an engine export (--export) keeps auto to the plans the engine
  /// runs (express_plan). The fixed methods' plans are searched regardless.
  std::function<std::optional<Plan>(const TrainingSetup&, const Plan&)> express;
};

/// One plan at one length: memory, time, whether it fits.
struct Evaluation {
  Plan plan;
  std::int64_t seq_len = 0;
  std::int64_t mlp_chunks = 1;       ///< resolved at this length
  std::int64_t lm_head_chunks = 1;
  /// Positions of each sequence one rank holds: seq_len, or seq_len / (sp x cp) (what the
  /// chunk counts divide; describe_plan's and plan_json's length).
  std::int64_t positions = 0;
  Analysis analysis;
  StepTime time;
  std::int64_t required_bytes = 0;   ///< allocated peak + the GPU's reserve
  /// Host memory the ranks of one node hold at most (offloaded checkpoints and optimizer): the
  /// rank's host peak times the ranks on a node; a plan fits only within the cluster's
  /// host_memory_bytes (one GPU: no cluster, no host limit).
  std::int64_t host_node_bytes = 0;
  /// pytorch profile: the caching allocator simulated with the GPU's usable bytes (Note [Caching
  /// allocator]). Run when the allocated peak fits; the plan then fits when no request fails.
  std::optional<CachingAllocatorResult> pool;
  bool fits = false;
  std::string peak_at;               ///< the op's name
  Phase peak_phase = Phase::forward;
  std::int32_t peak_layer = kNone;
};

struct MethodResult {
  Method method = Method::vanilla;
  std::optional<Evaluation> at_max;      ///< the longest length that fits; nullopt: none fits
  std::optional<Evaluation> at_request;  ///< at the requested length (setup.seq_len)
};

struct SearchResult {
  std::vector<MethodResult> methods;
  std::vector<Evaluation> pareto;              ///< auto: (max length, tokens/s) non-dominated, longest first
  std::optional<Evaluation> fastest_at_request;  ///< auto: the fastest plan that fits the requested length
  std::int64_t evaluations = 0;                ///< programs built and analysed
};

/// The plan a fixed method uses (auto has none: it searches).
[[nodiscard]] Plan method_plan(Method method, const ModelSpec& model);

/// Where one plan's longest length was found under a similar setup (another ZeRO stage of the
/// same sequence sharing: the same activations, other static bytes), to start a search near it:
/// the length and the bytes per token memory grows by there. It changes how many lengths a
/// search evaluates, not its answer (the longest multiple of the granularity that fits, where
/// fitting is monotone in the length).
struct LengthHint {
  std::int64_t seq_len = 0;
  double bytes_per_token = 0;  ///< > 0
};

/// Builds, analyses and times one plan at one length.
class Evaluator {
 public:
  Evaluator(const ModelSpec& model, const GpuSpec& gpu, const TrainingSetup& setup, const SearchOptions& options);
  [[nodiscard]] Evaluation evaluate(const Plan& plan, std::int64_t seq_len);
  /// The longest multiple of the granularity that fits (nullopt when even the granularity does not).
  /// With the pytorch profile the answer is refined on the simulated caching allocator, whose
  /// fragmentation jumps with the length: the longest length whose allocated peak leaves the room
  /// the fragmentation took at the longest length on allocated bytes, checked by simulating it
  /// (a few simulations per plan, not a bisection: a length between it and the allocated-bytes
  /// limit may fit too). When shortening cannot make that room (a peak that does not grow with
  /// the length, such as the optimizer step's), a bisection on the simulation, to 1/128 of the length.
  /// `hint`: start near where a similar setup's search ended (LengthHint).
  [[nodiscard]] std::optional<Evaluation> longest(const Plan& plan, const std::optional<LengthHint>& hint = {});
  /// The bytes per token near the last longest length found (0: not known), for a LengthHint.
  [[nodiscard]] double last_bytes_per_token() const { return last_bytes_per_token_; }
  [[nodiscard]] std::int64_t evaluations() const { return evaluations_; }
  [[nodiscard]] const SearchOptions& options() const { return options_; }

 private:
  enum class Pool { skip, decide, overcommit };  // whether and how the caching allocator is simulated
  // Pool::skip: no time either (the step's time of a length only probed is never shown).
  Evaluation evaluate(const Plan& plan, std::int64_t seq_len, Pool pool);
  StepTime time_of(const Program& program) const;
  // The longest length whose allocated peak plus the reserve and `headroom_bytes` fits.
  std::optional<Evaluation> longest_allocated(const Plan& plan, std::int64_t headroom_bytes,
                                              const std::optional<LengthHint>& hint);
  const ModelSpec& model_;
  const GpuSpec& gpu_;
  const TrainingSetup& setup_;
  const SearchOptions& options_;
  AllocatorModel allocator_;
  std::int64_t granularity_;  // lengths are multiples of it: options.granularity and the ranks sharing a sequence
  std::int64_t ranks_on_node_ = 1;
  std::int64_t host_capacity_bytes_ = 0;  // 0: no host limit
  bool host_fits(const Evaluation& e) const { return host_capacity_bytes_ == 0 || e.host_node_bytes <= host_capacity_bytes_; }
  std::int64_t evaluations_ = 0;
  Program scratch_;     // the last program built, whose storage the next one reuses
  Program lo_program_;  // longest_allocated: the program of the longest length found to fit
  double last_bytes_per_token_ = 0;
};

/// auto at one length: the fastest of its candidate plans (and of partial recompute, the fewest
/// recomputed first layers, when the scenario leaves the layers free) that fits; nullopt when none does.
[[nodiscard]] std::optional<Evaluation> fastest_fitting(Evaluator& evaluator, const ModelSpec& model,
                                                        const TrainingSetup& setup, std::int64_t seq_len);

[[nodiscard]] SearchResult search(const ModelSpec& model, const GpuSpec& gpu, const TrainingSetup& setup,
                                  std::span<const Method> methods, const SearchOptions& options = {});

/// Each searched plan's LengthHint, for a search of a similar setup.
using LengthHints = std::vector<std::pair<Plan, LengthHint>>;
/// search() whose longest-length searches start at `hints` where one names their plan; `learned`
/// (when not null) receives each plan's hint for the next similar setup. The same answers as
/// search() where fitting is monotone in the length, in fewer evaluations.
[[nodiscard]] SearchResult search(const ModelSpec& model, const GpuSpec& gpu, const TrainingSetup& setup,
                                  std::span<const Method> methods, const SearchOptions& options,
                                  const LengthHints& hints, LengthHints* learned);

/// How a layout's ranks share each sequence: Ulysses over `sp` ranks, or context parallelism over
/// `cp` ranks (Note [Context-parallel step] in builder.cpp); one of them is 1.
struct SequenceSharing {
  std::int64_t sp = 1;
  std::int64_t cp = 1;
  bool operator==(const SequenceSharing&) const = default;
};
/// ", Ulysses over 4", ", context-parallel over 8", or "" for a sequence on one rank.
[[nodiscard]] std::string describe_sharing(std::int64_t sp, std::int64_t cp);

/// One layout of a multi-GPU setup: a ZeRO stage and a sequence sharing (Ulysses or context
/// parallelism), and auto's answer under them.
struct LayoutResult {
  ZeroStage zero = ZeroStage::none;
  std::int64_t sp = 1;                 ///< ranks sharing each sequence (Ulysses)
  std::int64_t cp = 1;                 ///< ranks sharing each sequence (context parallelism)
  std::int64_t static_bytes = 0;       ///< per rank
  std::optional<Evaluation> longest;   ///< auto's longest plan (nullopt: none fits)
  std::optional<Evaluation> at_request;  ///< auto's fastest plan at setup.seq_len, if it fits
  std::vector<Evaluation> pareto;      ///< auto's trade-offs under this layout (SearchResult::pareto)
  std::int64_t evaluations = 0;        ///< programs built and analyzed for this layout
};

/// One point of the trade-offs over layouts: a layout and one of its plans.
struct LayoutPoint {
  ZeroStage zero = ZeroStage::none;
  std::int64_t sp = 1;
  std::int64_t cp = 1;
  Evaluation plan;
};
/// The points of every layout's trade-offs that no other layout's point beats on both longest
/// length and tokens/s (ties: the first layout); longest first. Where it takes several GPUs'
/// memory to reach a length, this says what each extra length costs in speed, and with which layout.
[[nodiscard]] std::vector<LayoutPoint> layouts_pareto(const std::vector<LayoutResult>& layouts);

/// The sequence-parallel degrees a layout search tries on setup.parallel.gpus ranks: 1, 2, 4, ...
/// those check_sequence_parallel allows (they divide the GPUs, the query heads and any set length).
[[nodiscard]] std::vector<std::int64_t> sequence_parallel_degrees(const ModelSpec& model, const TrainingSetup& setup);

/// The sequence sharings a layout search tries on setup.parallel.gpus ranks, by group size 1, 2,
/// 4, ...: Ulysses at each degree sequence_parallel_degrees gives, then context parallelism at each
/// degree check_sequence_parallel allows (it divides the GPUs and any set length; native profile,
/// flash attention; not bounded by the heads, so it reaches group sizes Ulysses cannot).
[[nodiscard]] std::vector<SequenceSharing> sequence_sharings(const ModelSpec& model, const TrainingSetup& setup);

/// Every sequence sharing (sequence_sharings) with every ZeRO stage the setup's profile models
/// (native: 0 to 3; pytorch: 0 and 3), each searched with auto over the setup's other fields
/// (options.cluster as for search()), by group size, Ulysses before context parallelism, then
/// stage; for a setup of one GPU, empty. Layouts whose static state does not fit are listed with
/// no plan.
[[nodiscard]] std::vector<LayoutResult> search_layouts(const ModelSpec& model, const GpuSpec& gpu,
                                                       const TrainingSetup& setup, const SearchOptions& options);

/// The fewest GPUs on which some layout fits setup.seq_len tokens (an invariant: it is set): 1, 2,
/// 4, ... up to `max_gpus`, each with every layout search_layouts tries, on `cluster_for(gpus)`'s
/// nodes; the fastest layout at the first count that fits.
struct FewestGpus {
  std::int64_t gpus = 1;
  ZeroStage zero = ZeroStage::none;
  std::int64_t sp = 1;
  std::int64_t cp = 1;
  std::optional<ClusterSpec> cluster;  ///< nullopt for one GPU
  Evaluation plan;                     ///< auto's fastest plan at the length
  std::vector<std::int64_t> tried;     ///< the counts searched, in order
};
/// Nullopt when no count up to `max_gpus` fits; an error when `cluster_for` refuses a count.
/// `express` as SearchOptions::express.
[[nodiscard]] Expected<std::optional<FewestGpus>> fewest_gpus(
    const ModelSpec& model, const GpuSpec& gpu, const TrainingSetup& setup, std::int64_t max_gpus,
    const std::function<Expected<ClusterSpec>(std::int64_t gpus)>& cluster_for,
    const std::function<std::optional<Plan>(const TrainingSetup&, const Plan&)>& express = {});

}  // namespace mstplan
