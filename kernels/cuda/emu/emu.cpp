// The CUDA emulation's scheduler (fibers, barriers, shuffles, launch limits) and the runtime calls
// the launchers and tests make. See emu.h for what it models.
#include "kernels/cuda/emu/emu.h"

#include <sys/mman.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif

#include <bit>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>
#include <memory>
#include <new>
#include <vector>

#if !defined(__x86_64__)
#error "the CUDA emulation's fiber switch is written for x86-64 (kernels/CMakeLists.txt builds it there only)"
#endif

// mstplan_emu_switch(&from_sp, to_sp): pushes the callee-saved registers (System V x86-64) on the
// running stack, stores its pointer in from_sp, loads to_sp and pops what that stack saved: the
// fiber switch (swapcontext's work without its signal-mask system call, ~100x faster).
extern "C" void mstplan_emu_switch(void** from_sp, void* to_sp);
asm(R"(
  .text
  .globl mstplan_emu_switch
  .type mstplan_emu_switch, @function
mstplan_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size mstplan_emu_switch, .-mstplan_emu_switch
)");

namespace mstplan::emu {
namespace {

// Limits of the H100 (compute capability 9.0), the GPU the device runs use: threads per block,
// grid dimensions, dynamic shared memory without and with cudaFuncSetAttribute's opt-in.
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr unsigned kMaxBlockZ = 64;
constexpr unsigned kMaxGridYZ = 65535;
constexpr std::size_t kDefaultSharedBytes = 48 * 1024;
constexpr std::size_t kMaxOptInSharedBytes = 227 * 1024;

// Each fiber's stack, with a PROT_NONE guard page below it so that an overflow faults at once.
constexpr std::size_t kStackBytes = 256 * 1024;

/// An invariant of the emulation or a kernel bug it detects: the message on stderr, then abort.
[[noreturn]] [[gnu::format(printf, 1, 2)]] void die(const char* format, ...) {
  std::fprintf(stderr, "CUDA emulation: ");
  va_list args;
  va_start(args, format);
  std::vfprintf(stderr, format, args);
  va_end(args);
  std::fprintf(stderr, "\n");
  std::abort();
}

class Stack {
 public:
  Stack() {
    const auto page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    guard_ = page;
    base_ = mmap(nullptr, kStackBytes + guard_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base_ == MAP_FAILED) die("cannot map a fiber stack");
    if (mprotect(base_, guard_, PROT_NONE) != 0) die("cannot protect a fiber stack's guard page");
  }
  ~Stack() { munmap(base_, kStackBytes + guard_); }
  Stack(const Stack&) = delete;
  Stack& operator=(const Stack&) = delete;
  [[nodiscard]] void* bottom() const { return static_cast<char*>(base_) + guard_; }

 private:
  void* base_ = nullptr;
  std::size_t guard_ = 0;
};

enum class State : std::uint8_t { runnable, at_block_barrier, at_warp_barrier, exited };

struct Fiber {
  void* sp = nullptr;  ///< the saved stack pointer while not running
  void* stack = nullptr;
  ThreadCoords coords;
  State state = State::runnable;
  unsigned linear = 0;
};

struct Warp {
  unsigned present = 0;  ///< lanes that exist (a last partial warp has fewer)
  unsigned exited = 0;
  int arrived = 0;
  std::uint64_t slots[32] = {};
};

struct Block {
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  int live = 0;
  int arrived = 0;  ///< at __syncthreads
  std::vector<std::byte> shared;
  void* scheduler_sp = nullptr;
  unsigned running = 0;
  ThreadBody body = nullptr;
  const void* launch = nullptr;
  const char* kernel_name = "";
};

struct Emulator {
  std::vector<std::unique_ptr<Stack>> stacks;
  const void* scheduler_stack = nullptr;  ///< AddressSanitizer's view of the launching thread's stack
  std::size_t scheduler_stack_bytes = 0;
  Block* block = nullptr;
  cudaError_t last_error = cudaSuccess;
  std::uint64_t launches = 0;
  std::map<const void*, std::size_t> max_shared_bytes;  ///< cudaFuncSetAttribute's opt-in
};

Emulator& emulator() {
  thread_local Emulator e;
  return e;
}

Block& current_block() {
  Block* b = emulator().block;
  if (b == nullptr) die("a device function was called outside a kernel launch");
  return *b;
}

/// Switches stacks, telling AddressSanitizer (when on) which stack runs next; `exiting`: the
/// running fiber never resumes.
void switch_stacks(void** from_sp, void* to_sp, const void* to_stack, std::size_t to_stack_bytes, bool exiting) {
#if defined(__SANITIZE_ADDRESS__)
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(exiting ? nullptr : &fake_stack, to_stack, to_stack_bytes);
  mstplan_emu_switch(from_sp, to_sp);
  __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#else
  (void)to_stack, (void)to_stack_bytes, (void)exiting;
  mstplan_emu_switch(from_sp, to_sp);
#endif
}

/// From the running fiber back to the scheduler.
void to_scheduler(bool exiting) {
  Emulator& e = emulator();
  Block& b = current_block();
  switch_stacks(&b.fibers[b.running].sp, b.scheduler_sp, e.scheduler_stack, e.scheduler_stack_bytes, exiting);
}

void yield() { to_scheduler(false); }

void release_block_barrier(Block& b) {
  if (b.arrived == 0 || b.arrived != b.live) return;
  b.arrived = 0;
  for (Fiber& f : b.fibers) {
    if (f.state == State::at_block_barrier) f.state = State::runnable;
  }
}

void release_warp_barrier(Block& b, unsigned warp, unsigned participants) {
  Warp& w = b.warps[warp];
  if (w.arrived == 0 || w.arrived != std::popcount(participants & ~w.exited)) return;
  w.arrived = 0;
  for (unsigned lane = 0; lane < 32; ++lane) {
    const unsigned t = warp * 32 + lane;
    if (t < b.fibers.size() && b.fibers[t].state == State::at_warp_barrier) b.fibers[t].state = State::runnable;
  }
}

void warp_barrier(unsigned participants) {
  Block& b = current_block();
  Fiber& f = b.fibers[b.running];
  f.state = State::at_warp_barrier;
  ++b.warps[f.linear / 32].arrived;
  release_warp_barrier(b, f.linear / 32, participants);
  yield();
}

[[noreturn]] void fiber_main() {
#if defined(__SANITIZE_ADDRESS__)
  Emulator& e = emulator();
  __sanitizer_finish_switch_fiber(nullptr, &e.scheduler_stack, &e.scheduler_stack_bytes);
#endif
  Block& b = current_block();
  b.body(b.launch);
  Fiber& f = b.fibers[b.running];
  f.state = State::exited;
  --b.live;
  b.warps[f.linear / 32].exited |= 1u << (f.linear % 32);
  release_block_barrier(b);
  to_scheduler(true);
  die("an exited thread was resumed");
}

/// splitmix64: the per-phase choice of thread order.
std::uint64_t mix(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/// A fiber whose first switch enters fiber_main on `stack`: its top holds what
/// mstplan_emu_switch pops (six registers, then the return address fiber_main, placed so that
/// fiber_main starts with the stack aligned as after a call) and a null frame above.
void prepare(Fiber& f, void* stack) {
  f.state = State::runnable;
  f.stack = stack;
  auto** top = reinterpret_cast<void**>(static_cast<char*>(stack) + kStackBytes);  // 16-byte aligned
  top[-1] = nullptr;
  top[-2] = reinterpret_cast<void*>(&fiber_main);
  for (int r = 3; r <= 8; ++r) top[-r] = nullptr;  // rbp, rbx, r12 .. r15
  f.sp = top - 8;
}

/// Runs thread t until it waits at a barrier or exits.
void resume(Block& b, unsigned t) {
  b.running = t;
  Fiber& f = b.fibers[t];
  switch_stacks(&b.scheduler_sp, f.sp, f.stack, kStackBytes, false);
}

void run_block(Block& b, std::uint64_t& order_state) {
  Emulator& e = emulator();
  const auto n = static_cast<unsigned>(b.fibers.size());
  b.live = static_cast<int>(n);
  b.arrived = 0;
  for (unsigned w = 0; w < b.warps.size(); ++w) {
    const unsigned lanes = std::min(32u, n - w * 32);
    b.warps[w] = Warp{};
    b.warps[w].present = lanes == 32 ? ~0u : (1u << lanes) - 1;
  }
  if (!b.shared.empty()) std::memset(b.shared.data(), 0xFF, b.shared.size());
  for (unsigned t = 0; t < n; ++t) prepare(b.fibers[t], e.stacks[t]->bottom());
  // Warp by warp, each warp running until all its threads wait at __syncthreads or have exited
  // (a warp racing ahead of the others, as one may on the GPU); warps, and the lanes within a
  // warp, in increasing or decreasing order, drawn per phase.
  const auto warps = static_cast<unsigned>(b.warps.size());
  while (b.live > 0) {
    const std::uint64_t draw = mix(order_state);
    const bool reverse_warps = (draw & 1) != 0, reverse_lanes = (draw & 2) != 0;
    bool ran = false;
    for (unsigned k = 0; k < warps; ++k) {
      const unsigned w = reverse_warps ? warps - 1 - k : k;
      const unsigned lanes = std::min(32u, n - w * 32);
      for (bool progressed = true; progressed;) {
        progressed = false;
        for (unsigned l = 0; l < lanes; ++l) {
          const unsigned t = w * 32 + (reverse_lanes ? lanes - 1 - l : l);
          if (b.fibers[t].state != State::runnable) continue;
          resume(b, t);
          progressed = ran = true;
        }
      }
    }
    if (!ran) {
      int at_block = 0, at_warp = 0;
      for (const Fiber& f : b.fibers) {
        at_block += f.state == State::at_block_barrier ? 1 : 0;
        at_warp += f.state == State::at_warp_barrier ? 1 : 0;
      }
      const uint3 block = b.fibers[0].coords.block_idx;
      die("kernel %s: no thread of a block can go on (a barrier some threads never reach): %d at __syncthreads, "
          "%d at a warp shuffle, %d exited, block (%u, %u, %u)",
          b.kernel_name, at_block, at_warp, static_cast<int>(n) - b.live, block.x, block.y, block.z);
    }
  }
}

void set_error(cudaError_t e) {
  if (emulator().last_error == cudaSuccess) emulator().last_error = e;
}

// ---- Device memory: one emulated H100 80GB ---------------------------------------------------

constexpr std::size_t kDeviceBytes = std::size_t{80} << 30;

/// The default memory pool: what is in use and what it keeps reserved (it returns memory beyond
/// its release threshold when freed), with the high-water marks cudaMemPoolGetAttribute reports.
struct Pool {
  std::uint64_t used = 0, reserved = 0, used_high = 0, reserved_high = 0;
  std::uint64_t release_threshold = 0;
};

struct DeviceMemory {
  std::mutex mutex;
  std::unordered_map<void*, std::size_t> sizes;  ///< every live device allocation
  std::unordered_map<void*, bool> from_pool;
  std::size_t allocated = 0;  ///< cudaMalloc'd bytes (the pool's are in `pool`)
  Pool pool;
};

DeviceMemory& device_memory() {
  static DeviceMemory m;
  return m;
}

void* device_allocate(std::size_t size, bool pooled = false) {
  DeviceMemory& m = device_memory();
  const std::lock_guard lock(m.mutex);
  const std::size_t needed = pooled ? m.allocated + std::max<std::size_t>(m.pool.reserved, m.pool.used + size)
                                   : m.allocated + size + m.pool.reserved;
  if (needed > kDeviceBytes) return nullptr;
  void* p = ::operator new(std::max<std::size_t>(size, 1), std::align_val_t{256}, std::nothrow);
  if (p == nullptr) return nullptr;
  std::memset(p, 0xFF, size);
  m.sizes[p] = size;
  m.from_pool[p] = pooled;
  if (pooled) {
    Pool& pool = m.pool;
    pool.used += size;
    pool.reserved = std::max(pool.reserved, pool.used);
    pool.used_high = std::max(pool.used_high, pool.used);
    pool.reserved_high = std::max(pool.reserved_high, pool.reserved);
  } else {
    m.allocated += size;
  }
  return p;
}

void device_free(void* p) {
  if (p == nullptr) return;
  DeviceMemory& m = device_memory();
  const std::lock_guard lock(m.mutex);
  const auto it = m.sizes.find(p);
  if (it == m.sizes.end()) die("cudaFree of a pointer that is not a live device allocation");
  if (m.from_pool[p]) {
    Pool& pool = m.pool;
    pool.used -= it->second;
    if (pool.reserved > pool.release_threshold) pool.reserved = std::max(pool.used, pool.release_threshold);
  } else {
    m.allocated -= it->second;
  }
  m.sizes.erase(it);
  m.from_pool.erase(p);
  ::operator delete(p, std::align_val_t{256});
}

}  // namespace

const ThreadCoords& coords() {
  Block& b = current_block();
  return b.fibers[b.running].coords;
}

void sync_block() {
  Block& b = current_block();
  b.fibers[b.running].state = State::at_block_barrier;
  ++b.arrived;
  release_block_barrier(b);
  yield();  // even the last to arrive: the scheduler orders the next phase
}

std::uint64_t shuffle_xor(std::uint64_t bits, unsigned mask, int lane_mask, int width) {
  Block& b = current_block();
  const unsigned t = b.fibers[b.running].linear, lane = t % 32, warp = t / 32;
  Warp& w = b.warps[warp];
  if (width <= 0 || width > 32 || (width & (width - 1)) != 0) die("kernel %s: shuffle width not a power of two up to 32", b.kernel_name);
  if ((mask >> lane & 1) == 0) die("kernel %s: a lane outside its shuffle's mask shuffles", b.kernel_name);
  if ((mask & ~w.present) != 0 || (mask & w.exited) != 0) {
    die("kernel %s: a shuffle's mask names lanes that do not exist or have exited", b.kernel_name);
  }
  w.slots[lane] = bits;
  warp_barrier(mask);
  unsigned source = lane ^ static_cast<unsigned>(lane_mask);
  const unsigned group_end = (lane / static_cast<unsigned>(width) + 1) * static_cast<unsigned>(width);
  if (source >= group_end || source >= 32) source = lane;
  if ((mask >> source & 1) == 0) die("kernel %s: a shuffle reads a lane outside its mask", b.kernel_name);
  const std::uint64_t result = b.warps[warp].slots[source];
  warp_barrier(mask);  // every lane has read before a later shuffle overwrites the slots
  return result;
}

void* dynamic_shared() { return current_block().shared.data(); }

void run_grid(dim3 grid, dim3 block, std::size_t dynamic_shared_bytes, const void* kernel, const char* name,
              ThreadBody body, const void* launch) {
  Emulator& e = emulator();
  if (e.block != nullptr) die("kernel %s launched from inside a kernel (dynamic parallelism is not emulated)", name);
  const std::uint64_t threads = std::uint64_t{block.x} * block.y * block.z;
  if (threads == 0 || threads > kMaxThreadsPerBlock || block.z > kMaxBlockZ || grid.x == 0 || grid.y == 0 ||
      grid.z == 0 || grid.x > 0x7FFFFFFFu || grid.y > kMaxGridYZ || grid.z > kMaxGridYZ) {
    set_error(cudaErrorInvalidConfiguration);
    return;
  }
  const auto opt_in = e.max_shared_bytes.find(kernel);
  const std::size_t shared_limit = opt_in == e.max_shared_bytes.end() ? kDefaultSharedBytes : opt_in->second;
  if (dynamic_shared_bytes > shared_limit) {
    set_error(cudaErrorInvalidValue);
    return;
  }
  while (e.stacks.size() < threads) e.stacks.push_back(std::make_unique<Stack>());

  Block b;
  b.fibers.resize(threads);
  b.warps.resize((threads + 31) / 32);
  b.shared.resize(dynamic_shared_bytes);
  b.body = body;
  b.launch = launch;
  b.kernel_name = name;
  std::uint64_t order_state = ++e.launches;
  e.block = &b;
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        unsigned t = 0;
        for (unsigned tz = 0; tz < block.z; ++tz) {
          for (unsigned ty = 0; ty < block.y; ++ty) {
            for (unsigned tx = 0; tx < block.x; ++tx, ++t) {
              Fiber& f = b.fibers[t];
              f.linear = t;
              f.coords = ThreadCoords{uint3{tx, ty, tz}, uint3{x, y, z}, block, grid};
            }
          }
        }
        run_block(b, order_state);
      }
    }
  }
  e.block = nullptr;
}

}  // namespace mstplan::emu

// ---- The runtime API the launchers and tests call ------------------------------------------

using mstplan::emu::emulator;

extern "C" {

cudaError_t cudaGetLastError() {
  const cudaError_t e = emulator().last_error;
  emulator().last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError() { return emulator().last_error; }

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    default: return "unknown error (CUDA emulation)";
  }
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || static_cast<std::size_t>(value) > mstplan::emu::kMaxOptInSharedBytes) {
      mstplan::emu::set_error(cudaErrorInvalidValue);
      return cudaErrorInvalidValue;
    }
    emulator().max_shared_bytes[func] = static_cast<std::size_t>(value);
  }
  return cudaSuccess;
}

cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** ptr, std::size_t size) {
  // 256-byte aligned as cudaMalloc's, of exactly `size` bytes so that AddressSanitizer reports a
  // read or write past the end; not zeroed: 0xFF bytes (NaN as floats), so that a kernel reading
  // what nobody wrote shows.
  *ptr = mstplan::emu::device_allocate(size);
  return *ptr == nullptr ? cudaErrorMemoryAllocation : cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  mstplan::emu::device_free(ptr);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, std::size_t count, cudaMemcpyKind /*kind*/) {
  if (count > 0) std::memcpy(dst, src, count);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, std::size_t count, cudaMemcpyKind kind,
                            cudaStream_t /*stream*/) {
  return cudaMemcpy(dst, src, count, kind);
}

cudaError_t cudaMemset(void* ptr, int value, std::size_t count) {
  if (count > 0) std::memset(ptr, value, count);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* ptr, int value, std::size_t count, cudaStream_t /*stream*/) {
  return cudaMemset(ptr, value, count);
}

cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }

cudaError_t cudaStreamSynchronize(cudaStream_t /*stream*/) { return cudaSuccess; }

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    default: return "cudaErrorUnknown";
  }
}

cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : cudaErrorInvalidDevice; }

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device != 0) return cudaErrorInvalidDevice;
  *prop = cudaDeviceProp{};
  std::snprintf(prop->name, sizeof prop->name, "CUDA emulation (H100 80GB limits)");
  prop->major = 9;
  prop->minor = 0;
  prop->multiProcessorCount = 132;
  prop->totalGlobalMem = mstplan::emu::kDeviceBytes;
  prop->maxThreadsPerBlock = static_cast<int>(mstplan::emu::kMaxThreadsPerBlock);
  prop->warpSize = 32;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetPCIBusId(char* bus_id, int length, int device) {
  if (device != 0 || length < 1) return cudaErrorInvalidValue;
  std::snprintf(bus_id, static_cast<std::size_t>(length), "0000:00:00.0");
  return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int* version) {
  *version = CUDART_VERSION;
  return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int* version) {
  *version = CUDART_VERSION;
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(std::size_t* free, std::size_t* total) {
  mstplan::emu::DeviceMemory& m = mstplan::emu::device_memory();
  const std::lock_guard lock(m.mutex);
  *total = mstplan::emu::kDeviceBytes;
  *free = mstplan::emu::kDeviceBytes - m.allocated - m.pool.reserved;
  return cudaSuccess;
}

// Streams: work runs when enqueued, so a stream is only a handle.
struct CUstream_st {
  unsigned flags = 0;
};

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned flags) {
  *stream = new CUstream_st{flags};
  return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t* stream) { return cudaStreamCreateWithFlags(stream, 0); }

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  delete stream;
  return cudaSuccess;
}

// The one device's default memory pool.
struct CUmemPoolHandle_st {
  int device = 0;
};

cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* pool, int device) {
  static CUmemPoolHandle_st default_pool;
  if (device != 0) return cudaErrorInvalidDevice;
  *pool = &default_pool;
  return cudaSuccess;
}

cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t /*pool*/, cudaMemPoolAttr attr, void* value) {
  mstplan::emu::DeviceMemory& m = mstplan::emu::device_memory();
  const std::lock_guard lock(m.mutex);
  std::uint64_t v = 0;
  std::memcpy(&v, value, sizeof v);
  switch (attr) {
    case cudaMemPoolAttrReleaseThreshold: m.pool.release_threshold = v; return cudaSuccess;
    case cudaMemPoolAttrUsedMemHigh:  // only resetting (to the current value) is allowed
      if (v != 0) return cudaErrorInvalidValue;
      m.pool.used_high = m.pool.used;
      return cudaSuccess;
    case cudaMemPoolAttrReservedMemHigh:
      if (v != 0) return cudaErrorInvalidValue;
      m.pool.reserved_high = m.pool.reserved;
      return cudaSuccess;
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t /*pool*/, cudaMemPoolAttr attr, void* value) {
  mstplan::emu::DeviceMemory& m = mstplan::emu::device_memory();
  const std::lock_guard lock(m.mutex);
  std::uint64_t v = 0;
  switch (attr) {
    case cudaMemPoolAttrReleaseThreshold: v = m.pool.release_threshold; break;
    case cudaMemPoolAttrUsedMemCurrent: v = m.pool.used; break;
    case cudaMemPoolAttrUsedMemHigh: v = m.pool.used_high; break;
    case cudaMemPoolAttrReservedMemCurrent: v = m.pool.reserved; break;
    case cudaMemPoolAttrReservedMemHigh: v = m.pool.reserved_high; break;
    default: return cudaErrorInvalidValue;
  }
  std::memcpy(value, &v, sizeof v);
  return cudaSuccess;
}

cudaError_t cudaMallocFromPoolAsync(void** ptr, std::size_t size, cudaMemPool_t /*pool*/, cudaStream_t /*stream*/) {
  *ptr = mstplan::emu::device_allocate(size, true);
  return *ptr == nullptr ? cudaErrorMemoryAllocation : cudaSuccess;
}

cudaError_t cudaFreeAsync(void* ptr, cudaStream_t /*stream*/) {
  mstplan::emu::device_free(ptr);
  return cudaSuccess;
}

cudaError_t cudaMallocHost(void** ptr, std::size_t size) {
  *ptr = ::operator new(std::max<std::size_t>(size, 1), std::align_val_t{4096}, std::nothrow);
  return *ptr == nullptr ? cudaErrorMemoryAllocation : cudaSuccess;
}

cudaError_t cudaFreeHost(void* ptr) {
  if (ptr != nullptr) ::operator delete(ptr, std::align_val_t{4096});
  return cudaSuccess;
}

}  // extern "C"
