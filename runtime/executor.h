#pragma once
// The executor: runs the step program the planner analyses, op by op, on a backend.
//
// It walks the unrolled program (expand.h): before an op it allocates the tensor instances the
// op writes first, runs the op's kernel, and after it frees every instance the op used last.
// Static tensors (weights, optimizer state, persistent gradients, the data, the GEMM workspace)
// are allocated once, by the first step's `step.begin`, and live until the executor goes. So the
// allocator sees exactly the lifetimes the planner's analysis assumes, and its peaks can be
// compared with the prediction to the byte.
//
// Data and weights are synthetic and deterministic: weights ~ N(0, 0.02) (Hugging Face's
// initializer_range), norm weights near their identity value (1 + N(0, 0.1), or N(0, 0.1) where
// the norm multiplies by 1 + weight), token ids uniform from a seed, labels = the tokens (the
// loss shifts them by one position), each label ignored (-100) with `ignore_fraction`.
//
// The loss of a micro-batch is the mean cross-entropy over its non-ignored labels, divided by the
// number of micro-batches, so the gradients of a step are those of the mean over the step.
//
// Note [Ranks]
// ------------
// A multi-GPU plan (gpus = N > 1, data parallel with ZeRO stage 0-3) runs as N executors, one
// per rank, each with its Communicator (communicator.h; MPI processes on the CPU backend). Rank r
// of a step's micro-batch m reads the sequences of micro-batch m x N + r, so the N ranks of a
// step with G micro-batches see exactly the sequences of one device's step with N x G
// micro-batches, and its gradients and loss are theirs: each collective reduces by the mean over
// the ranks (DDP's and FSDP's average, ZeRO's), the reported loss is the ranks' mean. A sharded
// parameter's elements [r x ceil(numel / N), ...) are rank r's (Parallelism::shard_numel): its
// shards are initialised with exactly those elements of the one-device values, padded with 0.
// Each op's collective moves the program's tensors (all-gather of weight shards, reduce-scatter
// and all-reduce of gradients), so every rank's allocator sees the lifetimes its prediction
// assumes; the collectives' own staging (fp32 copies on the host) is outside the pools, as
// NCCL's buffers are outside the plan (Note [Sharded step]).
//
// With Ulysses (sp = P > 1, Note [Ulysses step] in builder.cpp) ranks gP ... gP + P - 1 form
// group g of gpus / P, and the group stands where one data-parallel rank stood: its micro-batch m
// is micro-batch m x (gpus / P) + g of the one-device step, and member p holds positions
// [p x S / P, (p + 1) x S / P) of each sequence (tokens and, shifted before the split, labels;
// RoPE at those positions: Rope::first_position). Between the all-to-alls attention runs over
// all S positions of the rank's H / P query heads (tensors of Split::all_positions). Each member's loss
// is its labels' cross-entropy over the group's label count (an all-gather of the counts) times
// P: the ranks' mean of the gradients is then the mean over the groups' sequences, as ALST's
// all-gathered loss makes it, and the reported loss (the ranks' mean) is the groups' mean.
//
//   std::unique_ptr<Backend> cpu = make_cpu_backend();
//   Expected<std::unique_ptr<Executor>> ex = Executor::create(model, setup, plan, 256, *cpu, {});
//   Expected<StepReport> r = (*ex)->step();      // r->loss, r->memory
#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "planner/error.h"
#include "planner/expand.h"
#include "planner/liveness.h"
#include "planner/model_spec.h"
#include "planner/plan.h"
#include "planner/program.h"
#include "planner/setup.h"
#include "runtime/allocator.h"
#include "runtime/backend.h"
#include "runtime/communicator.h"

namespace mstplan {

struct RunOptions {
  std::uint64_t seed = 1;           ///< weights and data
  double ignore_fraction = 0.0;     ///< share of labels set to -100
  float learning_rate = 1e-3f;      ///< AdamW and SGD
  float weight_decay = 0.0f;
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
  std::int64_t guard_bytes = 0;     ///< allocator guards, checked after every op (tests)
  bool trace = false;               ///< keep the allocator's events
  /// Allocate, initialise and free exactly as the step does, but dispatch no op: measures memory
  /// (and whether a plan fits a device) without the arithmetic; the loss is then 0.
  bool memory_only = false;
  /// The ranks of a multi-GPU plan (setup.parallel.gpus > 1), of that size: this process runs
  /// rank communicator->rank(). Not owned; unused (may be null) for one GPU.
  Communicator* communicator = nullptr;
};

/// What one step allocated: device and host pools, per phase and per layer (index layer + 1).
struct MeasuredMemory {
  std::int64_t peak_allocated_bytes = 0;
  std::int64_t peak_live_bytes = 0;
  std::int64_t host_peak_bytes = 0;
  std::array<std::int64_t, kPhases> phase_peak_bytes{};
  std::vector<std::int64_t> layer_peak_bytes;
  std::string peak_at;  ///< the op's name
  std::optional<DeviceMemoryReport> device;  ///< the backend's own figures (CUDA), after the step
};

struct StepReport {
  double loss = 0;  ///< mean over the step's non-ignored labels
  MeasuredMemory memory;
};

class Executor {
 public:
  /// Fails (as a value) on what the runtime does not execute: the pytorch profile, 8-bit AdamW,
  /// layer norms, eager attention with soft-capped scores.
  [[nodiscard]] static Expected<std::unique_ptr<Executor>> create(const ModelSpec& model, const TrainingSetup& setup,
                                                                  const Plan& plan, std::int64_t seq_len,
                                                                  Backend& backend, const RunOptions& options);
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  /// One optimizer step: `grad_accum` micro-batches, the optimizer applied in the last one.
  [[nodiscard]] Expected<StepReport> step();

  /// Called with each parameter's complete gradient (fp32 values) just before the optimizer
  /// consumes it: with a sharded optimizer, the rank's part of it (update_range()).
  using GradientHook = std::function<void(std::int32_t param, std::span<const float> gradient)>;
  void on_gradient(GradientHook hook) { gradient_hook_ = std::move(hook); }

  /// Called after every op with its name and the values (fp32) of every tensor instance it wrote,
  /// in the program's output order; for comparing two backends op by op (slow: copies each one).
  using OpHook = std::function<void(std::uint32_t flat_op, const std::string& name,
                                    const std::vector<std::vector<float>>& outputs)>;
  void on_op(OpHook hook) { op_hook_ = std::move(hook); }

  /// A parameter's current values (the master copy when there is one): with a sharded optimizer,
  /// the rank's part of them (update_range()).
  [[nodiscard]] std::vector<float> parameter(std::int32_t param) const;
  /// The elements of a parameter this rank updates: [first, first + count); all of them on one
  /// rank or without a sharded optimizer (count may be 0 on the last ranks of a tiny parameter).
  using Range = Parallelism::ShardRange;
  [[nodiscard]] Range update_range(std::int32_t param) const;
  [[nodiscard]] int rank() const { return rank_; }
  /// Overwrites a parameter (its master copy too, when there is one), rounding to its dtype. The
  /// parameters exist from the first step on: calling this before it is an invariant violation.
  void set_parameter(std::int32_t param, std::span<const float> values);
  [[nodiscard]] const Program& program() const { return program_; }
  [[nodiscard]] const Allocator& allocator() const { return *allocator_; }

 private:
  Executor(const ModelSpec& model, const TrainingSetup& setup, std::int64_t seq_len, Backend& backend,
           const RunOptions& options, Program program);
  struct Instance {
    Block block;
    bool live = false;
  };
  [[nodiscard]] std::optional<Error> initialise_statics();
  [[nodiscard]] std::optional<Error> run_op(const FlatOp& f, std::int64_t micro_batch, bool last_micro_batch);
  void dispatch(const FlatOp& f, bool last_micro_batch);
  void write_data(std::int64_t micro_batch);
  [[nodiscard]] std::uint32_t instance(TensorId t, std::int64_t iteration) const;
  [[nodiscard]] View view(TensorId t, const Op& op, std::int64_t iteration) const;
  [[nodiscard]] std::vector<float> read(TensorId t) const;
  [[nodiscard]] std::vector<float> read_instance(std::uint32_t instance) const;
  void write(TensorId t, std::span<const float> values);
  void write_instance(std::uint32_t instance, std::span<const float> values);
  void collective(const Op& op, std::int64_t iteration);
  void ulysses_all_to_all(const Op& op, std::int64_t iteration);
  void sequence_collective(const Op& op, std::int64_t iteration);
  void repeat_kv(const Op& op, std::int64_t iteration, bool backward);
  /// Positions of each sequence the LM head and the loss see on this rank: S - 1 (the last has
  /// no label), or with Ulysses the rank's whole share (labels shifted before the split).
  // A quantized base weight's layout (LoRA over a quantized base: Note [LoRA step]).
  [[nodiscard]] kernels::Quantized quantized(std::int32_t param) const;
  [[nodiscard]] bool quantized_weight(TensorId t) const;
  [[nodiscard]] std::int64_t labelled_positions() const {
    return group_ > 1 ? program_.local_seq_len() : program_.seq_len - 1;
  }

  ModelSpec model_;
  TrainingSetup setup_;
  std::int64_t seq_len_;
  Backend& backend_;
  RunOptions options_;
  Program program_;
  FlatProgram flat_;
  std::vector<std::uint32_t> first_instance_;
  std::vector<std::int64_t> last_use_;  // per instance: the flat op that touches it last (liveness.h)
  std::vector<bool> static_tensor_;
  std::vector<Instance> instances_;
  std::vector<std::uint32_t> fresh_;  // instances the running op allocated: it writes them first
  std::unique_ptr<Allocator> allocator_;
  GradientHook gradient_hook_;
  OpHook op_hook_;
  TensorId loss_tensor_ = kNoTensor, tokens_ = kNoTensor, labels_ = kNoTensor;
  std::int64_t optimizer_steps_ = 0;
  std::int64_t targets_ = 0;  // non-ignored labels of the current micro-batch
  double loss_sum_ = 0;
  bool statics_ready_ = false;
  Communicator* comm_ = nullptr;
  int rank_ = 0, ranks_ = 1;
  // Ranks sharing a sequence: the Ulysses degree sp_ or the context-parallel cp_ (group_ = sp_ x
  // cp_), and this rank's place in its group.
  std::int64_t sp_ = 1, cp_ = 1, group_ = 1, member_ = 0;
  std::int64_t group_targets_ = 0;    // non-ignored labels of the group's micro-batch (all of its ranks')
};

}  // namespace mstplan
