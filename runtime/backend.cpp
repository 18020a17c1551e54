#include "runtime/backend.h"

#include <vector>

namespace mstplan {

void Backend::fill_normal(const View& x, std::uint64_t state, double mean, double std) {
  // The contiguous rows of a freshly allocated tensor: computed here, copied once.
  const std::int64_t n = x.rows() * x.cols;
  std::vector<unsigned char> bytes(static_cast<std::size_t>(n * dtype_bytes(x.dtype)));
  ref::fill_normal(ref::contiguous(bytes.data(), x.dtype, n, 1), state, mean, std);
  copy_bytes(static_cast<char*>(x.data) + x.first * x.cols * dtype_bytes(x.dtype), bytes.data(), bytes.size());
}

}  // namespace mstplan
