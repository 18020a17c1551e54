// CUDA rotary embedding against its CPU reference twin: every scaling (none, linear, dynamic
// beyond max_position_embeddings, llama3 with its smoothing band), forward and inverse, head_dim
// 64 and 256, one and three heads, contiguous views and chunk views whose positions start at 7
// and at 1000 (the angle grows with the position). Whole buffers are compared: rows outside the
// view must be left as they were.
//
// Tolerances (test::max_error: |a - b| / max(1, |b|) elementwise):
//  - The inverse frequencies are computed on the host by the same code as the reference's and the
//    rotation is the same fp32 operations (no FMA), so results are bit-exact unless the device's
//    double cos / sin (within 2 ulp of double) round to another float than glibc's, which takes
//    a double within ~2^-52 of a float rounding boundary: then cos or sin moves by one float ulp
//    (2^-24), i.e. about 5 * 2^-24 < 1e-6 of an output for |x| <= 5. fp32: 1e-6.
//  - bf16: such a difference may cross a bf16 rounding boundary: one bf16 ulp, at most 2^-7 of
//    max(1, |b|).
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cuda/rope.cuh"
#include "tests/cuda/cuda_test_util.h"

namespace mstplan {
namespace {

using i64 = std::int64_t;
using test::DeviceTensor;
using test::HostTensor;
using test::max_error;

constexpr double kBf16Ulp = 1.0 / 128;
constexpr double kFp32 = 1e-6;

using test::buffer_rows;
using test::Layout;
using test::shaped;

struct Scaling {
  const char* name;
  ref::Rope rope;
  i64 seq_len;
};

std::vector<Scaling> scalings() {
  std::vector<Scaling> all;
  ref::Rope none;
  none.theta = 10000.0;
  all.push_back({"none", none, 64});

  ref::Rope linear;
  linear.theta = 10000.0;
  linear.scaling = ref::RopeScaling::linear;
  linear.factor = 4.0;
  all.push_back({"linear", linear, 64});

  ref::Rope dynamic;  // seq_len 100 > max_position_embeddings 64: the base changes
  dynamic.theta = 10000.0;
  dynamic.scaling = ref::RopeScaling::dynamic;
  dynamic.factor = 2.0;
  dynamic.max_position_embeddings = 64;
  all.push_back({"dynamic", dynamic, 100});

  ref::Rope dynamic_short = dynamic;  // within max_position_embeddings: as none
  all.push_back({"dynamic within", dynamic_short, 32});

  ref::Rope llama3;  // wavelengths 2pi .. ~2e6: below, inside and above the band [2048, 8192]
  llama3.theta = 500000.0;
  llama3.scaling = ref::RopeScaling::llama3;
  llama3.factor = 8.0;
  llama3.low_freq_factor = 1.0;
  llama3.high_freq_factor = 4.0;
  llama3.original_max_position_embeddings = 8192;
  all.push_back({"llama3", llama3, 2048});
  return all;
}

TEST(CUDA_Rope, MatchesReference) {
  MSTPLAN_REQUIRE_CUDA();
  const std::vector<Layout> layouts = {
      {1, 1, 1, 0},        // one row at position 0
      {1, 37, 37, 0},      // positions 0..36
      {2, 13, 40, 7},      // chunk: positions 7..19 of two sequences
      {2, 5, 6, 1000},     // chunk: positions 1000..1004 of two sequences
  };
  std::uint64_t seed = 1;
  for (const DType dtype : {DType::bf16, DType::fp32}) {
    const double tol = dtype == DType::bf16 ? kBf16Ulp : kFp32;
    for (const i64 head_dim : {i64{64}, i64{256}}) {
      for (const i64 heads : {i64{1}, i64{3}}) {
        for (const Layout& l : layouts) {
          for (const Scaling& s : scalings()) {
            for (const bool inverse : {false, true}) {
              // Ulysses' ranks count positions from their share's start (Rope::first_position).
              const i64 first_position = inverse ? 333 : 0;
              ref::Rope rp = s.rope;
              rp.first_position = first_position;
              HostTensor x(dtype, buffer_rows(l), heads * head_dim, seed++);
              DeviceTensor dx(x);
              const ref::View xv = shaped(x, l);
              ref::rope(xv, head_dim, rp, s.seq_len, inverse);
              cuda::Rope r;
              r.theta = s.rope.theta;
              r.scaling = s.rope.scaling;
              r.factor = s.rope.factor;
              r.low_freq_factor = s.rope.low_freq_factor;
              r.high_freq_factor = s.rope.high_freq_factor;
              r.original_max_position_embeddings = s.rope.original_max_position_embeddings;
              r.max_position_embeddings = s.rope.max_position_embeddings;
              r.first_position = first_position;
              EXPECT_LAUNCHED(cuda::rope(dx.like(xv), head_dim, r, s.seq_len, inverse, nullptr));
              ASSERT_EQ(cudaGetLastError(), cudaSuccess);
              EXPECT_LE(max_error(dx.download(), x), tol)
                  << (dtype == DType::bf16 ? "bf16" : "fp32") << " head_dim " << head_dim << " heads " << heads
                  << " first " << l.first << " positions " << l.positions << " seqs " << l.seqs << " scaling "
                  << s.name << " inverse " << inverse << " first_position " << first_position;
            }
          }
        }
      }
    }
  }
}

// Forward then inverse on the device gives x back (to rounding): the two launches agree on angles.
TEST(CUDA_Rope, InverseUndoesForward) {
  MSTPLAN_REQUIRE_CUDA();
  const Layout l{2, 13, 40, 7};
  HostTensor x(DType::fp32, buffer_rows(l), 2 * 128, 77);
  DeviceTensor dx(x);
  const ref::View xv = shaped(x, l);
  cuda::Rope r;
  r.theta = 10000.0;
  EXPECT_LAUNCHED(cuda::rope(dx.like(xv), 128, r, 64, false, nullptr));
  EXPECT_LAUNCHED(cuda::rope(dx.like(xv), 128, r, 64, true, nullptr));
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  // Two rotations of |x| <= 5 in fp32: a few ulp of 5 each.
  EXPECT_LE(max_error(dx.download(), x), 1e-5);
}

// An argument the kernel does not take comes back as a status naming the kernel and the rule,
// with nothing launched: no exception crosses the kernel boundary.
TEST(CUDA_Rope, BadArgumentsComeBackAsAStatus) {
  MSTPLAN_REQUIRE_CUDA();
  HostTensor x(DType::fp32, 4, 2 * 7, 5);
  DeviceTensor dx(x);
  cuda::Rope r;
  r.theta = 10000.0;
  const cuda::Status odd = cuda::rope(dx.view(), 7, r, 4, false, nullptr);  // head_dim 7: not even
  EXPECT_FALSE(odd.ok());
  EXPECT_NE(odd.error.find("rope: head_dim must be even"), std::string::npos) << odd.error;
  EXPECT_EQ(max_error(dx.download(), x), 0.0);  // untouched
  EXPECT_LAUNCHED(cuda::rope(dx.view(), 14, r, 4, false, nullptr));  // and the next launch is ok
}

}  // namespace
}  // namespace mstplan
