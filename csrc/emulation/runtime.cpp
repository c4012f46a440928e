// The scheduler of the CPU runtime for CUDA-dialect kernels (see runtime.h).
//
// A block runs on one OS thread: each CUDA thread is a fiber with its own stack, and the
// scheduler resumes, in thread order, every fiber that is not waiting, until all have returned.
// A fiber waits at __syncthreads until every live thread of the block has arrived, and at a warp
// intrinsic until every live lane of its warp has; the last to arrive releases the others.
#include "emulation/runtime.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace idip {
namespace emu {
namespace detail {

thread_local ThreadView* current_thread = nullptr;
thread_local BlockView current_block{};

namespace {

// ---- Fiber context switch --------------------------------------------------------------------
#if defined(__x86_64__)
// Saves the callee-saved registers on the current stack, stores the stack pointer in *save_sp,
// switches to load_sp and restores from there (System V ABI). The SSE/x87 control words are not
// switched: fibers share their thread's floating-point environment (kernels do not change it).
extern "C" void idip_emu_swap(void** save_sp, void* load_sp);
// First code of a new fiber: calls entry(arg), which never returns (r13 = entry, r12 = arg).
extern "C" void idip_emu_fiber_start();
asm(R"(
  .text
  .globl idip_emu_swap
  .hidden idip_emu_swap
  .type idip_emu_swap, @function
idip_emu_swap:
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
  .size idip_emu_swap, .-idip_emu_swap

  .globl idip_emu_fiber_start
  .hidden idip_emu_fiber_start
  .type idip_emu_fiber_start, @function
idip_emu_fiber_start:
  movq %r12, %rdi
  callq *%r13
  ud2
  .size idip_emu_fiber_start, .-idip_emu_fiber_start
)");

struct Context {
  void* sp = nullptr;
};

void switch_context(Context& from, Context& to) { idip_emu_swap(&from.sp, to.sp); }

void make_context(Context& ctx, unsigned char* stack, size_t size, void (*entry)(void*),
                  void* arg) {
  const uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + size) & ~uintptr_t(15);
  // Frame read by idip_emu_swap: r15, r14, r13, r12, rbx, rbp, return address; after its `ret`
  // the stack pointer is 16-byte aligned, as the call in idip_emu_fiber_start needs.
  auto* sp = reinterpret_cast<uint64_t*>(top - 16 - 7 * 8);
  sp[0] = 0;
  sp[1] = 0;
  sp[2] = reinterpret_cast<uint64_t>(entry);
  sp[3] = reinterpret_cast<uint64_t>(arg);
  sp[4] = 0;
  sp[5] = 0;
  sp[6] = reinterpret_cast<uint64_t>(&idip_emu_fiber_start);
  ctx.sp = sp;
}
#else
// Portable fallback: ucontext (slower: each switch saves the signal mask).
struct Context {
  ucontext_t uc;
};

void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }

void ucontext_entry(unsigned hi, unsigned lo, unsigned ehi, unsigned elo) {
  auto arg = reinterpret_cast<void*>((uintptr_t(hi) << 32) | lo);
  auto entry = reinterpret_cast<void (*)(void*)>((uintptr_t(ehi) << 32) | elo);
  entry(arg);
}

void make_context(Context& ctx, unsigned char* stack, size_t size, void (*entry)(void*),
                  void* arg) {
  getcontext(&ctx.uc);
  ctx.uc.uc_stack.ss_sp = stack;
  ctx.uc.uc_stack.ss_size = size;
  ctx.uc.uc_link = nullptr;
  const auto a = reinterpret_cast<uintptr_t>(arg);
  const auto e = reinterpret_cast<uintptr_t>(entry);
  makecontext(&ctx.uc, reinterpret_cast<void (*)()>(&ucontext_entry), 4, unsigned(a >> 32),
              unsigned(a), unsigned(e >> 32), unsigned(e));
}
#endif

// ---- Stacks ----------------------------------------------------------------------------------
constexpr size_t kStackBytes = 128 * 1024;

// A fiber stack with an inaccessible guard page below it, so an overflow faults.
class Stack {
 public:
  Stack() {
    page_ = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    void* p = mmap(nullptr, kStackBytes + page_, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    TORCH_CHECK(p != MAP_FAILED, "emulated CUDA: could not map a fiber stack");
    mprotect(p, page_, PROT_NONE);
    base_ = static_cast<unsigned char*>(p);
  }
  ~Stack() { munmap(base_, kStackBytes + page_); }
  Stack(const Stack&) = delete;
  Stack& operator=(const Stack&) = delete;
  unsigned char* lo() const { return base_ + page_; }

 private:
  unsigned char* base_;
  size_t page_;
};

// ---- Errors of a launch ----------------------------------------------------------------------
class LaunchErrors {
 public:
  void record(const std::string& message) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!failed_.load()) first_ = message;
    failed_.store(true);
  }
  bool failed() const { return failed_.load(std::memory_order_relaxed); }
  const std::string& first() const { return first_; }

 private:
  std::mutex mutex_;
  std::atomic<bool> failed_{false};
  std::string first_;
};

std::string coords(const uint3& v) {
  std::ostringstream s;
  s << "(" << v.x << ", " << v.y << ", " << v.z << ")";
  return s.str();
}

// ---- The block scheduler ---------------------------------------------------------------------
class Scheduler;
// The scheduler running a block on this thread.
thread_local Scheduler* active_scheduler = nullptr;

enum class State { kReady, kRunning, kWaitBlock, kWaitWarp, kDone };

struct Fiber : ThreadView {
  Context ctx;
  State state = State::kReady;
  uint64_t wait_generation = 0;
};

// A warp's exchange: two rounds' slots alternate, so a lane that is released and moves on to
// the next intrinsic does not overwrite values that slower lanes have yet to read.
struct Warp {
  int alive = 0;
  int arrived = 0;
  uint64_t generation = 0;
  uint64_t values[2][kWarpSize];
  bool valid[2][kWarpSize];
};

class Scheduler {
 public:
  void run_block(const char* name, uint3 block_idx, dim3 grid, dim3 block, size_t shared_bytes,
                 void (*invoke)(void*), void* call, LaunchErrors& errors) {
    const int n = static_cast<int>(block.x * block.y * block.z);
    name_ = name;
    invoke_ = invoke;
    call_ = call;
    errors_ = &errors;
    prepare(n, shared_bytes);
    block_threads_ = n;
    current_block = BlockView{block_idx, block, grid, shared_.get()};
    for (int i = 0; i < n; ++i) {
      Fiber& f = fibers_[i];
      f.thread_idx = uint3{static_cast<unsigned>(i % block.x),
                           static_cast<unsigned>((i / block.x) % block.y),
                           static_cast<unsigned>(i / (block.x * block.y))};
      f.lane = i % kWarpSize;
      f.warp = i / kWarpSize;
      f.state = State::kReady;
      make_context(f.ctx, stacks_[i]->lo(), kStackBytes, &Scheduler::fiber_main, &f);
    }
    const int num_warps = (n + kWarpSize - 1) / kWarpSize;
    for (int w = 0; w < num_warps; ++w) {
      Warp& warp = warps_[w];
      warp.alive = std::min(kWarpSize, n - w * kWarpSize);
      warp.arrived = 0;
      warp.generation = 0;
      std::fill(&warp.valid[0][0], &warp.valid[0][0] + 2 * kWarpSize, false);
    }
    block_alive_ = n;
    block_arrived_ = 0;
    block_generation_ = 0;
    done_ = 0;
    // Each pass resumes every fiber that can run; a fiber returns here when it waits at
    // __syncthreads, when no other lane of its warp can run, or when it is done.
    while (done_ < n) {
      bool progressed = false;
      for (int i = 0; i < n; ++i) {
        Fiber& f = fibers_[i];
        if (!runnable(f)) continue;
        f.state = State::kRunning;
        running_ = &f;
        current_thread = &f;
        switch_context(main_, f.ctx);
        running_ = nullptr;
        current_thread = nullptr;
        progressed = true;
      }
      if (!progressed) {
        report_deadlock(n);
        break;
      }
    }
  }

  void sync_block(const char* file, int line) {
    Fiber* f = require_running("__syncthreads");
    if (block_arrived_ == 0) {
      barrier_file_ = file;
      barrier_line_ = line;
    } else if ((line != barrier_line_ ||
                (file != barrier_file_ && std::strcmp(file, barrier_file_) != 0)) &&
               !errors_->failed()) {
      std::ostringstream s;
      s << "emulated CUDA: divergent __syncthreads in " << name_ << ", block "
        << coords(current_block.block_idx) << ": thread " << coords(f->thread_idx)
        << " waits at the __syncthreads of line " << line << ", the threads before it at line "
        << barrier_line_ << " (undefined in CUDA)";
      errors_->record(s.str());
    }
    if (++block_arrived_ == block_alive_) {
      release_block();
      return;
    }
    f->state = State::kWaitBlock;
    f->wait_generation = block_generation_;
    yield(f);
  }

  const uint64_t* warp_exchange(uint64_t value, const bool** valid) {
    Fiber* f = require_running("a warp intrinsic");
    Warp& w = warps_[f->warp];
    const uint64_t round = w.generation;
    const int slot = static_cast<int>(round & 1);
    w.values[slot][f->lane] = value;
    w.valid[slot][f->lane] = true;
    if (++w.arrived == w.alive) {
      release_warp(w);
    } else {
      f->state = State::kWaitWarp;
      f->wait_generation = round;
      // The warp's lanes run in turn, straight from one to the next, so that a warp goes
      // through a sequence of shuffles without a detour through the scheduler's loop.
      Fiber* next = next_runnable_lane(*f);
      if (next != nullptr) {
        hand_over(f, next);
      } else {
        yield(f);
      }
    }
    *valid = w.valid[slot];
    return w.values[slot];
  }

  [[noreturn]] void trap(const char* condition, const char* file, int line) {
    Fiber* f = require_running("a kernel assert");
    std::ostringstream s;
    s << "emulated CUDA: device-side assertion `" << condition << "` failed in " << name_
      << ", block " << coords(current_block.block_idx) << ", thread " << coords(f->thread_idx)
      << " (" << file << ":" << line << ")";
    errors_->record(s.str());
    exit_fiber(f);
  }

 private:
  static void fiber_main(void* arg) {
    auto* f = static_cast<Fiber*>(arg);
    Scheduler& s = *active_scheduler;
    s.invoke_(s.call_);
    s.exit_fiber(f);
  }

  Fiber* require_running(const char* what) {
    TORCH_CHECK(running_ != nullptr, "emulated CUDA: ", what, " outside a kernel");
    return running_;
  }

  bool runnable(const Fiber& f) const {
    switch (f.state) {
      case State::kReady:
        return true;
      case State::kWaitBlock:
        return f.wait_generation != block_generation_;
      case State::kWaitWarp:
        return f.wait_generation != warps_[f.warp].generation;
      default:
        return false;
    }
  }

  // The next lane after f's (cyclically) of f's warp that can run, if any.
  Fiber* next_runnable_lane(const Fiber& f) {
    const int first = f.warp * kWarpSize;
    const int size = std::min(kWarpSize, block_threads_ - first);
    for (int k = 1; k < size; ++k) {
      Fiber& other = fibers_[first + (f.lane + k) % size];
      if (runnable(other)) return &other;
    }
    return nullptr;
  }

  void hand_over(Fiber* from, Fiber* to) {
    to->state = State::kRunning;
    running_ = to;
    current_thread = to;
    switch_context(from->ctx, to->ctx);
  }

  void yield(Fiber* f) { switch_context(f->ctx, main_); }

  [[noreturn]] void exit_fiber(Fiber* f) {
    f->state = State::kDone;
    ++done_;
    --block_alive_;
    if (block_arrived_ > 0 && block_arrived_ == block_alive_) release_block();
    Warp& w = warps_[f->warp];
    --w.alive;
    if (w.arrived > 0 && w.arrived == w.alive) release_warp(w);
    switch_context(f->ctx, main_);
    __builtin_unreachable();  // a finished fiber is never resumed
  }

  void release_block() {
    block_arrived_ = 0;
    ++block_generation_;
  }

  static void release_warp(Warp& w) {
    w.arrived = 0;
    ++w.generation;
    // The slots of the round before the one just released are reused by the next round.
    std::fill(w.valid[w.generation & 1], w.valid[w.generation & 1] + kWarpSize, false);
  }

  void report_deadlock(int n) {
    int at_block = 0, at_warp = 0, exited = 0;
    for (int i = 0; i < n; ++i) {
      at_block += fibers_[i].state == State::kWaitBlock;
      at_warp += fibers_[i].state == State::kWaitWarp;
      exited += fibers_[i].state == State::kDone;
    }
    std::ostringstream s;
    s << "emulated CUDA: " << name_ << " deadlocked in block " << coords(current_block.block_idx)
      << ": of " << n << " threads, " << at_block << " wait at __syncthreads, " << at_warp
      << " at a warp intrinsic whose other lanes never arrive, " << exited << " have exited";
    errors_->record(s.str());
  }

  void prepare(int n, size_t shared_bytes) {
    active_scheduler = this;
    while (static_cast<int>(stacks_.size()) < n) stacks_.push_back(std::make_unique<Stack>());
    if (static_cast<int>(fibers_.size()) < n) fibers_.resize(n);
    const size_t num_warps = (n + kWarpSize - 1) / kWarpSize;
    if (warps_.size() < num_warps) warps_.resize(num_warps);
    if (shared_capacity_ < shared_bytes || !shared_) {
      shared_capacity_ = std::max<size_t>(shared_bytes, 256);
      shared_.reset(new unsigned char[shared_capacity_]);
    }
    std::memset(shared_.get(), 0xff, shared_bytes);
  }

  Context main_;
  std::vector<std::unique_ptr<Stack>> stacks_;
  std::vector<Fiber> fibers_;
  std::vector<Warp> warps_;
  std::unique_ptr<unsigned char[]> shared_;
  size_t shared_capacity_ = 0;
  Fiber* running_ = nullptr;
  const char* barrier_file_ = "";
  int barrier_line_ = 0;
  int block_threads_ = 0, done_ = 0;
  int block_alive_ = 0, block_arrived_ = 0;
  uint64_t block_generation_ = 0;
  const char* name_ = "";
  void (*invoke_)(void*) = nullptr;
  void* call_ = nullptr;
  LaunchErrors* errors_ = nullptr;
};

Scheduler& this_thread_scheduler() {
  thread_local Scheduler scheduler;
  return scheduler;
}

Scheduler& running_scheduler(const char* what) {
  TORCH_CHECK(active_scheduler != nullptr && current_thread != nullptr, "emulated CUDA: ", what,
              " outside a kernel");
  return *active_scheduler;
}

std::mutex attribute_mutex;
std::unordered_map<const void*, size_t>& max_dynamic_shared() {
  static std::unordered_map<const void*, size_t> limits;
  return limits;
}

size_t dynamic_shared_limit(const void* kernel) {
  std::lock_guard<std::mutex> lock(attribute_mutex);
  auto it = max_dynamic_shared().find(kernel);
  return it == max_dynamic_shared().end() ? kDefaultDynamicSharedBytes : it->second;
}

}  // namespace

void run_grid(const char* name, const void* kernel, dim3 grid, dim3 block, size_t shared_bytes,
              void (*invoke)(void*), void* call) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  TORCH_CHECK(threads >= 1 && threads <= kMaxThreadsPerBlock && block.x <= 1024 &&
                  block.y <= 1024 && block.z <= 64,
              "CUDA error: invalid configuration argument (emulated launch of ", name, ": block (",
              block.x, ", ", block.y, ", ", block.z, "); at most 1024 threads, z <= 64)");
  TORCH_CHECK(grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && grid.x <= 0x7fffffffu &&
                  grid.y <= 65535 && grid.z <= 65535,
              "CUDA error: invalid configuration argument (emulated launch of ", name, ": grid (",
              grid.x, ", ", grid.y, ", ", grid.z, "); y and z at most 65535)");
  const size_t limit = dynamic_shared_limit(kernel);
  TORCH_CHECK(shared_bytes <= limit, "CUDA error: invalid argument (emulated launch of ", name,
              ": ", shared_bytes, " bytes of dynamic shared memory, limit ", limit,
              "; above 48 KiB a kernel must opt in with cudaFuncSetAttribute)");
  const int64_t num_blocks = int64_t(grid.x) * grid.y * grid.z;
  LaunchErrors errors;
  at::parallel_for(0, num_blocks, 1, [&](int64_t begin, int64_t end) {
    Scheduler& scheduler = this_thread_scheduler();
    for (int64_t b = begin; b < end && !errors.failed(); ++b) {
      const uint3 idx{static_cast<unsigned>(b % grid.x),
                      static_cast<unsigned>((b / grid.x) % grid.y),
                      static_cast<unsigned>(b / (int64_t(grid.x) * grid.y))};
      scheduler.run_block(name, idx, grid, block, shared_bytes, invoke, call, errors);
    }
    current_block = BlockView{};
    active_scheduler = nullptr;
  });
  TORCH_CHECK(!errors.failed(), errors.first());
}

void sync_block(const char* file, int line) {
  running_scheduler("__syncthreads").sync_block(file, line);
}

const uint64_t* warp_exchange(uint64_t value, const bool** valid) {
  return running_scheduler("a warp intrinsic").warp_exchange(value, valid);
}

void trap(const char* condition, const char* file, int line) {
  running_scheduler("a kernel assert").trap(condition, file, line);
}

}  // namespace detail

void set_max_dynamic_shared(const void* kernel, size_t bytes) {
  TORCH_CHECK(bytes <= kMaxOptInSharedBytes, "CUDA error: invalid argument (emulated "
              "cudaFuncSetAttribute: ", bytes, " bytes of dynamic shared memory; the device "
              "allows at most ", kMaxOptInSharedBytes, ")");
  std::lock_guard<std::mutex> lock(detail::attribute_mutex);
  detail::max_dynamic_shared()[kernel] = bytes;
}

}  // namespace emu
}  // namespace idip
