#include "planner/search.h"

#include <algorithm>
#include <atomic>
#include <mutex>
#include <cmath>
#include <numeric>
#include <thread>

#include <fmt/format.h>

#include "planner/builder.h"
#include "planner/static_memory.h"

namespace mstplan {
namespace {

std::int64_t round_down(std::int64_t value, std::int64_t granularity) { return value / granularity * granularity; }

// Plans auto compares: from plain autograd to the most memory-frugal, each with the MST chunk
// sizes that keep GEMMs efficient (MLP chunks of d tokens, LM head in ceil(V / d) chunks), plus
// one with finer chunks for the very longest sequences.
std::vector<Plan> auto_candidates(const ModelSpec& m, const TrainingSetup& setup,
                                  const std::function<std::optional<Plan>(const TrainingSetup&, const Plan&)>& express) {
  const Plan mst = Plan::mst_reference(m);
  std::vector<Plan> out;
  out.push_back(Plan::vanilla());
  out.push_back(Plan::recompute_all());  // every fixed method's plan is a candidate, so auto is never worse
  {
    Plan p = mst;  // no recompute: gate and up kept (paper), transients chunked
    p.recompute = RecomputeKind::none;
    p.mlp_mode = MlpMode::paper;
    out.push_back(p);
  }
  {
    Plan p = mst;
    p.recompute = RecomputeKind::selective;
    out.push_back(p);
  }
  out.push_back(mst);
  {
    Plan p = mst;
    p.lm_head_mode = LmHeadMode::forward_grad;
    out.push_back(p);
  }
  {
    Plan p = mst;
    p.offload_checkpoints = true;
    out.push_back(p);
  }
  {
    Plan p = mst;
    p.offload_checkpoints = true;
    p.lm_head_mode = LmHeadMode::forward_grad;
    out.push_back(p);
  }
  {
    Plan p = mst;  // finest: quarter-d MLP chunks (at least 256 tokens), LM head chunks of 512 tokens
    p.offload_checkpoints = true;
    p.mlp = ChunkSetting{{}, std::max<std::int64_t>(m.hidden_size / 4, 256)};
    p.lm_head = ChunkSetting{{}, 512};
    out.push_back(p);
  }
  const PlanKnobs& knobs = setup.knobs;
  for (Plan& p : out) p = apply_knobs(p, knobs);
  std::vector<Plan> unique;
  for (Plan p : out) {
    if (express) {
      // The engine's nearest plan, unless it overrides a knob the setup fixed.
      std::optional<Plan> q = express(setup, p);
      if (!q || apply_knobs(*q, knobs) != *q) continue;
      p = std::move(*q);
    }
    if (std::find(unique.begin(), unique.end(), p) == unique.end()) unique.push_back(p);
  }
  return unique;
}

// Runs `work` (which takes its tasks from a shared counter until none are left) on this thread and
// up to `threads` - 1 more (0: every hardware thread), never more than `tasks` in all.
template <class Work>
void run_on_threads(std::size_t tasks, int threads, Work& work) {
  const std::size_t n = std::min<std::size_t>(
      tasks, threads > 0 ? static_cast<std::size_t>(threads) : std::max(1U, std::thread::hardware_concurrency()));
  std::vector<std::jthread> pool;
  for (std::size_t t = 1; t < n; ++t) pool.emplace_back(work);
  work();
}

// Keeps the points no other point beats on both length and speed (`of` gives a point's
// Evaluation); longest first, among equals the fastest, then the earlier point.
template <class Point, class Of>
std::vector<Point> pareto_front(std::vector<Point> points, Of of) {
  std::stable_sort(points.begin(), points.end(), [&](const Point& a, const Point& b) {
    const Evaluation &x = of(a), &y = of(b);
    return x.seq_len != y.seq_len ? x.seq_len > y.seq_len : x.time.tokens_per_s > y.time.tokens_per_s;
  });
  std::vector<Point> front;
  double best_speed = -1.0;
  for (Point& p : points) {
    if (of(p).time.tokens_per_s > best_speed) {
      best_speed = of(p).time.tokens_per_s;
      front.push_back(std::move(p));
    }
  }
  return front;
}

}  // namespace

std::span<const Method> all_methods() {
  static constexpr std::array<Method, 5> methods{Method::vanilla, Method::recompute, Method::mst, Method::mst_offload,
                                                 Method::automatic};
  return methods;
}

Plan method_plan(Method method, const ModelSpec& model) {
  switch (method) {
    case Method::vanilla: return Plan::vanilla();
    case Method::recompute: return Plan::recompute_all();
    case Method::mst_offload: {
      Plan p = Plan::mst_reference(model);
      p.offload_checkpoints = true;
      return p;
    }
    case Method::mst:
    case Method::automatic: return Plan::mst_reference(model);
    case Method::mst_reference: return Plan::mst_authors();
  }
  return Plan::vanilla();
}

Evaluator::Evaluator(const ModelSpec& model, const GpuSpec& gpu, const TrainingSetup& setup, const SearchOptions& options)
    : model_(model), gpu_(gpu), setup_(setup), options_(options), allocator_(AllocatorModel::for_profile(setup.profile)),
      granularity_(std::lcm(std::max<std::int64_t>(options.granularity, 2), setup.parallel.sequence_group())) {
  if (options.cluster) {
    ranks_on_node_ = std::min(setup.parallel.gpus, options.cluster->gpus_per_node);
    host_capacity_bytes_ = options.cluster->host_memory_bytes;
  }
}

Evaluation Evaluator::evaluate(const Plan& plan, std::int64_t seq_len) { return evaluate(plan, seq_len, Pool::decide); }

StepTime Evaluator::time_of(const Program& p) const {
  return estimate_time(p, gpu_, setup_.grad_accum, options_.cost, options_.cluster ? &*options_.cluster : nullptr);
}

Evaluation Evaluator::evaluate(const Plan& plan, std::int64_t seq_len, Pool mode) {
  ++evaluations_;
  scratch_ = build_program(model_, setup_, plan, seq_len, std::move(scratch_));
  const Program& p = scratch_;
  Evaluation e;
  e.plan = plan;
  e.seq_len = seq_len;
  e.mlp_chunks = p.mlp_chunks;
  e.positions = seq_len / setup_.parallel.sequence_group();
  e.lm_head_chunks = p.lm_head_chunks;
  e.analysis = analyze(p, allocator_);
  // Lengths probed on allocated bytes only are timed once chosen (time_of), not here.
  if (mode != Pool::skip) e.time = time_of(p);
  e.required_bytes = e.analysis.peak.allocated_bytes + gpu_.reserve_bytes;
  e.host_node_bytes = e.analysis.host_peak_bytes * ranks_on_node_;
  e.fits = e.required_bytes <= gpu_.capacity_bytes && host_fits(e);
  if (e.fits && setup_.profile == Profile::pytorch && mode != Pool::skip) {
    CachingAllocatorOptions pool;
    pool.capacity_bytes = gpu_.usable_bytes();
    pool.expandable_segments = setup_.expandable_segments;
    pool.overcommit = mode == Pool::overcommit;
    e.pool = simulate_caching_allocator(p, pool);
    e.fits = !e.pool->out_of_memory;
  }
  e.peak_at = op_name(p, e.analysis.peak_op, e.analysis.peak_iteration);
  e.peak_phase = p.ops[e.analysis.peak_op].phase;
  e.peak_layer = p.ops[e.analysis.peak_op].layer;
  return e;
}

std::optional<Evaluation> Evaluator::longest(const Plan& plan, const std::optional<LengthHint>& hint) {
  std::optional<Evaluation> lo = longest_allocated(plan, 0, hint);
  if (!lo || setup_.profile != Profile::pytorch) return lo;
  // The caching allocator reserves more than is allocated, by a fragmentation that jumps with the
  // length, and on running out it empties its cache and retries (Pool::decide, what fits means).
  // Beyond the longest length on allocated bytes nothing fits. Below it: a length that fits is
  // found on the line through the limit, leaving the room the fragmentation took there (the
  // simulation serving past the capacity says how much), then the longest between it and the
  // limit by bisection, each point decided by the simulation.
  Evaluation top = evaluate(plan, lo->seq_len, Pool::decide);
  if (top.fits) return top;
  const std::int64_t g = granularity_;
  // Allocated bytes per token near the limit (memory is nearly affine in the length).
  const std::int64_t half = std::max(round_down(lo->seq_len / 2, g), g);
  double per_token = 0;
  if (half < lo->seq_len) {
    per_token = static_cast<double>(lo->analysis.peak.allocated_bytes - evaluate(plan, half, Pool::skip).analysis.peak.allocated_bytes) /
                static_cast<double>(lo->seq_len - half);
  }
  std::optional<Evaluation> fit;
  std::int64_t hi = lo->seq_len;  // the shortest length known not to fit
  Evaluation at = evaluate(plan, lo->seq_len, Pool::overcommit);
  std::int64_t headroom = 0;
  for (int attempt = 0; attempt < 4 && per_token > 0; ++attempt) {
    // The bytes over the allocated peak the allocator needed: over the capacity by the overshoot.
    const std::int64_t fragmentation = at.pool->overshoot_bytes + gpu_.usable_bytes() - at.analysis.peak.allocated_bytes;
    headroom = std::max(headroom + (attempt > 0 ? at.pool->overshoot_bytes : 0), fragmentation);
    // The length whose allocated peak leaves that room, on the line through the limit.
    std::int64_t s = round_down(lo->seq_len - static_cast<std::int64_t>(static_cast<double>(headroom + lo->required_bytes -
                                                                                            gpu_.capacity_bytes) /
                                                                        per_token),
                                g);
    s = std::min(s, at.seq_len - g);
    if (s < g) break;  // shortening cannot make room (the peak does not grow with the length)
    Evaluation e = evaluate(plan, s, Pool::decide);
    if (e.fits) {
      fit = std::move(e);
      break;
    }
    hi = s;
    at = evaluate(plan, s, Pool::overcommit);
  }
  if (!fit) {
    fit = evaluate(plan, g, Pool::decide);
    if (!fit->fits) return std::nullopt;
  }
  // Bisect between the longest length known to fit and the shortest known not to, to 1/128 of
  // the length.
  while (hi - fit->seq_len > std::max(g, round_down(fit->seq_len / 128, g))) {
    const std::int64_t mid = std::max(round_down(fit->seq_len + (hi - fit->seq_len) / 2, g), fit->seq_len + g);
    Evaluation e = evaluate(plan, mid, Pool::decide);
    if (e.fits) {
      fit = std::move(e);
    } else {
      hi = mid;
    }
  }
  return fit;
}

std::optional<Evaluation> Evaluator::longest_allocated(const Plan& plan, std::int64_t headroom_bytes,
                                                       const std::optional<LengthHint>& hint) {
  const std::int64_t g = granularity_;
  const std::int64_t ceiling = std::max(round_down(options_.max_seq_len * setup_.parallel.sequence_group(), g), g);
  // How far a length is from the capacity less the headroom: bytes over it (positive: does not fit).
  // The host's limit counts in the device's bytes: its excess scaled by the ratio of the capacities.
  auto excess = [&](const Evaluation& e) {
    const double device = static_cast<double>(e.required_bytes + headroom_bytes - gpu_.capacity_bytes);
    if (host_capacity_bytes_ == 0) return device;
    const double host = static_cast<double>(e.host_node_bytes - host_capacity_bytes_) *
                        static_cast<double>(gpu_.capacity_bytes) / static_cast<double>(host_capacity_bytes_);
    return std::max(device, host);
  };
  auto fits = [&](const Evaluation& e) {
    return e.required_bytes + headroom_bytes <= gpu_.capacity_bytes && host_fits(e);
  };
  auto slope = [&](const Evaluation& a, const Evaluation& b) {
    return (excess(b) - excess(a)) / static_cast<double>(b.seq_len - a.seq_len);
  };
  // The longest length that fits so far, whose program is kept (lo_program_) to time it once
  // the search is over: the time model costs a fifth of an evaluation, and only the answer needs
  // it; the shortest known not to fit; the fitting length before lo, for the growth's line.
  std::optional<Evaluation> lo, hi, previous;
  auto found = [&](Evaluation e) {
    if (fits(e)) {
      if (lo) previous = std::move(lo);
      lo = std::move(e);
      std::swap(scratch_, lo_program_);
    } else {
      hi = std::move(e);
    }
  };
  auto answer = [&]() {
    lo->time = time_of(lo_program_);
    return std::move(lo);
  };
  last_bytes_per_token_ = 0;

  // Seeded: the hint's length, then where the line through it with the hint's bytes per token
  // meets the capacity (one granularity step past the hint at least, on the side that brackets).
  if (hint && hint->bytes_per_token > 0) {
    last_bytes_per_token_ = hint->bytes_per_token;
    const std::int64_t h = std::clamp(round_down(hint->seq_len, g), g, ceiling);
    Evaluation e = evaluate(plan, h, Pool::skip);
    const double target = static_cast<double>(h) - excess(e) / hint->bytes_per_token;
    const bool at_hint_fits = fits(e);
    found(std::move(e));
    if (!at_hint_fits && h == g) return std::nullopt;
    if (!(at_hint_fits && h == ceiling)) {
      const std::int64_t aim = round_down(static_cast<std::int64_t>(std::clamp(target, 0.0, 2.0 * static_cast<double>(ceiling))), g);
      found(evaluate(plan, at_hint_fits ? std::clamp(aim, h + g, ceiling) : std::clamp(aim, g, h - g), Pool::skip));
      if (lo && hi && hi->seq_len - lo->seq_len > h / 64) last_bytes_per_token_ = slope(*lo, *hi);
    }
  }
  if (!lo) {
    Evaluation e = evaluate(plan, g, Pool::skip);
    if (!fits(e)) return std::nullopt;
    found(std::move(e));
  }

  // Grow until a length does not fit, aiming where the line through the last two points meets
  // the capacity (memory is nearly affine in S), at least doubling; seeded, one step past that
  // point (both seeded lengths fit: the root is near).
  const bool seeded = previous.has_value();
  while (!hi) {
    if (lo->seq_len >= ceiling) return answer();
    std::int64_t next = 2 * lo->seq_len;
    if (previous && lo->seq_len > previous->seq_len) {
      const double per_token = slope(*previous, *lo);
      if (per_token > 0) {
        const double target = static_cast<double>(lo->seq_len) - excess(*lo) / per_token;
        next = seeded ? round_down(static_cast<std::int64_t>(target), g) + g
                      : std::max(next, static_cast<std::int64_t>(target * 1.02));
      }
    }
    next = std::min(round_down(next, g), ceiling);
    if (next <= lo->seq_len) next = lo->seq_len + g;
    found(evaluate(plan, next, Pool::skip));
    if (hi && last_bytes_per_token_ == 0) last_bytes_per_token_ = slope(*lo, *hi);
  }
  // Narrow the bracket [lo fits, hi does not] by false position, Illinois-style: when one end
  // stays twice in a row, its excess counts half, so the steps do not stall on a convex curve.
  double f_lo = excess(*lo);
  double f_hi = excess(*hi);
  int kept = 0;  // > 0: lo kept that many times in a row; < 0: hi
  while (hi->seq_len - lo->seq_len > g) {
    std::int64_t next = lo->seq_len + (hi->seq_len - lo->seq_len) / 2;
    if (f_hi > f_lo) {
      const double t = -f_lo / (f_hi - f_lo);
      next = lo->seq_len + static_cast<std::int64_t>(t * static_cast<double>(hi->seq_len - lo->seq_len));
    }
    next = std::clamp(round_down(next, g), lo->seq_len + g, hi->seq_len - g);
    Evaluation e = evaluate(plan, next, Pool::skip);
    if (fits(e)) {
      found(std::move(e));
      f_lo = excess(*lo);
      kept = kept < 0 ? kept - 1 : -1;
      if (kept <= -2) f_hi /= 2;
    } else {
      found(std::move(e));
      f_hi = excess(*hi);
      kept = kept > 0 ? kept + 1 : 1;
      if (kept >= 2) f_lo /= 2;
    }
  }
  return answer();
}

std::optional<Evaluation> fastest_fitting(Evaluator& evaluator, const ModelSpec& model, const TrainingSetup& setup,
                                          std::int64_t seq_len) {
  const auto& express = evaluator.options().express;
  std::vector<Plan> plans = auto_candidates(model, setup, express);
  // Partial recompute: the fewest recomputed layers that fit, when all of them do (and the
  // scenario did not fix the layers, `layers: all` included, nor an export rule them out).
  Plan partial = apply_knobs(Plan::mst_reference(model), setup.knobs);
  Plan one_layer = partial;
  one_layer.recompute_layers = {0};
  if (partial.recompute == RecomputeKind::full && !setup.knobs.recompute_layers &&
      (!express || express(setup, one_layer) == one_layer) &&
      evaluator.evaluate(partial, seq_len).fits) {
    std::int64_t lo = 0, hi = model.num_layers;  // hi layers fit; lo do not (checked lazily)
    while (hi - lo > 1) {
      const std::int64_t mid = (lo + hi) / 2;
      Plan p = partial;
      for (std::int64_t l = 0; l < mid; ++l) p.recompute_layers.push_back(l);
      if (evaluator.evaluate(p, seq_len).fits) {
        hi = mid;
      } else {
        lo = mid;
      }
    }
    if (hi < model.num_layers) {
      for (std::int64_t l = 0; l < hi; ++l) partial.recompute_layers.push_back(l);
      plans.push_back(partial);
    }
  }
  std::optional<Evaluation> fastest;
  for (const Plan& plan : plans) {
    Evaluation e = evaluator.evaluate(plan, seq_len);
    if (!e.fits) continue;
    if (!fastest || e.time.tokens_per_s > fastest->time.tokens_per_s) fastest = std::move(e);
  }
  return fastest;
}

SearchResult search(const ModelSpec& model, const GpuSpec& gpu, const TrainingSetup& setup,
                    std::span<const Method> methods, const SearchOptions& options) {
  return search(model, gpu, setup, methods, options, {}, nullptr);
}

SearchResult search(const ModelSpec& model, const GpuSpec& gpu, const TrainingSetup& setup,
                    std::span<const Method> methods, const SearchOptions& options, const LengthHints& hints,
                    LengthHints* learned) {
  Evaluator evaluator(model, gpu, setup, options);
  SearchResult result;
  // Every plan whose longest length is needed, once (auto's candidates include the fixed
  // methods' plans), computed on a few threads: each plan's search is independent.
  std::vector<Plan> plans;
  auto want = [&](const Plan& plan) {
    if (std::find(plans.begin(), plans.end(), plan) == plans.end()) plans.push_back(plan);
  };
  for (Method method : methods) {
    if (method != Method::automatic) {
      want(method_plan(method, model));
    } else {
      for (const Plan& plan : auto_candidates(model, setup, options.express)) want(plan);
    }
  }
  std::vector<std::optional<Evaluation>> longest_of(plans.size());
  std::vector<double> bytes_per_token(plans.size(), 0.0);
  std::atomic<std::size_t> next{0};
  std::atomic<std::int64_t> evaluations{0};
  auto work = [&]() {
    Evaluator own(model, gpu, setup, options);
    // Last plans first: auto's finest, offloaded candidates take longest, and start early.
    for (std::size_t k = next++; k < plans.size(); k = next++) {
      const std::size_t i = plans.size() - 1 - k;
      std::optional<LengthHint> hint;
      for (const auto& [plan, h] : hints) {
        if (plan == plans[i]) hint = h;
      }
      longest_of[i] = own.longest(plans[i], hint);
      bytes_per_token[i] = own.last_bytes_per_token();
    }
    evaluations += own.evaluations();
  };
  run_on_threads(plans.size(), options.threads, work);
  if (learned) {
    learned->clear();
    for (std::size_t i = 0; i < plans.size(); ++i) {
      if (longest_of[i] && bytes_per_token[i] > 0) {
        learned->emplace_back(plans[i], LengthHint{longest_of[i]->seq_len, bytes_per_token[i]});
      }
    }
  }
  auto longest = [&](const Plan& plan) -> const std::optional<Evaluation>& {
    return longest_of[static_cast<std::size_t>(std::find(plans.begin(), plans.end(), plan) - plans.begin())];
  };
  const std::optional<std::int64_t> request = setup.seq_len;

  for (Method method : methods) {
    MethodResult r;
    r.method = method;
    if (method != Method::automatic) {
      const Plan plan = method_plan(method, model);
      r.at_max = longest(plan);
      if (request) r.at_request = evaluator.evaluate(plan, *request);
    } else {
      std::vector<Evaluation> points;
      for (const Plan& plan : auto_candidates(model, setup, options.express)) {
        if (const auto& e = longest(plan)) points.push_back(*e);
      }
      // auto's answer: the longest; among equals, the fastest.
      for (const Evaluation& e : points) {
        if (!r.at_max || e.seq_len > r.at_max->seq_len ||
            (e.seq_len == r.at_max->seq_len && e.time.tokens_per_s > r.at_max->time.tokens_per_s)) {
          r.at_max = e;
        }
      }
      result.pareto = pareto_front(std::move(points), [](const Evaluation& e) -> const Evaluation& { return e; });
      if (request) {
        result.fastest_at_request = fastest_fitting(evaluator, model, setup, *request);
        r.at_request = result.fastest_at_request;
      }
    }
    result.methods.push_back(std::move(r));
  }
  result.evaluations = evaluator.evaluations() + evaluations.load();
  return result;
}

namespace {

// The ZeRO stages the profile models (native: 0 to 3; pytorch: DDP and FSDP2 full shard) with the
// rest of the setup (an offloaded optimizer needs ZeRO-2 or 3; a quantized LoRA base is not
// sharded).
std::vector<ZeroStage> modelled_stages(const TrainingSetup& setup) {
  std::vector<ZeroStage> all = {ZeroStage::none, ZeroStage::optimizer, ZeroStage::gradients, ZeroStage::parameters};
  if (setup.profile == Profile::pytorch) all = {ZeroStage::none, ZeroStage::parameters};
  std::vector<ZeroStage> out;
  for (ZeroStage zero : all) {
    TrainingSetup s = setup;
    s.parallel.zero = zero;
    if (!check_offload_optimizer(s, "").has_value() && !check_adapter(s, "").has_value()) out.push_back(zero);
  }
  return out;
}

}  // namespace

Expected<std::optional<FewestGpus>> fewest_gpus(
    const ModelSpec& model, const GpuSpec& gpu, const TrainingSetup& setup, std::int64_t max_gpus,
    const std::function<Expected<ClusterSpec>(std::int64_t gpus)>& cluster_for,
    const std::function<std::optional<Plan>(const TrainingSetup&, const Plan&)>& express) {
  MSTPLAN_CHECK(setup.seq_len.has_value(), "fewest_gpus without a length");
  FewestGpus found;
  for (std::int64_t gpus = 1; gpus <= max_gpus; gpus *= 2) {
    found.tried.push_back(gpus);
    SearchOptions options;
    options.express = express;
    if (gpus > 1) {
      auto cluster = cluster_for(gpus);
      if (!cluster) return cluster.error();
      options.cluster = std::move(*cluster);
    }
    // auto's fastest plan at the length under each layout (no longest-length searches: only the
    // length asked for matters here).
    TrainingSetup base = setup;
    base.parallel = Parallelism{};
    base.parallel.gpus = gpus;
    const std::vector<ZeroStage> stages = gpus == 1 ? std::vector<ZeroStage>{ZeroStage::none} : modelled_stages(base);
    bool fits = false;
    for (const SequenceSharing& sharing : sequence_sharings(model, base)) {
      for (ZeroStage zero : stages) {
        TrainingSetup s = base;
        s.parallel.zero = zero;
        s.parallel.sp = sharing.sp;
        s.parallel.cp = sharing.cp;
        if (static_memory(model, s).total_bytes() > gpu.usable_bytes()) continue;
        Evaluator evaluator(model, gpu, s, options);
        std::optional<Evaluation> e = fastest_fitting(evaluator, model, s, *setup.seq_len);
        if (e && (!fits || e->time.tokens_per_s > found.plan.time.tokens_per_s)) {
          found.gpus = gpus;
          found.zero = zero;
          found.sp = sharing.sp;
          found.cp = sharing.cp;
          found.cluster = options.cluster;
          found.plan = std::move(*e);
          fits = true;
        }
      }
    }
    if (fits) return std::optional<FewestGpus>(std::move(found));
  }
  return std::optional<FewestGpus>();
}

std::vector<LayoutResult> search_layouts(const ModelSpec& model, const GpuSpec& gpu, const TrainingSetup& setup,
                                         const SearchOptions& options) {
  std::vector<LayoutResult> out;
  if (setup.parallel.gpus == 1) return out;
  for (const SequenceSharing& sharing : sequence_sharings(model, setup)) {
    for (ZeroStage zero : modelled_stages(setup)) {
      LayoutResult r;
      r.zero = zero;
      r.sp = sharing.sp;
      r.cp = sharing.cp;
      out.push_back(std::move(r));
    }
  }
  // Layouts are searched side by side, each on one thread (whose buffers the next layout it takes
  // reuses), rather than each layout's plans on fresh threads. First each sharing's first stage
  // that fits; then its other stages, each plan's search started where that stage's ended (the
  // same activations, other static bytes: LengthHint), in a third of the evaluations.
  SearchOptions one_thread = options;
  one_thread.threads = 1;
  const std::size_t stages = modelled_stages(setup).size();
  std::vector<LengthHints> hints(out.size() / stages);
  std::vector<std::size_t> seeded_by(out.size(), out.size());  // out.size(): not seeded
  auto search_layout = [&](std::size_t i, LengthHints* learned) {
    const Method automatic[] = {Method::automatic};
    LayoutResult& r = out[i];
    TrainingSetup s = setup;
    s.parallel.zero = r.zero;
    s.parallel.sp = r.sp;
    s.parallel.cp = r.cp;
    r.static_bytes = static_memory(model, s).total_bytes();
    if (r.static_bytes > gpu.usable_bytes()) return false;
    SearchResult found = search(model, gpu, s, automatic, one_thread, seeded_by[i] < out.size() ? hints[i / stages] : LengthHints{},
                                learned);
    r.longest = std::move(found.methods.front().at_max);
    r.pareto = std::move(found.pareto);
    if (setup.seq_len) r.at_request = std::move(found.fastest_at_request);
    r.evaluations = found.evaluations;
    return true;
  };
  std::vector<std::size_t> rest;
  {
    std::atomic<std::size_t> next{0};
    std::mutex taken;
    auto first = [&]() {
      for (std::size_t k = next++; k < hints.size(); k = next++) {
        std::size_t i = k * stages;
        while (i < (k + 1) * stages && !search_layout(i, &hints[k])) ++i;
        const std::lock_guard lock(taken);
        for (std::size_t j = i + 1; j < (k + 1) * stages; ++j) {
          seeded_by[j] = i;
          rest.push_back(j);
        }
      }
    };
    run_on_threads(hints.size(), options.threads, first);
  }
  std::atomic<std::size_t> next{0};
  auto others = [&]() {
    for (std::size_t k = next++; k < rest.size(); k = next++) search_layout(rest[k], nullptr);
  };
  run_on_threads(rest.size(), options.threads, others);
  return out;
}

std::vector<LayoutPoint> layouts_pareto(const std::vector<LayoutResult>& layouts) {
  std::vector<LayoutPoint> points;
  for (const LayoutResult& l : layouts) {
    for (const Evaluation& e : l.pareto) points.push_back({l.zero, l.sp, l.cp, e});
  }
  return pareto_front(std::move(points), [](const LayoutPoint& p) -> const Evaluation& { return p.plan; });
}

std::vector<std::int64_t> sequence_parallel_degrees(const ModelSpec& model, const TrainingSetup& setup) {
  std::vector<std::int64_t> out;
  for (std::int64_t sp = 1; sp <= setup.parallel.gpus; sp *= 2) {
    TrainingSetup s = setup;
    s.parallel.sp = sp;
    s.parallel.cp = 1;
    if (!check_sequence_parallel(s, model, "").has_value()) out.push_back(sp);
  }
  return out;
}

std::vector<SequenceSharing> sequence_sharings(const ModelSpec& model, const TrainingSetup& setup) {
  const std::vector<std::int64_t> ulysses = sequence_parallel_degrees(model, setup);
  std::vector<SequenceSharing> out;
  for (std::int64_t group = 1; group <= setup.parallel.gpus; group *= 2) {
    if (std::find(ulysses.begin(), ulysses.end(), group) != ulysses.end()) out.push_back({group, 1});
    if (group == 1) continue;
    TrainingSetup s = setup;
    s.parallel.sp = 1;
    s.parallel.cp = group;
    if (!check_sequence_parallel(s, model, "").has_value()) out.push_back({1, group});
  }
  return out;
}

std::string describe_sharing(std::int64_t sp, std::int64_t cp) {
  if (sp > 1) return fmt::format(", Ulysses over {}", sp);
  if (cp > 1) return fmt::format(", context-parallel over {}", cp);
  return {};
}

}  // namespace mstplan
