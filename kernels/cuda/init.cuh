#pragma once
// Initialisation on the device: the normal values of Backend::fill_normal (runtime/backend.h),
// element by element from the counter-based stream, so that a model of billions of parameters
// is initialised in milliseconds with the values the CPU backend gives.
#include <cstdint>

#include "kernels/cuda/status.h"
#include "kernels/cuda/view.h"

namespace mstplan::cuda {

/// x[e] = mean + std * n_e over the view's rows in order (see Backend::fill_normal).
Status fill_normal(const View& x, std::uint64_t state, double mean, double std, cudaStream_t stream);

}  // namespace mstplan::cuda
