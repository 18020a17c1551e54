#include "runtime/executor.h"

#include <algorithm>
#include <cmath>

#include "planner/analysis.h"
#include "planner/builder.h"
#include "planner/static_memory.h"

namespace mstplan {
namespace {

// Deterministic random numbers that do not depend on the standard library's distributions.
std::uint64_t splitmix(std::uint64_t& state) { return ref::splitmix_at(state += ref::kGolden); }
double uniform01(std::uint64_t& state) { return ref::uniform01(state += ref::kGolden); }

constexpr std::int32_t kNoLabel = -100;

}  // namespace

Expected<std::unique_ptr<Executor>> Executor::create(const ModelSpec& model, const TrainingSetup& setup, const Plan& plan,
                                                     std::int64_t seq_len, Backend& backend, const RunOptions& options) {
  if (setup.profile != Profile::native) {
    return make_error(ErrorKind::unsupported,
                      "field 'profile': the runtime executes the native profile; 'pytorch' describes what PyTorch "
                      "keeps and is checked against PyTorch itself");
  }
  if (setup.adapter.lora() && setup.parallel.gpus > 1) {
    return make_error(ErrorKind::unsupported,
                      "field 'adapter': LoRA steps run on one GPU for now (the planner models them on {}); plan one GPU "
                      "to run",
                      setup.parallel.gpus);
  }
  if (setup.parallel.gpus > 1) {
    const int gpus = static_cast<int>(setup.parallel.gpus);
    if (backend.name() != "cpu") {
      return make_error(ErrorKind::unsupported,
                        "field 'gpus': {}: the {} backend runs one rank; its collectives would be NCCL's (not built "
                        "yet): run the ranks on the CPU backend",
                        gpus, backend.name());
    }
    if (options.communicator == nullptr || options.communicator->size() != gpus) {
      return make_error(ErrorKind::unsupported,
                        "field 'gpus': {}: a multi-GPU plan runs one rank per process, here {}; start {} ranks "
                        "(mpirun -np {} ...)",
                        gpus, options.communicator ? fmt::format("{} rank{}", options.communicator->size(),
                                                             options.communicator->size() == 1 ? "" : "s")
                                           : "one process",
                        gpus, gpus);
    }
  }
  if (setup.offload_optimizer && backend.name() != "cpu") {
    return make_error(ErrorKind::unsupported,
                      "field 'offload_optimizer': the {} backend has no host-side AdamW (DeepSpeed's CPU Adam on the "
                      "host tensors, not built); the CPU backend runs offloaded plans",
                      backend.name());
  }
  if (setup.optimizer == OptimizerKind::adamw_8bit) {
    return make_error(ErrorKind::unsupported,
                      "field 'optimizer': the runtime has no 8-bit AdamW (the planner models its bytes); use adamw or sgd");
  }
  if (model.norm != NormKind::rmsnorm) {
    return make_error(ErrorKind::unsupported, "model {}: the runtime implements RMSNorm only", model.name);
  }
  if (setup.attention == AttentionKind::eager && model.attn_logit_softcap) {
    return make_error(ErrorKind::unsupported,
                      "model {}: eager attention with soft-capped scores is not executed (its backward needs the capped "
                      "scores, which the eager step does not keep); use attention flash",
                      model.name);
  }
  if (seq_len < 2) return make_error(ErrorKind::invalid, "field 'seq_len': {} (a step needs at least 2 positions)", seq_len);
  Program program = build_program(model, setup, plan, seq_len);
  return std::unique_ptr<Executor>(new Executor(model, setup, seq_len, backend, options, std::move(program)));
}

Executor::Executor(const ModelSpec& model, const TrainingSetup& setup, std::int64_t seq_len, Backend& backend,
                   const RunOptions& options, Program program)
    : model_(model), setup_(setup), seq_len_(seq_len), backend_(backend), options_(options),
      program_(std::move(program)) {
  if (setup_.parallel.gpus > 1) {
    comm_ = options_.communicator;
    rank_ = comm_->rank();
    ranks_ = comm_->size();
    sp_ = setup_.parallel.sp;
    cp_ = setup_.parallel.cp;
    group_ = setup_.parallel.sequence_group();
    member_ = rank_ % group_;
  }
  flat_ = expand(program_);
  first_instance_.resize(program_.tensors.size());
  for (std::uint32_t i = static_cast<std::uint32_t>(flat_.instances.size()); i-- > 0;) {
    first_instance_[flat_.instances[i].tensor] = i;
  }
  // Freed after the flat op that touches them last: the spans the planner's analysis reads.
  Lifetimes lt = lifetimes(program_);
  MSTPLAN_CHECK(lt.instances.size() == flat_.instances.size() && lt.op.size() == flat_.ops.size(),
                "lifetimes disagree with expand()");
  last_use_ = std::move(lt.last_op);
  static_tensor_.assign(program_.tensors.size(), false);
  for (TensorId t : program_.outputs(program_.ops.front())) static_tensor_[t] = true;
  loss_tensor_ = program_.loss;
  tokens_ = program_.tokens;
  labels_ = program_.labels;
  MSTPLAN_CHECK(loss_tensor_ != kNoTensor && tokens_ != kNoTensor && labels_ != kNoTensor, "program without data or loss");
  instances_.resize(flat_.instances.size());
  allocator_ = std::make_unique<Allocator>(
      backend_, AllocatorOptions{.granularity_bytes = AllocatorModel::for_profile(Profile::native).granularity_bytes,
                                 .guard_bytes = options_.guard_bytes,
                                 .trace = options_.trace});
}

Executor::~Executor() {
  for (Instance& i : instances_) {
    if (i.live) allocator_->release(i.block);
  }
}

std::uint32_t Executor::instance(TensorId t, std::int64_t iteration) const {
  const Tensor& tensor = program_.tensors[t];
  return first_instance_[t] + (tensor.loop == kNone ? 0u : static_cast<std::uint32_t>(iteration));
}

// The view an op sees of a tensor (see reference.h): parameters are their (rows x cols) matrix;
// arrays of a chunk loop are the chunk's rows; full-sequence tensors are B sequences of S rows,
// or, inside a chunk loop, the chunk's positions of each sequence.
View Executor::view(TensorId t, const Op& op, std::int64_t iteration) const {
  const Tensor& tensor = program_.tensors[t];
  const std::uint32_t id = instance(t, iteration);
  MSTPLAN_CHECK(instances_[id].live, "tensor {} read before it was written", tensor_name(program_, t, iteration));
  View v;
  v.data = instances_[id].block.data;
  v.dtype = tensor.dtype;
  // A rank's positions of each sequence: all of them, or its share with Ulysses (Note [Ranks]).
  const std::int64_t B = program_.batch, S = program_.local_seq_len(), T = B * S;
  if (tensor.param >= 0) {
    const ParamTensor& p = program_.params[static_cast<std::size_t>(tensor.param)];
    if (tensor.elements != p.numel()) return ref::contiguous(v.data, v.dtype, tensor.elements, 1);  // a shard
    // Vectors (norm weights, biases) are one row, as the kernels take them.
    return p.cols == 1 ? ref::contiguous(v.data, v.dtype, 1, p.rows) : ref::contiguous(v.data, v.dtype, p.rows, p.cols);
  }
  if (tensor.split == Split::all_positions) {  // Ulysses, around attention: every position, the rank's heads
    const std::int64_t A = program_.seq_len;
    v.cols = tensor.elements / (B * A);
    v.seqs = B;
    v.seq_stride = A;
    v.positions = A;
    return v;
  }
  if (tensor.loop != kNone) {
    const Loop& loop = program_.loops[static_cast<std::size_t>(tensor.loop)];
    v.positions = loop.rows;
    v.seq_stride = loop.rows;
    v.seqs = B;
    v.cols = tensor.elements / (B * loop.rows);
    return v;
  }
  if (tensor.elements % T != 0) return ref::contiguous(v.data, v.dtype, tensor.elements, 1);  // the loss, say
  v.cols = tensor.elements / T;
  v.seqs = B;
  v.seq_stride = S;
  v.positions = S;
  if (op.loop != kNone) {
    const Loop& loop = program_.loops[static_cast<std::size_t>(op.loop)];
    const bool lm = loop.block == ChunkedBlock::lm_head;
    const std::int64_t positions = lm ? labelled_positions() : S;
    const std::int64_t chunks = lm ? program_.lm_head_chunks : program_.mlp_chunks;
    const std::int64_t base = positions / chunks, longer = positions % chunks;
    const std::int64_t c = loop.first_chunk + iteration;
    v.first = c * base + std::min(c, longer);
    v.positions = loop.rows;
  }
  return v;
}

std::vector<float> Executor::read(TensorId t) const { return read_instance(instance(t, 0)); }

std::vector<float> Executor::read_instance(std::uint32_t id) const {
  const TensorId t = flat_.instances[id].tensor;
  const Tensor& tensor = program_.tensors[t];
  const Instance& i = instances_[id];
  MSTPLAN_CHECK(i.live, "reading {} while it is not allocated", tensor_name(program_, t));
  std::vector<unsigned char> bytes(static_cast<std::size_t>(tensor.bytes));
  backend_.copy_bytes(bytes.data(), i.block.data, bytes.size());
  const View v = ref::contiguous(bytes.data(), tensor.dtype, tensor.elements, 1);
  std::vector<float> out(static_cast<std::size_t>(tensor.elements));
  for (std::int64_t e = 0; e < tensor.elements; ++e) out[static_cast<std::size_t>(e)] = ref::load(v, e, 0);
  return out;
}

void Executor::write(TensorId t, std::span<const float> values) { write_instance(instance(t, 0), values); }

void Executor::write_instance(std::uint32_t id, std::span<const float> values) {
  const TensorId t = flat_.instances[id].tensor;
  const Tensor& tensor = program_.tensors[t];
  MSTPLAN_CHECK(static_cast<std::int64_t>(values.size()) == tensor.elements, "wrong element count for {}",
                tensor_name(program_, t));
  std::vector<unsigned char> bytes(static_cast<std::size_t>(tensor.bytes));
  const View v = ref::contiguous(bytes.data(), tensor.dtype, tensor.elements, 1);
  for (std::int64_t e = 0; e < tensor.elements; ++e) {
    const float x = values[static_cast<std::size_t>(e)];
    const auto i = static_cast<std::size_t>(e);
    if (tensor.dtype == DType::int32) {
      reinterpret_cast<std::int32_t*>(bytes.data())[i] = static_cast<std::int32_t>(x);
    } else if (tensor.dtype == DType::int64) {
      reinterpret_cast<std::int64_t*>(bytes.data())[i] = static_cast<std::int64_t>(x);
    } else {
      ref::store(v, e, 0, x);
    }
  }
  backend_.copy_bytes(instances_[id].block.data, bytes.data(), bytes.size());
}

Executor::Range Executor::update_range(std::int32_t param) const {
  const std::int64_t numel = program_.params[static_cast<std::size_t>(param)].numel();
  if (!setup_.parallel.shards_optimizer()) return {0, numel};
  return setup_.parallel.shard_range(numel, rank_);
}

std::vector<float> Executor::parameter(std::int32_t param) const {
  TensorId weight = kNoTensor, master = kNoTensor;
  for (TensorId t : program_.outputs(program_.ops.front())) {
    const Tensor& tensor = program_.tensors[t];
    if (tensor.param != param) continue;
    if (tensor.kind == TensorKind::weight) weight = t;
    if (tensor.kind == TensorKind::master_weight) master = t;
  }
  MSTPLAN_CHECK(weight != kNoTensor, "no parameter {}", param);
  if (quantized_weight(weight)) {
    // A quantized base weight: its values as the GEMMs see them (dequantized, in fp32).
    const Tensor& tensor = program_.tensors[weight];
    std::vector<std::uint8_t> bytes(static_cast<std::size_t>(tensor.bytes));
    backend_.copy_bytes(bytes.data(), instances_[instance(weight, 0)].block.data, bytes.size());
    const kernels::Quantized q = quantized(param);
    std::vector<float> values(static_cast<std::size_t>(q.rows * q.cols));
    ref::dequantize(q, ref::contiguous(bytes.data(), DType::int8, tensor.bytes, 1),
                    ref::contiguous(values.data(), DType::fp32, q.rows, q.cols));
    return values;
  }
  const TensorId t = master != kNoTensor ? master : weight;
  std::vector<float> values = read(t);
  const Range r = update_range(param);
  // A full tensor (ZeRO-1/2's weights) holds the rank's part at its offset, a shard at 0.
  const std::int64_t at = program_.tensors[t].elements == program_.params[static_cast<std::size_t>(param)].numel() ? r.first : 0;
  return {values.begin() + at, values.begin() + at + r.count};
}

void Executor::set_parameter(std::int32_t param, std::span<const float> values) {
  MSTPLAN_CHECK(statics_ready_, "set_parameter before the first step allocated the parameters");
  MSTPLAN_CHECK(ranks_ == 1, "set_parameter on a rank of {} (one rank only)", ranks_);
  bool found = false;
  for (TensorId t : program_.outputs(program_.ops.front())) {
    const Tensor& tensor = program_.tensors[t];
    if (tensor.param != param || (tensor.kind != TensorKind::weight && tensor.kind != TensorKind::master_weight)) continue;
    found = true;
    if (quantized_weight(t)) {  // quantized from the values given, as at initialisation
      std::vector<std::uint8_t> bytes(static_cast<std::size_t>(tensor.bytes));
      ref::quantize(quantized(param), values.data(), bytes.data());
      backend_.copy_bytes(instances_[instance(t, 0)].block.data, bytes.data(), bytes.size());
      continue;
    }
    write(t, values);
  }
  MSTPLAN_CHECK(found, "no parameter {}", param);
}

bool Executor::quantized_weight(TensorId t) const {
  const Tensor& tensor = program_.tensors[t];
  return setup_.adapter.quantized() && tensor.kind == TensorKind::weight && tensor.dtype == DType::int8 &&
         tensor.param >= 0 && is_layer_linear(program_.params[static_cast<std::size_t>(tensor.param)]);
}

kernels::Quantized Executor::quantized(std::int32_t param) const {
  const ParamTensor& p = program_.params[static_cast<std::size_t>(param)];
  kernels::Quantized q;
  q.format = setup_.adapter.base == BaseFormat::int8  ? kernels::QuantFormat::int8_rows
             : setup_.adapter.base == BaseFormat::fp4 ? kernels::QuantFormat::fp4
                                                      : kernels::QuantFormat::nf4;
  q.double_quant = setup_.adapter.double_quant;
  q.rows = p.rows;
  q.cols = p.cols;
  return q;
}

std::optional<Error> Executor::initialise_statics() {
  // Weights: N(0, 0.02); norm weights near identity; master = the fp32 values; state and
  // persistent gradients 0; the GEMM workspace is left as it is. LoRA adapters: A and B both
  // N(0, 0.02) (PEFT starts B at zero, which would leave A without a gradient to check).
  const bool offset_norms = model_.family == Family::gemma2;
  for (TensorId t : program_.outputs(program_.ops.front())) {
    const Tensor& tensor = program_.tensors[t];
    if (t == program_.gemm_workspace) {
      const Block& b = instances_[instance(t, 0)].block;
      backend_.bind_workspace(b.data, static_cast<std::size_t>(b.requested_bytes));
    }
    if (tensor.kind == TensorKind::workspace || tensor.kind == TensorKind::data) continue;
    void* data = instances_[instance(t, 0)].block.data;
    if (tensor.kind == TensorKind::weight || tensor.kind == TensorKind::master_weight) {
      const ParamTensor& p = program_.params[static_cast<std::size_t>(tensor.param)];
      const std::uint64_t state = options_.seed * 0x100000001B3ull + static_cast<std::uint64_t>(tensor.param) * 7919u + 1;
      const bool norm = p.name.find("norm") != std::string::npos;
      const double mean = norm ? (offset_norms ? 0.0 : 1.0) : 0.0, std = norm ? 0.1 : 0.02;
      if (tensor.elements == p.numel()) {
        backend_.fill_normal(ref::contiguous(data, tensor.dtype, tensor.elements, 1), state, mean, std);
        continue;
      }
      if (quantized_weight(t)) {
        // A quantized base weight: the same N(0, 0.02) values, quantized on the host.
        const kernels::Quantized q = quantized(tensor.param);
        MSTPLAN_CHECK(tensor.bytes == kernels::quantized_bytes(q), "{} holds {} bytes, its layout {}",
                      tensor_name(program_, t), tensor.bytes, kernels::quantized_bytes(q));
        std::vector<float> full(static_cast<std::size_t>(p.numel()));
        ref::fill_normal(ref::contiguous(full.data(), DType::fp32, p.numel(), 1), state, mean, std);
        std::vector<std::uint8_t> bytes(static_cast<std::size_t>(tensor.bytes));
        ref::quantize(q, full.data(), bytes.data());
        backend_.copy_bytes(data, bytes.data(), bytes.size());
        continue;
      }
      // A shard: the one-device values' elements of this rank (Note [Ranks]), then zeros.
      const std::int64_t shard = setup_.parallel.shard_numel(p.numel());
      const auto [first, count] = setup_.parallel.shard_range(p.numel(), rank_);
      MSTPLAN_CHECK(tensor.elements == shard, "{} has {} elements, a shard of {} has {}", tensor_name(program_, t),
                    tensor.elements, p.numel(), shard);
      std::vector<float> full(static_cast<std::size_t>(p.numel()));
      ref::fill_normal(ref::contiguous(full.data(), DType::fp32, p.numel(), 1), state, mean, std);
      std::vector<float> mine(static_cast<std::size_t>(shard), 0.0f);
      std::copy_n(full.begin() + first, count, mine.begin());
      write(t, mine);  // rounded to the tensor's dtype, as fill_normal rounds
      continue;
    }
    // Optimizer state (adam_mv holds m then v: elements count one, bytes both), persistent
    // gradients: zeros, written on the backend.
    backend_.zero(ref::contiguous(data, tensor.dtype, tensor.bytes / dtype_bytes(tensor.dtype), 1));
  }
  statics_ready_ = true;
  return std::nullopt;
}

void Executor::write_data(std::int64_t micro_batch) {
  // Each sequence from its own stream, numbered across micro-batches: batch 2 in one micro-batch
  // and batch 1 in two see the same sequences. Rank r is member r % P of group r / P, P the ranks
  // sharing a sequence (Ulysses' or context parallelism's; Note [Ranks]); the group's micro-batch m holds sequences of micro-batch m x groups + group, and
  // the member positions [member x S_, (member + 1) x S_) of each, with the labels shifted
  // before the split (ALST's): position s is labelled with the token at s + 1, the sequence's
  // last position with none.
  const std::int64_t B = program_.batch, S = program_.seq_len, local = program_.local_seq_len();
  const std::int64_t groups = ranks_ / group_, group = rank_ / group_, first = member_ * local;
  std::vector<float> tokens(static_cast<std::size_t>(B * local)), labels(tokens.size());
  targets_ = 0;
  std::vector<float> seq_tokens(static_cast<std::size_t>(S)), seq_labels(seq_tokens.size());
  for (std::int64_t b = 0; b < B; ++b) {
    const auto sequence = static_cast<std::uint64_t>((micro_batch * groups + group) * B + b);
    std::uint64_t state = options_.seed * 0x2545F4914F6CDD1Dull + sequence * 0x9E3779B97F4A7C15ull + 17;
    for (std::int64_t s = 0; s < S; ++s) {
      const auto i = static_cast<std::size_t>(s);
      seq_tokens[i] = static_cast<float>(splitmix(state) % static_cast<std::uint64_t>(model_.vocab_size));
      seq_labels[i] = uniform01(state) < options_.ignore_fraction ? static_cast<float>(kNoLabel) : seq_tokens[i];
    }
    for (std::int64_t s = 0; s < local; ++s) {
      const auto i = static_cast<std::size_t>(b * local + s);
      const std::int64_t at = first + s;
      tokens[i] = seq_tokens[static_cast<std::size_t>(at)];
      if (group_ == 1) {
        labels[i] = seq_labels[static_cast<std::size_t>(at)];  // the loss shifts them (targets())
        if (s > 0) targets_ += labels[i] != kNoLabel ? 1 : 0;
      } else {
        labels[i] = at + 1 < S ? seq_labels[static_cast<std::size_t>(at + 1)] : static_cast<float>(kNoLabel);
        targets_ += labels[i] != kNoLabel ? 1 : 0;
      }
    }
  }
  // The loss is the mean over the sequence group's labels: every member counts them all.
  group_targets_ = targets_;
  if (group_ > 1) {
    std::vector<std::int64_t> all(static_cast<std::size_t>(ranks_));
    comm_->all_gather(std::span(&targets_, 1), all);
    group_targets_ = 0;
    for (std::int64_t j = group * group_; j < (group + 1) * group_; ++j) group_targets_ += all[static_cast<std::size_t>(j)];
  }
  write(tokens_, tokens);
  write(labels_, labels);
}

Expected<StepReport> Executor::step() {
  allocator_->reset_peaks();
  backend_.reset_device_peaks();
  StepReport report;
  loss_sum_ = 0;
  for (std::int64_t mb = 0; mb < setup_.grad_accum; ++mb) {
    const bool last = mb + 1 == setup_.grad_accum;
    for (std::uint32_t i = 0; i < flat_.ops.size(); ++i) {
      const FlatOp& f = flat_.ops[i];
      const Op& op = program_.ops[f.op];
      allocator_->enter(op.phase, op.layer, i);
      // Allocate what the op writes first.
      for (std::uint32_t x : f.outputs) {
        Instance& inst = instances_[x];
        if (inst.live) continue;
        const Tensor& t = program_.tensors[flat_.instances[x].tensor];
        Expected<Block> b = allocator_->allocate(t.device, t.bytes);
        if (!b) return b.error();
        inst.block = *b;
        inst.live = true;
        fresh_.push_back(x);
      }
      if (f.op == 0 && !statics_ready_) {
        if (auto e = initialise_statics()) return *e;
      }
      if (f.op == 0) write_data(mb);
      if (!options_.memory_only) dispatch(f, last);
      fresh_.clear();
      if (auto failure = backend_.take_error()) {
        return make_error(ErrorKind::invalid, "{} backend, after {}: {}", backend_.name(), op_name(program_, f.op, f.iteration),
                          *failure);
      }
      if (op_hook_) {
        std::vector<std::vector<float>> outputs;
        for (std::uint32_t x : f.outputs) {
          if (program_.tensors[flat_.instances[x].tensor].kind != TensorKind::workspace) outputs.push_back(read_instance(x));
        }
        op_hook_(i, op_name(program_, f.op, f.iteration), outputs);
      }
      if (options_.guard_bytes > 0) {
        if (auto damage = allocator_->check_guards()) {
          return make_error(ErrorKind::invalid, "after {}: {}", op_name(program_, f.op, f.iteration), *damage);
        }
      }
      // Free what the op used last (static tensors live on).
      auto release = [&](std::uint32_t x) {
        Instance& inst = instances_[x];
        if (!inst.live || last_use_[x] != static_cast<std::int64_t>(i) || static_tensor_[flat_.instances[x].tensor]) return;
        allocator_->release(inst.block);
        inst.live = false;
      };
      for (std::uint32_t x : f.inputs) release(x);
      for (std::uint32_t x : f.outputs) release(x);
    }
  }
  if (setup_.optimizer != OptimizerKind::none) ++optimizer_steps_;
  report.loss = loss_sum_;
  if (ranks_ > 1 && !options_.memory_only) {  // the ranks' mean (Note [Ranks])
    float loss = static_cast<float>(loss_sum_);
    comm_->all_reduce_sum(std::span(&loss, 1));
    report.loss = static_cast<double>(loss) / ranks_;
  }
  const PoolStats& d = allocator_->device();
  report.memory.peak_allocated_bytes = d.peak_allocated_bytes;
  report.memory.peak_live_bytes = d.peak_live_bytes;
  report.memory.host_peak_bytes = allocator_->host().peak_allocated_bytes;
  report.memory.phase_peak_bytes = allocator_->phase_peak_bytes();
  report.memory.layer_peak_bytes = allocator_->layer_peak_bytes();
  const FlatOp& at = flat_.ops[allocator_->peak_op()];
  report.memory.peak_at = op_name(program_, at.op, at.iteration);
  report.memory.device = backend_.device_memory();
  return report;
}

}  // namespace mstplan
