// MPI_COMM_WORLD as a Communicator (Open MPI from Debian's libopenmpi-dev).
#include <mpi.h>

#include <cstdlib>

#include "runtime/communicator.h"

namespace mstplan {
namespace {

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator() {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
  }
  [[nodiscard]] int rank() const override { return rank_; }
  [[nodiscard]] int size() const override { return size_; }
  [[nodiscard]] std::string name() const override { return "mpi"; }
  void all_gather(std::span<const float> mine, std::span<float> all) override {
    MSTPLAN_CHECK(all.size() == mine.size() * static_cast<std::size_t>(size_), "all_gather of {} into {}", mine.size(),
                  all.size());
    check(MPI_Allgather(mine.data(), count(mine.size()), MPI_FLOAT, all.data(), count(mine.size()), MPI_FLOAT,
                        MPI_COMM_WORLD),
          "MPI_Allgather");
  }
  void all_gather(std::span<const std::int64_t> mine, std::span<std::int64_t> all) override {
    MSTPLAN_CHECK(all.size() == mine.size() * static_cast<std::size_t>(size_), "all_gather of {} into {}", mine.size(),
                  all.size());
    check(MPI_Allgather(mine.data(), count(mine.size()), MPI_INT64_T, all.data(), count(mine.size()), MPI_INT64_T,
                        MPI_COMM_WORLD),
          "MPI_Allgather");
  }
  void all_to_all(std::span<const float> send, std::span<float> recv) override {
    MSTPLAN_CHECK(send.size() == recv.size() && send.size() % static_cast<std::size_t>(size_) == 0,
                  "all_to_all of {} into {}", send.size(), recv.size());
    const int block = count(send.size() / static_cast<std::size_t>(size_));
    check(MPI_Alltoall(send.data(), block, MPI_FLOAT, recv.data(), block, MPI_FLOAT, MPI_COMM_WORLD), "MPI_Alltoall");
  }

 private:
  static int count(std::size_t n) {
    MSTPLAN_CHECK(n <= static_cast<std::size_t>(INT32_MAX), "{} values in one MPI call", n);
    return static_cast<int>(n);
  }
  // MPI's default error handler aborts the job on failure; this names the call if it returns.
  static void check(int code, const char* call) { MSTPLAN_CHECK(code == MPI_SUCCESS, "{} failed with code {}", call, code); }
  int rank_ = 0, size_ = 1;
};

void finalize() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

}  // namespace

Expected<Communicator*> mpi_world() {
  static MpiCommunicator* world = [] {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      MPI_Init(nullptr, nullptr);
      std::atexit(finalize);
    }
    return new MpiCommunicator();  // lives until exit, as MPI does
  }();
  return world;
}

}  // namespace mstplan
