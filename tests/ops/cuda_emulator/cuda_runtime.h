// Host emulation of the part of the CUDA runtime that csrc/cuda/masked_spmm_kernel.cu uses, so
// that its device code compiles with g++ and runs on the CPU (tests/ops/test_cuda_emulated.py).
//
// Every warp runs as 32 coroutines (ucontext), one per lane, scheduled in turn. A warp-level
// intrinsic (__shfl_*_sync, __syncwarp) suspends the lane; when every lane of the warp waits at
// one, the values are exchanged and all lanes resume, as on a GPU. A lane that returns while
// others wait at an intrinsic, or intrinsics with a partial mask, fail the launch (on a GPU that
// is undefined behaviour). Warps run one after another: the kernels share no memory across
// warps. Not thread-safe; for tests only.
#pragma once

#include <ucontext.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

struct CUstream_st;
using cudaStream_t = CUstream_st*;

struct dim3 {
  unsigned int x = 1, y = 1, z = 1;
};

namespace emu {

constexpr int kWarp = 32;

enum class Op { kIdx, kXor, kDown, kUp, kSync };

struct Lane {
  ucontext_t ctx;
  bool done = false, waiting = false;
  Op op = Op::kSync;
  unsigned mask = 0;
  int arg = 0, width = kWarp, size = 0;
  uint64_t send = 0, result = 0;
};

struct State {
  ucontext_t scheduler;
  Lane lanes[kWarp];
  int current = 0;
  std::function<void()> body;
  std::vector<char> stacks = std::vector<char>(kWarp * (256 << 10));
  std::string error;
  int64_t intrinsics = 0;  // warp-level exchanges, for the tests' sanity checks
};

inline State& state() {
  static State s;
  return s;
}

}  // namespace emu

inline dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace emu {

inline void lane_entry() {
  State& s = state();
  s.body();
  s.lanes[s.current].done = true;  // returns to the scheduler through uc_link
}

template <typename T>
T exchange(Op op, unsigned mask, T v, int arg, int width) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "emulated shuffles move up to 8 bytes");
  State& s = state();
  Lane& l = s.lanes[s.current];
  l.op = op;
  l.mask = mask;
  l.arg = arg;
  l.width = width;
  l.size = sizeof(T);
  l.send = 0;
  std::memcpy(&l.send, &v, sizeof(T));
  l.waiting = true;
  swapcontext(&l.ctx, &s.scheduler);
  T r;
  std::memcpy(&r, &l.result, sizeof(T));
  return r;
}

// Runs one warp (lanes with threadIdx.x = first_thread + lane); false on a divergence error.
inline bool run_warp(unsigned first_thread) {
  State& s = state();
  for (int i = 0; i < kWarp; ++i) {
    Lane& l = s.lanes[i];
    l = Lane{};
    getcontext(&l.ctx);
    l.ctx.uc_stack.ss_sp = s.stacks.data() + i * (s.stacks.size() / kWarp);
    l.ctx.uc_stack.ss_size = s.stacks.size() / kWarp;
    l.ctx.uc_link = &s.scheduler;
    makecontext(&l.ctx, lane_entry, 0);
  }
  while (true) {
    int done = 0, waiting = 0;
    for (int i = 0; i < kWarp; ++i) {
      Lane& l = s.lanes[i];
      if (!l.done && !l.waiting) {
        s.current = i;
        threadIdx.x = first_thread + i;
        swapcontext(&s.scheduler, &l.ctx);
      }
      done += l.done;
      waiting += l.waiting;
    }
    if (done == kWarp) return true;
    if (waiting != kWarp) {
      s.error = "divergence: " + std::to_string(done) + " lanes returned while " +
                std::to_string(waiting) + " wait at a warp intrinsic";
      return false;
    }
    const Lane& l0 = s.lanes[0];
    for (int i = 0; i < kWarp; ++i) {
      const Lane& l = s.lanes[i];
      if (l.mask != 0xffffffffu || l.op != l0.op || l.size != l0.size || l.width != kWarp) {
        s.error = "lanes met at different or partial warp intrinsics (lane " +
                  std::to_string(i) + ")";
        return false;
      }
    }
    ++s.intrinsics;
    uint64_t results[kWarp];
    for (int i = 0; i < kWarp; ++i) {
      const Lane& l = s.lanes[i];
      int src = i;
      switch (l.op) {
        case Op::kIdx: src = l.arg % kWarp; break;
        case Op::kXor: src = i ^ l.arg; break;
        case Op::kDown: src = i + l.arg < kWarp ? i + l.arg : i; break;
        case Op::kUp: src = i - l.arg >= 0 ? i - l.arg : i; break;
        case Op::kSync: break;
      }
      results[i] = src >= 0 && src < kWarp ? s.lanes[src].send : l.send;
    }
    for (int i = 0; i < kWarp; ++i) {
      s.lanes[i].result = results[i];
      s.lanes[i].waiting = false;
    }
  }
}

// kernel<<<grid, block>>>(args...): every block, every warp in turn.
template <typename Kernel>
struct Launch {
  unsigned int grid, block;
  Kernel* kernel;
  template <typename... Args>
  void operator()(Args... args) const {
    State& s = state();
    if (!s.error.empty()) return;  // a previous launch failed: keep its message
    if (grid == 0 || block == 0 || block % kWarp != 0 || block > 1024) {
      s.error = "invalid launch configuration: grid " + std::to_string(grid) + ", block " +
                std::to_string(block);
      return;
    }
    gridDim.x = grid;
    blockDim.x = block;
    s.body = [&] { kernel(args...); };
    for (unsigned int b = 0; b < grid; ++b) {
      blockIdx.x = b;
      for (unsigned int w = 0; w < block / kWarp; ++w) {
        if (!run_warp(w * kWarp)) return;
      }
    }
  }
};

template <typename Kernel>
Launch<Kernel> launch(unsigned int grid, unsigned int block, Kernel* kernel) {
  return {grid, block, kernel};
}

}  // namespace emu

#define PYG_MMREC_LAUNCH(grid, block, stream, ...) \
  ::emu::launch(grid, block, &__VA_ARGS__)

template <typename T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  return emu::exchange(emu::Op::kIdx, mask, v, src, width);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return emu::exchange(emu::Op::kXor, mask, v, lane_mask, width);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return emu::exchange(emu::Op::kDown, mask, v, static_cast<int>(delta), width);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return emu::exchange(emu::Op::kUp, mask, v, static_cast<int>(delta), width);
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  emu::exchange(emu::Op::kSync, mask, 0, 0, 32);
}
