#pragma once
// What a launcher returns: ok when its work was enqueued on the stream, else why not, naming the
// kernel: an argument it does not take (a shape, a dtype, a layout) or the CUDA error of the
// launch. No exception crosses the kernel boundary; the CUDA backend turns a failed status into
// the error the executor reports after the op. Plain C++ (no CUDA or fmt headers).
//
//   if (cuda::Status s = cuda::rope(x, head_dim, rope, seq_len, false, stream); !s.ok()) report(s.error);
#include <string>

namespace mstplan::cuda {

struct [[nodiscard]] Status {
  std::string error;  ///< empty: enqueued
  [[nodiscard]] bool ok() const { return error.empty(); }
};

}  // namespace mstplan::cuda
