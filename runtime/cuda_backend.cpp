// The CUDA backend (see cuda_backend.h): host code on the CUDA runtime API, compiled by the C++
// compiler; the kernels are in kernels/cuda/ (nvcc), reached through their launchers.
#include "runtime/cuda_backend.h"

#include <cuda_runtime_api.h>

#include <fmt/format.h>

#include <exception>

#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/cross_entropy.cuh"
#include "kernels/cuda/eager.cuh"
#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/gemm.cuh"
#include "kernels/cuda/init.cuh"
#include "kernels/cuda/norm.cuh"
#include "kernels/cuda/optimizer.cuh"
#include "kernels/cuda/rope.cuh"

namespace mstplan {
namespace {

cuda::DType to_cuda(DType d) {
  switch (d) {
    case DType::bf16: return cuda::DType::bf16;
    case DType::fp32: return cuda::DType::fp32;
    case DType::int32: return cuda::DType::int32;
    case DType::int64: return cuda::DType::int64;
    case DType::fp16:
    case DType::int8: break;
  }
  MSTPLAN_CHECK(false, "the CUDA kernels take bf16, fp32, int32 or int64 views, not {}", to_string(d));
  return cuda::DType::fp32;
}

cuda::View cv(const View& v) { return {v.data, to_cuda(v.dtype), v.cols, v.seqs, v.positions, v.seq_stride, v.first}; }


bool contiguous_rows(const View& v) { return v.seqs == 1 || v.seq_stride == v.positions; }

std::int64_t used_bytes() {
  std::size_t free = 0, total = 0;
  if (cudaMemGetInfo(&free, &total) != cudaSuccess) return 0;
  return static_cast<std::int64_t>(total - free);
}

class CudaBackend final : public Backend {
 public:
  CudaBackend(cudaStream_t stream, cudaMemPool_t pool, DeviceMemoryReport base)
      : stream_(stream), pool_(pool), base_(std::move(base)) {
    const std::int64_t before = used_bytes();
    gemm_ = std::make_unique<cuda::Gemm>();
    base_.library_bytes = used_bytes() - before;
  }
  ~CudaBackend() override {
    cudaStreamSynchronize(stream_);
    gemm_.reset();
    cudaStreamDestroy(stream_);
  }

  [[nodiscard]] bool gemm_ok() const { return gemm_->ok(); }
  [[nodiscard]] std::string_view name() const override { return "cuda"; }

  [[nodiscard]] void* allocate(Device where, std::size_t bytes) override {
    void* p = nullptr;
    const std::size_t n = bytes == 0 ? 256 : bytes;
    if (where == Device::host) {
      // Offloaded checkpoints: pinned, so copies run at the link's speed and kernels may read them.
      if (cudaMallocHost(&p, n) != cudaSuccess) {
        cudaGetLastError();
        return nullptr;
      }
      return p;
    }
    if (cudaMallocFromPoolAsync(&p, n, pool_, stream_) != cudaSuccess) {
      cudaGetLastError();  // out of memory is an answer, not a sticky error
      return nullptr;
    }
    return p;
  }
  void release(Device where, void* pointer, std::size_t) override {
    if (where == Device::host) {
      cudaStreamSynchronize(stream_);  // no queued kernel may still read it
      note(cudaFreeHost(pointer), "cudaFreeHost");
    } else {
      note(cudaFreeAsync(pointer, stream_), "cudaFreeAsync");
    }
  }
  [[nodiscard]] bool host_accessible() const override { return false; }
  void copy_bytes(void* dst, const void* src, std::size_t bytes) override {
    note(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream_), "cudaMemcpyAsync");
    note(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }
  void bind_workspace(void* data, std::size_t bytes) override { gemm_->bind_workspace(data, bytes); }
  [[nodiscard]] std::optional<std::string> take_error() override {
    if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess && !error_) {
      error_ = fmt::format("{}: {}", cudaGetErrorName(e), cudaGetErrorString(e));
    }
    std::optional<std::string> out = std::move(error_);
    error_.reset();
    return out;
  }
  [[nodiscard]] std::optional<DeviceMemoryReport> device_memory() override {
    cudaStreamSynchronize(stream_);
    DeviceMemoryReport r = base_;
    std::uint64_t used = 0, reserved = 0;
    cudaMemPoolGetAttribute(pool_, cudaMemPoolAttrUsedMemHigh, &used);
    cudaMemPoolGetAttribute(pool_, cudaMemPoolAttrReservedMemHigh, &reserved);
    r.pool_used_high_bytes = static_cast<std::int64_t>(used);
    r.pool_reserved_high_bytes = static_cast<std::int64_t>(reserved);
    r.used_after_bytes = used_bytes();
    return r;
  }
  void reset_device_peaks() override {
    cudaStreamSynchronize(stream_);
    std::uint64_t zero = 0;
    cudaMemPoolSetAttribute(pool_, cudaMemPoolAttrUsedMemHigh, &zero);
    cudaMemPoolSetAttribute(pool_, cudaMemPoolAttrReservedMemHigh, &zero);
  }

  void fill_normal(const View& x, std::uint64_t state, double mean, double std) override {
    note(cuda::fill_normal(cv(x), state, mean, std, stream_));
  }
  void matmul_xwt(const View& x, const View& w, const std::optional<View>& bias, const View& y, bool accumulate) override {
    const cuda::View b = bias ? cv(*bias) : cuda::View{};
    note(gemm_->xwt(cv(x), cv(w), bias ? &b : nullptr, cv(y), accumulate, stream_));
  }
  void matmul_xw(const View& dy, const View& w, const View& dx, bool accumulate) override {
    note(gemm_->xw(cv(dy), cv(w), cv(dx), accumulate, stream_));
  }
  void matmul_dw(const View& dy, const View& x, const View& dw, bool accumulate) override {
    note(gemm_->dw(cv(dy), cv(x), cv(dw), accumulate, stream_));
  }
  void bias_grad(const View& dy, const View& db, bool accumulate) override {
    note(cuda::bias_grad(cv(dy), cv(db), accumulate, stream_));
  }
  void rmsnorm_forward(const View& x, const View& w, float eps, float offset, const View& y, const View& rstd) override {
    note(cuda::rmsnorm_forward(cv(x), cv(w), eps, offset, cv(y), cv(rstd), stream_));
  }
  void rmsnorm_apply(const View& x, const View& rstd, const View& w, float offset, const View& y) override {
    note(cuda::rmsnorm_apply(cv(x), cv(rstd), cv(w), offset, cv(y), stream_));
  }
  void rmsnorm_backward(const View& dy, const View& x, const View& rstd, const View& w, float offset,
                        const std::optional<View>& residual, const View& dx, const std::optional<View>& dw,
                        bool dw_accumulate) override {
    const cuda::View r = residual ? cv(*residual) : cuda::View{};
    const cuda::View g = dw ? cv(*dw) : cuda::View{};
    note(cuda::rmsnorm_backward(cv(dy), cv(x), cv(rstd), cv(w), offset, residual ? &r : nullptr, cv(dx), dw ? &g : nullptr,
                  dw_accumulate, stream_));
  }
  void rope(const View& x, std::int64_t head_dim, const Rope& r, std::int64_t seq_len, bool inverse) override {
    note(cuda::rope(cv(x), head_dim, r, seq_len, inverse, stream_));
  }
  void attention_forward(const AttentionShape& s, const View& q, const View& k, const View& v, const View& o,
                         const View& lse) override {
    note(cuda::attention_forward(s, cv(q), cv(k), cv(v), cv(o), cv(lse), stream_));
  }
  void attention_backward(const AttentionShape& s, const View& q, const View& k, const View& v, const View& o,
                          const View& lse, const View& dout, const View& dq, const View& dk, const View& dv,
                          const View& dq_accum, const View& delta) override {
    note(cuda::attention_backward(s, cv(q), cv(k), cv(v), cv(o), cv(lse), cv(dout), cv(dq), cv(dk), cv(dv), cv(dq_accum),
                    cv(delta), stream_));
  }
  void eager_scores(const AttentionShape& s, const View& q, const View& k, const View& scores) override {
    note(cuda::eager_scores(s, cv(q), cv(k), cv(scores), stream_));
  }
  void eager_softmax(const View& scores, const View& probs) override {
    note(cuda::eager_softmax(cv(scores), cv(probs), stream_));
  }
  void eager_pv(const AttentionShape& s, const View& probs, const View& v, const View& o) override {
    note(cuda::eager_pv(s, cv(probs), cv(v), cv(o), stream_));
  }
  void eager_dprobs(const AttentionShape& s, const View& dout, const View& v, const View& dprobs) override {
    note(cuda::eager_dprobs(s, cv(dout), cv(v), cv(dprobs), stream_));
  }
  void eager_dv(const AttentionShape& s, const View& probs, const View& dout, const View& dv) override {
    note(cuda::eager_dv(s, cv(probs), cv(dout), cv(dv), stream_));
  }
  void eager_softmax_backward(const View& probs, const View& dprobs, const View& dscores) override {
    note(cuda::eager_softmax_backward(cv(probs), cv(dprobs), cv(dscores), stream_));
  }
  void eager_dq(const AttentionShape& s, const View& dscores, const View& k, const View& dq) override {
    note(cuda::eager_dq(s, cv(dscores), cv(k), cv(dq), stream_));
  }
  void eager_dk(const AttentionShape& s, const View& dscores, const View& q, const View& dk) override {
    note(cuda::eager_dk(s, cv(dscores), cv(q), cv(dk), stream_));
  }
  void gated_forward(GatedActivation a, const View& g, const View& u, const View& out) override {
    note(cuda::gated_forward(a, cv(g), cv(u), cv(out), stream_));
  }
  void gated_backward(GatedActivation a, const View& dout, const View& g, const View& u, const View& dg,
                      const View& du) override {
    note(cuda::gated_backward(a, cv(dout), cv(g), cv(u), cv(dg), cv(du), stream_));
  }
  void add(const View& a, const View& b, const View& out) override {
    note(cuda::add(cv(a), cv(b), cv(out), stream_));
  }
  void scale(const View& x, float s, const View& out) override { note(cuda::scale(cv(x), s, cv(out), stream_)); }
  void dequantize(const kernels::Quantized& q, const View& bytes, const View& out) override {
    note(cuda::dequantize(q, bytes.data, cv(out), stream_));
  }
  void softcap(const View& x, float cap) override {
    note(cuda::softcap(cv(x), cap, stream_));
  }
  void copy(const View& src, const View& dst) override {
    // Offload and its return: one DMA copy when both sides are plain blocks of one dtype.
    if (src.dtype == dst.dtype && contiguous_rows(src) && contiguous_rows(dst) && src.cols == dst.cols &&
        src.rows() == dst.rows()) {
      const std::size_t row_bytes = static_cast<std::size_t>(src.cols * dtype_bytes(src.dtype));
      const auto* from = static_cast<const char*>(src.data) + static_cast<std::size_t>(src.first) * row_bytes;
      auto* to = static_cast<char*>(dst.data) + static_cast<std::size_t>(dst.first) * row_bytes;
      note(cudaMemcpyAsync(to, from, static_cast<std::size_t>(src.rows()) * row_bytes, cudaMemcpyDefault, stream_),
           "cudaMemcpyAsync");
      return;
    }
    note(cuda::copy(cv(src), cv(dst), stream_));
  }
  void zero(const View& x) override {
    note(cuda::zero(cv(x), stream_));
  }
  void embedding_forward(const View& tokens, const View& table, float scale, const View& out) override {
    note(cuda::embedding_forward(cv(tokens), cv(table), scale, cv(out), stream_));
  }
  void embedding_backward(const View& dout, const View& tokens, float scale, const View& dtable) override {
    note(cuda::embedding_backward(cv(dout), cv(tokens), scale, cv(dtable), stream_));
  }
  void cross_entropy_forward(const View& logits, const View& targets, float scale, float cap, float* loss,
                             const std::optional<View>& lse, const std::optional<View>& dlogits) override {
    const cuda::View l = lse ? cv(*lse) : cuda::View{};
    const cuda::View d = dlogits ? cv(*dlogits) : cuda::View{};
    note(cuda::cross_entropy_forward(cv(logits), cv(targets), scale, cap, loss, lse ? &l : nullptr, dlogits ? &d : nullptr,
                       stream_));
  }
  void cross_entropy_backward(const View& logits, const View& lse, const View& targets, float scale, float cap,
                              const View& dlogits) override {
    note(cuda::cross_entropy_backward(cv(logits), cv(lse), cv(targets), scale, cap, cv(dlogits), stream_));
  }
  void adamw(const AdamW& o, const View& g, const View& w, const View& m, const View& v,
             const std::optional<View>& master) override {
    const cuda::View mw = master ? cv(*master) : cuda::View{};
    note(cuda::adamw(o, cv(g), cv(w), cv(m), cv(v), master ? &mw : nullptr, stream_));
  }
  void sgd(float lr, float weight_decay, const View& g, const View& w, const std::optional<View>& master) override {
    const cuda::View mw = master ? cv(*master) : cuda::View{};
    note(cuda::sgd(lr, weight_decay, cv(g), cv(w), master ? &mw : nullptr, stream_));
  }

 private:
  // A launcher's status: a failure (an argument it does not take, or a failed launch) becomes the
  // error the executor reports after this op; the first one of an op wins.
  void note(const cuda::Status& s) {
    if (!s.ok() && !error_) error_ = s.error;
  }
  void note(cudaError_t e, const char* what) {
    if (e != cudaSuccess && !error_) error_ = fmt::format("{}: {}", what, cudaGetErrorString(e));
  }

  cudaStream_t stream_;
  cudaMemPool_t pool_;
  DeviceMemoryReport base_;
  std::unique_ptr<cuda::Gemm> gemm_;
  std::optional<std::string> error_;
};

Error cuda_error(cudaError_t e, const char* what) {
  cudaGetLastError();
  return Error{ErrorKind::unsupported, fmt::format("CUDA backend: {}: {} ({})", what, cudaGetErrorString(e), cudaGetErrorName(e))};
}

}  // namespace

bool cuda_backend_compiled() { return true; }

Expected<std::unique_ptr<Backend>> make_cuda_backend(int device) {
  int count = 0;
  if (const cudaError_t e = cudaGetDeviceCount(&count); e != cudaSuccess) return cuda_error(e, "no usable CUDA device");
  if (device < 0 || device >= count) {
    return make_error(ErrorKind::unsupported, "CUDA backend: device {} requested, {} visible", device, count);
  }
  if (const cudaError_t e = cudaSetDevice(device); e != cudaSuccess) return cuda_error(e, "cudaSetDevice");
  if (const cudaError_t e = cudaFree(nullptr); e != cudaSuccess) return cuda_error(e, "creating the context");
  DeviceMemoryReport base;
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) == cudaSuccess) base.device = prop.name;
  std::size_t free = 0, total = 0;
  if (const cudaError_t e = cudaMemGetInfo(&free, &total); e != cudaSuccess) return cuda_error(e, "cudaMemGetInfo");
  base.total_bytes = static_cast<std::int64_t>(total);
  base.context_bytes = static_cast<std::int64_t>(total - free);
  cudaStream_t stream = nullptr;
  if (const cudaError_t e = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking); e != cudaSuccess) {
    return cuda_error(e, "cudaStreamCreate");
  }
  // The device's default pool, told to keep what it reserved (a caching allocator's behaviour:
  // the reserved high-water mark is then what the step needed from the device).
  cudaMemPool_t pool = nullptr;
  if (const cudaError_t e = cudaDeviceGetDefaultMemPool(&pool, device); e != cudaSuccess) {
    cudaStreamDestroy(stream);
    return cuda_error(e, "cudaDeviceGetDefaultMemPool (stream-ordered allocation unsupported?)");
  }
  std::uint64_t keep = UINT64_MAX;
  cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep);
  auto backend = std::make_unique<CudaBackend>(stream, pool, base);
  if (!backend->gemm_ok()) return make_error(ErrorKind::unsupported, "CUDA backend: cublasLtCreate failed");
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace mstplan
