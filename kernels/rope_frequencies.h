#pragma once
// RoPE's inverse frequencies, shared by the CPU reference and the CUDA launcher so that both
// rotate by the same angles (plain C++: nvcc may include it). Callers validate the parameters
// first (dynamic needs max_position_embeddings; llama3 needs original_max_position_embeddings
// and distinct frequency factors).
#include <cmath>
#include <cstdint>
#include <numbers>

#include "kernels/boundary.h"

namespace mstplan::kernels {

/// Writes head_dim / 2 inverse frequencies to `out`, in double.
inline void rope_inverse_frequencies(const Rope& rope, std::int64_t head_dim, std::int64_t seq_len, double* out) {
  const std::int64_t half = head_dim / 2;
  const auto dim = static_cast<double>(head_dim);
  // Dynamic NTK changes the base beyond max_position_embeddings.
  double base = rope.theta;
  if (rope.scaling == RopeScaling::dynamic && seq_len > rope.max_position_embeddings) {
    const double ratio = rope.factor * static_cast<double>(seq_len) / static_cast<double>(rope.max_position_embeddings);
    base = rope.theta * std::pow(ratio - (rope.factor - 1.0), dim / (dim - 2.0));
  }
  for (std::int64_t i = 0; i < half; ++i) {
    double f = 1.0 / std::pow(base, static_cast<double>(2 * i) / dim);
    if (rope.scaling == RopeScaling::linear) f /= rope.factor;
    if (rope.scaling == RopeScaling::llama3) {  // transformers' _compute_llama3_parameters
      const auto orig = static_cast<double>(rope.original_max_position_embeddings);
      const double low_freq_wavelen = orig / rope.low_freq_factor;
      const double high_freq_wavelen = orig / rope.high_freq_factor;
      const double wavelen = 2.0 * std::numbers::pi / f;
      if (wavelen > low_freq_wavelen) {
        f /= rope.factor;
      } else if (wavelen >= high_freq_wavelen) {
        const double smooth = (orig / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor);
        f = (1.0 - smooth) * f / rope.factor + smooth * f;
      }
    }
    out[i] = f;
  }
}

}  // namespace mstplan::kernels
