#include "runtime/backend.h"

#include <cmath>
#include <vector>

namespace mstplan {

void Backend::fill_normal(const View& x, std::uint64_t state, double mean, double std) {
  // The contiguous rows of a freshly allocated tensor: computed here, copied once.
  const std::int64_t n = x.rows() * x.cols;
  std::vector<unsigned char> bytes(static_cast<std::size_t>(n * dtype_bytes(x.dtype)));
  const View host = ref::contiguous(bytes.data(), x.dtype, n, 1);
  for (std::int64_t e = 0; e < n; ++e) {
    const double u = ref::uniform01(state + (2 * static_cast<std::uint64_t>(e) + 1) * ref::kGolden);
    const double v = ref::uniform01(state + (2 * static_cast<std::uint64_t>(e) + 2) * ref::kGolden);
    const double normal = std::sqrt(-2.0 * std::log(u)) * std::cos(6.283185307179586 * v);
    ref::store(host, e, 0, static_cast<float>(mean + std * normal));
  }
  copy_bytes(static_cast<char*>(x.data) + x.first * x.cols * dtype_bytes(x.dtype), bytes.data(), bytes.size());
}

}  // namespace mstplan
