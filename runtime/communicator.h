#pragma once
// The ranks of a multi-GPU plan and the collectives between them, as the executor runs them.
//
// A plan with setup.parallel.gpus = N > 1 is one rank's step (Note [Sharded step] in
// planner/builder.cpp): N processes each run it, each with a Communicator of size N. On the CPU
// backend the ranks are MPI processes (`mpirun -np N`, make_mpi_communicator()); the CUDA backend
// would use NCCL (ncclAllGather, ncclReduceScatter, ncclAllReduce, and ncclSend/ncclRecv groups for
// the all-to-all) over device pointers, which is the next step and not built.
//
// Values travel as fp32 (bf16 and fp32 tensors round-trip exactly); the executor rounds results
// to the tensor's dtype. A sum over the ranks is computed on every rank from the gathered
// contributions in rank order, so every rank gets the same bits (MPI_Allreduce does not promise
// that), and the order is the one the tests' single-device reference accumulates in.
//
//   Expected<std::unique_ptr<Communicator>> world = make_mpi_communicator();  // under mpirun
//   RunOptions o; o.communicator = world->get();
//   Executor::create(model, setup_with_gpus_4, plan, seq, cpu, o);
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "planner/error.h"

namespace mstplan {

class Communicator {
 public:
  virtual ~Communicator() = default;
  [[nodiscard]] virtual int rank() const = 0;
  [[nodiscard]] virtual int size() const = 0;
  [[nodiscard]] virtual std::string name() const = 0;
  /// Every rank's `mine` (the same length on each), concatenated in rank order into `all`
  /// (size() x mine.size() values).
  virtual void all_gather(std::span<const float> mine, std::span<float> all) = 0;
  /// The same for 64-bit integers (byte counts, verdicts).
  virtual void all_gather(std::span<const std::int64_t> mine, std::span<std::int64_t> all) = 0;
  /// `send` is size() equal blocks, block j for rank j; `recv` gets block rank() of every rank j,
  /// as block j.
  virtual void all_to_all(std::span<const float> send, std::span<float> recv) = 0;
  /// The element-wise sum over the ranks, in place, added in rank order (0 + 1 + ... + N-1).
  void all_reduce_sum(std::span<float> values);
};

/// One rank alone: every collective is the identity.
[[nodiscard]] std::unique_ptr<Communicator> make_self_communicator();

/// MPI_COMM_WORLD, initialising MPI on the first call (finalised at exit). Fails with the reason
/// when this build has no MPI (libopenmpi-dev missing at configure time).
[[nodiscard]] Expected<Communicator*> mpi_world();

/// Whether this process was started by an MPI launcher (mpirun's environment), without
/// initialising MPI.
[[nodiscard]] bool launched_by_mpi();

}  // namespace mstplan
