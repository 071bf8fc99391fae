// CUDA kernels of pyg_mmrec::masked_spmm. Device code only: this file includes CUDA headers and
// masked_spmm_kernel.h, nothing from ATen/torch, so `nvcc -c` can check it on machines whose
// torch has no CUDA headers (tests/ops/test_cuda_compile.py), and g++ can build it against the
// warp emulator of tests/ops/cuda_emulator (tests/ops/test_cuda_emulated.py runs it there).
//
// Layout: one warp per chunk of at most `chunk` edges of a row (see masked_spmm_kernel.h for
// how long rows are split). The 32 lanes load 32 edges cooperatively (index, weight, mask),
// then walk them one by one, broadcasting each edge with __shfl_sync; for every edge the lanes
// read consecutive features of the gathered row (coalesced) into VPL register accumulators
// each. 16-bit types are accumulated in float. No atomics: every output has one writer.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "masked_spmm_kernel.h"

// A kernel launch; the host emulator defines its own before including this file.
#ifndef PYG_MMREC_LAUNCH
#define PYG_MMREC_LAUNCH(grid, block, stream, ...) __VA_ARGS__<<<grid, block, 0, stream>>>
#endif

namespace pyg_mmrec {
namespace cuda {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarp = 32;
constexpr int kThreads = 256;  // 8 warps per block

// The CUDA type of a storage type of the header.
template <typename T>
struct DeviceType {
  using type = T;
};
template <>
struct DeviceType<half_bits> {
  using type = __half;
};
template <>
struct DeviceType<bfloat16_bits> {
  using type = __nv_bfloat16;
};

__device__ __forceinline__ float load(const float& v) { return v; }
__device__ __forceinline__ double load(const double& v) { return v; }
__device__ __forceinline__ float load(const __half& v) { return __half2float(v); }
__device__ __forceinline__ float load(const __nv_bfloat16& v) { return __bfloat162float(v); }

__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(double* p, double v) { *p = v; }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

__device__ __forceinline__ int64_t warp_id() {
  return (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
}

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

// The row r with first[r] <= w < first[r + 1] of a non-decreasing `first` [n_rows + 1], where
// first[r] = extra_ptr[r] + r * per_row (per_row = 1 counts every row's first chunk too).
__device__ __forceinline__ int64_t find_row(const int64_t* extra_ptr, int64_t n_rows, int64_t w,
                                            int64_t per_row) {
  int64_t lo = 0, hi = n_rows;  // first[lo] <= w < first[hi]
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (extra_ptr[mid] + mid * per_row <= w) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// The edges of the forward pass: edge e reads source col[e] with weight value[e] unless masked.
template <typename T, typename index_t>
struct ForwardEdges {
  using acc_t = acc_type<T>;
  const index_t* col;
  const bool* mask;
  const typename DeviceType<T>::type* value;
  __device__ __forceinline__ void operator()(int64_t e, int64_t& src, acc_t& w) const {
    const int64_t c = col[e];
    if (mask == nullptr || mask[c]) {
      src = c;
      w = value != nullptr ? load(value[e]) : acc_t(1);
    }
  }
};

// The edges of the backward pass w.r.t. x (transposed graph): edge k reads grad_out[row_t[k]]
// with weight value[perm[k]] (/ wsum[row_t[k]] for mean; skipped where that sum is 0: such a
// row outputs exactly 0 and passes no gradient).
template <typename T, typename index_t>
struct BackwardXEdges {
  using acc_t = acc_type<T>;
  const index_t* row_t;
  const index_t* perm;
  const typename DeviceType<T>::type* value;
  const typename DeviceType<T>::type* wsum;  // nullptr unless mean
  __device__ __forceinline__ void operator()(int64_t k, int64_t& src, acc_t& w) const {
    const int64_t i = row_t[k];
    acc_t c = value != nullptr ? load(value[perm[k]]) : acc_t(1);
    if (wsum != nullptr) {
      const acc_t s = load(wsum[i]);
      if (s == acc_t(0)) return;
      c *= acc_t(1) / s;
    }
    src = i;
    w = c;
  }
};

// acc[v] += sum over the edges [a, b) of w * x[src][f0 + lane + 32 v]; ws += sum of w.
template <int VPL, typename DT, typename acc_t, typename Edges>
__device__ __forceinline__ void gather(const Edges& edges, int64_t a, int64_t b,
                                       const DT* __restrict__ x, int64_t F, int64_t f0, int lane,
                                       acc_t (&acc)[VPL], acc_t& ws) {
  for (int64_t eb = a; eb < b; eb += kWarp) {
    const int64_t e = eb + lane;
    int64_t src = -1;  // -1 marks a skipped (or absent) edge: its row is never read
    acc_t w = 0;
    if (e < b) edges(e, src, w);
    const int n = static_cast<int>(min64(b - eb, kWarp));
    for (int t = 0; t < n; ++t) {
      const int64_t st = __shfl_sync(kFullMask, src, t);
      const acc_t wt = __shfl_sync(kFullMask, w, t);
      if (st < 0) continue;
      ws += wt;
      const DT* xr = x + st * F;
#pragma unroll
      for (int v = 0; v < VPL; ++v) {
        const int64_t f = f0 + lane + v * kWarp;
        if (f < F) acc[v] += wt * load(xr[f]);
      }
    }
  }
}

// One warp per extra chunk: its partial sums into workspace[w] ([F] features, then the weight
// sum). Rows with row_mask false are skipped (their output is 0 and never reads the workspace).
template <typename T, typename index_t, int VPL, typename Edges>
__global__ void extra_chunks_kernel(const index_t* __restrict__ ptr,
                                    const int64_t* __restrict__ extra_ptr, Edges edges,
                                    const bool* __restrict__ row_mask,
                                    const typename DeviceType<T>::type* __restrict__ x,
                                    acc_type<T>* __restrict__ workspace, int64_t n_rows,
                                    int64_t F, int64_t chunk) {
  using acc_t = acc_type<T>;
  const int64_t w = warp_id();
  if (w >= extra_ptr[n_rows]) return;  // uniform across the warp
  const int lane = threadIdx.x % kWarp;
  const int64_t r = find_row(extra_ptr, n_rows, w, 0);
  if (row_mask != nullptr && !row_mask[r]) return;
  const int64_t a = ptr[r] + (w - extra_ptr[r] + 1) * chunk;
  const int64_t b = min64(static_cast<int64_t>(ptr[r + 1]), a + chunk);
  acc_t* part = workspace + w * (F + 1);
  int64_t f0 = 0;
  do {  // feature blocks of 32 * VPL; runs once even for F == 0 so that the weight sum is written
    acc_t acc[VPL];
#pragma unroll
    for (int v = 0; v < VPL; ++v) acc[v] = acc_t(0);
    acc_t ws = 0;
    gather<VPL>(edges, a, b, x, F, f0, lane, acc, ws);
#pragma unroll
    for (int v = 0; v < VPL; ++v) {
      const int64_t f = f0 + lane + v * kWarp;
      if (f < F) part[f] = acc[v];
    }
    if (f0 == 0 && lane == 0) part[F] = ws;
    f0 += kWarp * VPL;
  } while (f0 < F);
}

// One warp per row: gathers the row's first chunk, adds the partial sums of its extra chunks in
// order, and writes out[r] (divided by the weight sum for mean, exactly 0 where that is 0) and
// wsum[r] (when wsum != nullptr). Rows with row_mask false output 0.
template <typename T, typename index_t, int VPL, typename Edges>
__global__ void rows_kernel(const index_t* __restrict__ ptr,
                            const int64_t* __restrict__ extra_ptr, Edges edges,
                            const bool* __restrict__ row_mask,
                            const typename DeviceType<T>::type* __restrict__ x,
                            const acc_type<T>* __restrict__ workspace,
                            typename DeviceType<T>::type* __restrict__ out,
                            typename DeviceType<T>::type* __restrict__ wsum, int64_t n_rows,
                            int64_t F, int64_t chunk, bool mean) {
  using acc_t = acc_type<T>;
  const int64_t r = warp_id();
  if (r >= n_rows) return;  // whole warps exit together: r is uniform across the warp
  const int lane = threadIdx.x % kWarp;
  const bool active = row_mask == nullptr || row_mask[r];
  const int64_t a = ptr[r];
  const int64_t b = min64(static_cast<int64_t>(ptr[r + 1]), a + chunk);
  const int64_t s0 = extra_ptr[r], s1 = extra_ptr[r + 1];
  int64_t f0 = 0;
  do {
    acc_t acc[VPL];
#pragma unroll
    for (int v = 0; v < VPL; ++v) acc[v] = acc_t(0);
    acc_t ws = 0;
    if (active) {
      gather<VPL>(edges, a, b, x, F, f0, lane, acc, ws);
      for (int64_t s = s0; s < s1; ++s) {
        const acc_t* part = workspace + s * (F + 1);
#pragma unroll
        for (int v = 0; v < VPL; ++v) {
          const int64_t f = f0 + lane + v * kWarp;
          if (f < F) acc[v] += part[f];
        }
        ws += part[F];
      }
    }
    // Exactly 0 where the weight sum is 0 (`acc * 0` would be NaN for a present inf row).
    const bool zero = mean && ws == acc_t(0);
#pragma unroll
    for (int v = 0; v < VPL; ++v) {
      const int64_t f = f0 + lane + v * kWarp;
      if (f < F) store(out + r * F + f, zero ? acc_t(0) : (mean ? acc[v] / ws : acc[v]));
    }
    if (wsum != nullptr && f0 == 0 && lane == 0) store(wsum + r, ws);
    f0 += kWarp * VPL;
  } while (f0 < F);
}

// Per row: counts[r + 1] = its number of extra chunks; counts[0] = 0.
template <typename index_t>
__global__ void count_extra_chunks_kernel(const index_t* __restrict__ ptr,
                                          int64_t* __restrict__ counts, int64_t n_rows,
                                          int64_t chunk) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r == 0) counts[0] = 0;
  if (r >= n_rows) return;
  const int64_t d = static_cast<int64_t>(ptr[r + 1]) - static_cast<int64_t>(ptr[r]);
  counts[r + 1] = d > 0 ? (d - 1) / chunk : 0;
}

// Backward w.r.t. value, one warp per chunk of a row: per edge
// m_j (<g_i, x_j> [- <g_i, out_i>] [/ W_i]) + m_j * gws_i; the bracket is 0 where W_i == 0.
template <typename T, typename index_t>
__global__ void backward_value_kernel(const index_t* __restrict__ rowptr,
                                      const index_t* __restrict__ col,
                                      const typename DeviceType<T>::type* __restrict__ x,
                                      const typename DeviceType<T>::type* __restrict__ grad_out,
                                      const typename DeviceType<T>::type* __restrict__ grad_wsum,
                                      const bool* __restrict__ mask,
                                      const typename DeviceType<T>::type* __restrict__ out,
                                      const typename DeviceType<T>::type* __restrict__ wsum,
                                      const int64_t* __restrict__ extra_ptr,
                                      typename DeviceType<T>::type* __restrict__ grad_value,
                                      int64_t n_dst, int64_t F, bool mean, int64_t chunk) {
  using acc_t = acc_type<T>;
  using DT = typename DeviceType<T>::type;
  const int64_t w = warp_id();
  if (w >= extra_ptr[n_dst] + n_dst) return;  // total number of chunks
  const int lane = threadIdx.x % kWarp;
  const int64_t i = find_row(extra_ptr, n_dst, w, 1);
  const int64_t e0 = rowptr[i] + (w - extra_ptr[i] - i) * chunk;
  const int64_t e1 = min64(static_cast<int64_t>(rowptr[i + 1]), e0 + chunk);
  if (e0 >= e1) return;
  const DT* g = grad_out + i * F;
  // For mean, a row with weight sum 0 outputs exactly 0: only grad_wsum reaches its weights.
  bool dots = true;
  acc_t inv = 1, c_i = 0;
  if (mean) {
    const acc_t s = load(wsum[i]);
    dots = s != acc_t(0);
    if (dots) {
      inv = acc_t(1) / s;
      acc_t part = 0;
      for (int64_t f = lane; f < F; f += kWarp) part += load(g[f]) * load(out[i * F + f]);
      c_i = warp_sum(part);
    }
  }
  const acc_t gws = grad_wsum != nullptr ? load(grad_wsum[i]) : acc_t(0);
  for (int64_t eb = e0; eb < e1; eb += kWarp) {
    const int64_t e = eb + lane;
    int64_t j = -1;
    if (e < e1) {
      const int64_t c = col[e];
      if (mask == nullptr || mask[c]) j = c;
    }
    const int n = static_cast<int>(min64(e1 - eb, kWarp));
    acc_t mine = 0;  // lane t keeps the result of the t-th edge of this batch
    for (int t = 0; t < n; ++t) {
      const int64_t jt = __shfl_sync(kFullMask, j, t);  // uniform: the branch below is too
      acc_t d = 0;
      if (jt >= 0) {
        d = gws;
        if (dots) {
          acc_t part = 0;
          for (int64_t f = lane; f < F; f += kWarp) part += load(g[f]) * load(x[jt * F + f]);
          d += (warp_sum(part) - c_i) * inv;
        }
      }
      if (lane == t) mine = d;
    }
    if (e < e1) store(grad_value + e, mine);  // one coalesced store per 32 edges
  }
}

inline unsigned int num_blocks(int64_t warps) {
  const int64_t warps_per_block = kThreads / kWarp;
  return static_cast<unsigned int>((warps + warps_per_block - 1) / warps_per_block);
}

// Runs the extra-chunk and row kernels of a segmented gather with VPL chosen by F.
template <typename T, typename index_t, typename Edges>
void launch_gather(const index_t* ptr, const int64_t* extra_ptr, const Edges& edges,
                   const bool* row_mask, const typename DeviceType<T>::type* x,
                   acc_type<T>* workspace, typename DeviceType<T>::type* out,
                   typename DeviceType<T>::type* wsum, int64_t n_rows, int64_t n_edges,
                   int64_t F, bool mean, int64_t chunk, CUstream_st* stream) {
  if (n_rows == 0) return;
  const int64_t n_extra = workspace_rows(n_edges, chunk);  // bound; surplus warps exit at once
  auto run = [&](auto vpl) {
    constexpr int VPL = decltype(vpl)::value;
    if (n_extra > 0) {
      PYG_MMREC_LAUNCH(num_blocks(n_extra), kThreads, stream,
                       extra_chunks_kernel<T, index_t, VPL, Edges>)(
          ptr, extra_ptr, edges, row_mask, x, workspace, n_rows, F, chunk);
    }
    PYG_MMREC_LAUNCH(num_blocks(n_rows), kThreads, stream,
                     rows_kernel<T, index_t, VPL, Edges>)(
        ptr, extra_ptr, edges, row_mask, x, workspace, out, wsum, n_rows, F, chunk, mean);
  };
  if (F <= kWarp) {
    run(std::integral_constant<int, 1>{});
  } else if (F <= 2 * kWarp) {
    run(std::integral_constant<int, 2>{});
  } else {
    run(std::integral_constant<int, 4>{});
  }
}

template <typename T>
auto device_ptr(T* p) {
  return reinterpret_cast<typename DeviceType<T>::type*>(p);
}
template <typename T>
auto device_ptr(const T* p) {
  return reinterpret_cast<const typename DeviceType<T>::type*>(p);
}

}  // namespace

template <typename index_t>
void launch_count_extra_chunks(const index_t* ptr, int64_t* counts, int64_t n_rows,
                               int64_t chunk, CUstream_st* stream) {
  // Always one block at least: counts[0] is written by thread 0.
  const unsigned int blocks = static_cast<unsigned int>((n_rows + kThreads) / kThreads);
  PYG_MMREC_LAUNCH(blocks, kThreads, stream, count_extra_chunks_kernel<index_t>)(
      ptr, counts, n_rows, chunk);
}

template <typename scalar_t, typename index_t>
void launch_forward(const index_t* rowptr, const index_t* col, const scalar_t* x,
                    const bool* mask, const scalar_t* value, const int64_t* extra_ptr,
                    acc_type<scalar_t>* workspace, scalar_t* out, scalar_t* wsum, int64_t n_dst,
                    int64_t n_edges, int64_t F, bool mean, int64_t chunk, CUstream_st* stream) {
  const ForwardEdges<scalar_t, index_t> edges{col, mask, device_ptr(value)};
  launch_gather<scalar_t, index_t>(rowptr, extra_ptr, edges, nullptr, device_ptr(x), workspace,
                                   device_ptr(out), device_ptr(wsum), n_dst, n_edges, F, mean,
                                   chunk, stream);
}

template <typename scalar_t, typename index_t>
void launch_backward_x(const index_t* colptr, const index_t* row_t, const index_t* perm,
                       const scalar_t* grad_out, const bool* mask, const scalar_t* value,
                       const scalar_t* wsum, const int64_t* extra_ptr,
                       acc_type<scalar_t>* workspace, scalar_t* grad_x, int64_t n_src,
                       int64_t n_edges, int64_t F, bool mean, int64_t chunk,
                       CUstream_st* stream) {
  if (F == 0) return;
  const BackwardXEdges<scalar_t, index_t> edges{row_t, perm, device_ptr(value),
                                                mean ? device_ptr(wsum) : nullptr};
  // A masked source contributes to no output: its gradient is exactly 0 (row_mask = mask).
  launch_gather<scalar_t, index_t>(colptr, extra_ptr, edges, mask, device_ptr(grad_out),
                                   workspace, device_ptr(grad_x), nullptr, n_src, n_edges, F,
                                   /*mean=*/false, chunk, stream);
}

template <typename scalar_t, typename index_t>
void launch_backward_value(const index_t* rowptr, const index_t* col, const scalar_t* x,
                           const scalar_t* grad_out, const scalar_t* grad_wsum, const bool* mask,
                           const scalar_t* out, const scalar_t* wsum, const int64_t* extra_ptr,
                           scalar_t* grad_value, int64_t n_dst, int64_t n_edges, int64_t F,
                           bool mean, int64_t chunk, CUstream_st* stream) {
  if (n_dst == 0 || n_edges == 0) return;
  const int64_t n_chunks = n_dst + workspace_rows(n_edges, chunk);  // bound, as above
  PYG_MMREC_LAUNCH(num_blocks(n_chunks), kThreads, stream,
                   backward_value_kernel<scalar_t, index_t>)(
      rowptr, col, device_ptr(x), device_ptr(grad_out), device_ptr(grad_wsum), mask,
      device_ptr(out), device_ptr(wsum), extra_ptr, device_ptr(grad_value), n_dst, F, mean,
      chunk);
}

#define PYG_MMREC_INSTANTIATE(scalar_t, index_t)                                               \
  template void launch_forward<scalar_t, index_t>(                                             \
      const index_t*, const index_t*, const scalar_t*, const bool*, const scalar_t*,           \
      const int64_t*, acc_type<scalar_t>*, scalar_t*, scalar_t*, int64_t, int64_t, int64_t,    \
      bool, int64_t, CUstream_st*);                                                             \
  template void launch_backward_x<scalar_t, index_t>(                                          \
      const index_t*, const index_t*, const index_t*, const scalar_t*, const bool*,            \
      const scalar_t*, const scalar_t*, const int64_t*, acc_type<scalar_t>*, scalar_t*,       \
      int64_t, int64_t, int64_t, bool, int64_t, CUstream_st*);                                  \
  template void launch_backward_value<scalar_t, index_t>(                                      \
      const index_t*, const index_t*, const scalar_t*, const scalar_t*, const scalar_t*,       \
      const bool*, const scalar_t*, const scalar_t*, const int64_t*, scalar_t*, int64_t,       \
      int64_t, int64_t, bool, int64_t, CUstream_st*);

#define PYG_MMREC_INSTANTIATE_ALL(index_t)                                            \
  template void launch_count_extra_chunks<index_t>(const index_t*, int64_t*, int64_t, \
                                                   int64_t, CUstream_st*);            \
  PYG_MMREC_INSTANTIATE(float, index_t)                                               \
  PYG_MMREC_INSTANTIATE(double, index_t)                                              \
  PYG_MMREC_INSTANTIATE(half_bits, index_t)                                           \
  PYG_MMREC_INSTANTIATE(bfloat16_bits, index_t)

PYG_MMREC_INSTANTIATE_ALL(int32_t)
PYG_MMREC_INSTANTIATE_ALL(int64_t)

#undef PYG_MMREC_INSTANTIATE_ALL
#undef PYG_MMREC_INSTANTIATE

}  // namespace cuda
}  // namespace pyg_mmrec
