#include "runtime/communicator.h"

#include <algorithm>
#include <cstdlib>
#include <vector>

namespace mstplan {

void Communicator::all_reduce_sum(std::span<float> values) {
  const std::size_t n = values.size();
  std::vector<float> all(n * static_cast<std::size_t>(size()));
  all_gather(values, all);
  for (std::size_t e = 0; e < n; ++e) {
    float sum = all[e];
    for (std::size_t r = 1; r < static_cast<std::size_t>(size()); ++r) sum += all[r * n + e];
    values[e] = sum;
  }
}

namespace {
class SelfCommunicator final : public Communicator {
 public:
  [[nodiscard]] int rank() const override { return 0; }
  [[nodiscard]] int size() const override { return 1; }
  [[nodiscard]] std::string name() const override { return "self"; }
  void all_gather(std::span<const float> mine, std::span<float> all) override { std::copy(mine.begin(), mine.end(), all.begin()); }
  void all_gather(std::span<const std::int64_t> mine, std::span<std::int64_t> all) override {
    std::copy(mine.begin(), mine.end(), all.begin());
  }
  void all_to_all(std::span<const float> send, std::span<float> recv) override { std::copy(send.begin(), send.end(), recv.begin()); }
};
}  // namespace

std::unique_ptr<Communicator> make_self_communicator() { return std::make_unique<SelfCommunicator>(); }

bool launched_by_mpi() {
  // Open MPI's mpirun, MPICH's Hydra (PMI), and Slurm's srun with PMIx set these.
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"}) {
    if (std::getenv(v) != nullptr) return true;
  }
  return false;
}

}  // namespace mstplan
