// CUDA kernels of pyg_mmrec::masked_spmm. Device code only: this file includes CUDA headers and
// masked_spmm_kernel.h, nothing from ATen/torch, so `nvcc -c` can check it on machines whose
// torch has no CUDA headers (tests/ops/test_cuda_compile.py).
//
// Layout: one warp per output row. The 32 lanes first load 32 edges of the row cooperatively
// (index, weight, mask), then walk them one by one, broadcasting each edge with __shfl_sync;
// for every edge the lanes read consecutive features of the gathered row (coalesced 128-byte
// transactions) into VPL register accumulators each. Every output row has one writer warp, so
// neither the forward nor the backward needs atomics.
#include <cuda_runtime.h>

#include <cstdint>

#include "masked_spmm_kernel.h"

namespace pyg_mmrec {
namespace cuda {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarp = 32;
constexpr int kThreads = 256;  // 8 warps (rows) per block

__device__ __forceinline__ int64_t warp_id() {
  return (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
}

template <typename scalar_t>
__device__ __forceinline__ scalar_t warp_sum(scalar_t v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

template <typename scalar_t>
__device__ __forceinline__ scalar_t safe_inverse(scalar_t w) {
  return w != scalar_t(0) ? scalar_t(1) / w : scalar_t(0);
}

// Forward: out[i] = sum_e w_e m_col[e] x[col[e]] (/ weight_sum[i] for mean).
template <typename scalar_t, typename index_t, int VPL>
__global__ void forward_kernel(const index_t* __restrict__ rowptr,
                               const index_t* __restrict__ col, const scalar_t* __restrict__ x,
                               const bool* __restrict__ mask, const scalar_t* __restrict__ value,
                               scalar_t* __restrict__ out, scalar_t* __restrict__ wsum,
                               int64_t n_dst, int64_t F, bool mean) {
  const int64_t i = warp_id();
  if (i >= n_dst) return;  // whole warps exit together: i is uniform across the warp
  const int lane = threadIdx.x % kWarp;
  const int64_t e0 = rowptr[i], e1 = rowptr[i + 1];
  int64_t f0 = 0;
  do {  // feature chunks of 32 * VPL; runs once even for F == 0 so that wsum is written
    scalar_t acc[VPL];
#pragma unroll
    for (int v = 0; v < VPL; ++v) acc[v] = scalar_t(0);
    scalar_t ws = 0;
    for (int64_t eb = e0; eb < e1; eb += kWarp) {
      const int64_t e = eb + lane;
      int64_t j = -1;  // -1 marks a masked (or absent) edge: its source row is never read
      scalar_t w = 0;
      if (e < e1) {
        const int64_t c = col[e];
        if (mask == nullptr || mask[c]) {
          j = c;
          w = value != nullptr ? value[e] : scalar_t(1);
        }
      }
      const int n = static_cast<int>(e1 - eb < kWarp ? e1 - eb : kWarp);
      for (int t = 0; t < n; ++t) {
        const int64_t jt = __shfl_sync(kFullMask, j, t);
        const scalar_t wt = __shfl_sync(kFullMask, w, t);
        if (jt < 0) continue;
        ws += wt;
        const scalar_t* xr = x + jt * F;
#pragma unroll
        for (int v = 0; v < VPL; ++v) {
          const int64_t f = f0 + lane + v * kWarp;
          if (f < F) acc[v] += wt * xr[f];
        }
      }
    }
    const scalar_t scale = mean ? safe_inverse(ws) : scalar_t(1);
#pragma unroll
    for (int v = 0; v < VPL; ++v) {
      const int64_t f = f0 + lane + v * kWarp;
      if (f < F) out[i * F + f] = acc[v] * scale;
    }
    if (f0 == 0 && lane == 0) wsum[i] = ws;
    f0 += kWarp * VPL;
  } while (f0 < F);
}

// Backward w.r.t. x over the transposed graph: grad_x[j] = m_j sum_k c_k grad_out[row_t[k]].
template <typename scalar_t, typename index_t, int VPL>
__global__ void backward_x_kernel(const index_t* __restrict__ colptr,
                                  const index_t* __restrict__ row_t,
                                  const index_t* __restrict__ perm,
                                  const scalar_t* __restrict__ grad_out,
                                  const bool* __restrict__ mask,
                                  const scalar_t* __restrict__ value,
                                  const scalar_t* __restrict__ wsum, scalar_t* __restrict__ grad_x,
                                  int64_t n_src, int64_t F, bool mean) {
  const int64_t j = warp_id();
  if (j >= n_src) return;
  const int lane = threadIdx.x % kWarp;
  const bool present = mask == nullptr || mask[j];
  const int64_t k0 = present ? static_cast<int64_t>(colptr[j]) : 0;
  const int64_t k1 = present ? static_cast<int64_t>(colptr[j + 1]) : 0;
  for (int64_t f0 = 0; f0 < F; f0 += kWarp * VPL) {
    scalar_t acc[VPL];
#pragma unroll
    for (int v = 0; v < VPL; ++v) acc[v] = scalar_t(0);
    for (int64_t kb = k0; kb < k1; kb += kWarp) {
      const int64_t k = kb + lane;
      int64_t i = 0;
      scalar_t c = 0;
      if (k < k1) {
        i = row_t[k];
        c = value != nullptr ? value[perm[k]] : scalar_t(1);
        if (mean) c *= safe_inverse(wsum[i]);
      }
      const int n = static_cast<int>(k1 - kb < kWarp ? k1 - kb : kWarp);
      for (int t = 0; t < n; ++t) {
        const int64_t it = __shfl_sync(kFullMask, i, t);
        const scalar_t ct = __shfl_sync(kFullMask, c, t);
        const scalar_t* gr = grad_out + it * F;
#pragma unroll
        for (int v = 0; v < VPL; ++v) {
          const int64_t f = f0 + lane + v * kWarp;
          if (f < F) acc[v] += ct * gr[f];
        }
      }
    }
#pragma unroll
    for (int v = 0; v < VPL; ++v) {
      const int64_t f = f0 + lane + v * kWarp;
      if (f < F) grad_x[j * F + f] = acc[v];
    }
  }
}

// Backward w.r.t. value: per edge m_j (<g_i, x_j> [- <g_i, out_i>] [/ W_i]) + m_j * gws_i.
template <typename scalar_t, typename index_t>
__global__ void backward_value_kernel(const index_t* __restrict__ rowptr,
                                      const index_t* __restrict__ col,
                                      const scalar_t* __restrict__ x,
                                      const scalar_t* __restrict__ grad_out,
                                      const scalar_t* __restrict__ grad_wsum,
                                      const bool* __restrict__ mask,
                                      const scalar_t* __restrict__ out,
                                      const scalar_t* __restrict__ wsum,
                                      scalar_t* __restrict__ grad_value, int64_t n_dst, int64_t F,
                                      bool mean) {
  const int64_t i = warp_id();
  if (i >= n_dst) return;
  const int lane = threadIdx.x % kWarp;
  const scalar_t* g = grad_out + i * F;
  scalar_t inv = 1, c_i = 0;
  if (mean) {
    inv = safe_inverse(wsum[i]);
    scalar_t part = 0;
    for (int64_t f = lane; f < F; f += kWarp) part += g[f] * out[i * F + f];
    c_i = warp_sum(part);
  }
  const scalar_t gws = grad_wsum != nullptr ? grad_wsum[i] : scalar_t(0);
  const int64_t e0 = rowptr[i], e1 = rowptr[i + 1];
  for (int64_t eb = e0; eb < e1; eb += kWarp) {
    const int64_t e = eb + lane;
    int64_t j = -1;
    if (e < e1) {
      const int64_t c = col[e];
      if (mask == nullptr || mask[c]) j = c;
    }
    const int n = static_cast<int>(e1 - eb < kWarp ? e1 - eb : kWarp);
    scalar_t mine = 0;  // lane t keeps the result of the t-th edge of this batch
    for (int t = 0; t < n; ++t) {
      const int64_t jt = __shfl_sync(kFullMask, j, t);
      scalar_t d = 0;
      if (jt >= 0) {
        scalar_t part = 0;
        for (int64_t f = lane; f < F; f += kWarp) part += g[f] * x[jt * F + f];
        d = (warp_sum(part) - c_i) * inv + gws;
      }
      if (lane == t) mine = d;
    }
    if (e < e1) grad_value[e] = mine;  // one coalesced store per 32 edges
  }
}

inline unsigned int num_blocks(int64_t rows) {
  const int64_t warps_per_block = kThreads / kWarp;
  return static_cast<unsigned int>((rows + warps_per_block - 1) / warps_per_block);
}

}  // namespace

template <typename scalar_t, typename index_t>
void launch_forward(const index_t* rowptr, const index_t* col, const scalar_t* x,
                    const bool* mask, const scalar_t* value, scalar_t* out, scalar_t* wsum,
                    int64_t n_dst, int64_t F, bool mean, CUstream_st* stream) {
  if (n_dst == 0) return;
  const unsigned int blocks = num_blocks(n_dst);
  if (F <= kWarp) {
    forward_kernel<scalar_t, index_t, 1><<<blocks, kThreads, 0, stream>>>(
        rowptr, col, x, mask, value, out, wsum, n_dst, F, mean);
  } else if (F <= 2 * kWarp) {
    forward_kernel<scalar_t, index_t, 2><<<blocks, kThreads, 0, stream>>>(
        rowptr, col, x, mask, value, out, wsum, n_dst, F, mean);
  } else {
    forward_kernel<scalar_t, index_t, 4><<<blocks, kThreads, 0, stream>>>(
        rowptr, col, x, mask, value, out, wsum, n_dst, F, mean);
  }
}

template <typename scalar_t, typename index_t>
void launch_backward_x(const index_t* colptr, const index_t* row_t, const index_t* perm,
                       const scalar_t* grad_out, const bool* mask, const scalar_t* value,
                       const scalar_t* wsum, scalar_t* grad_x, int64_t n_src, int64_t F,
                       bool mean, CUstream_st* stream) {
  if (n_src == 0 || F == 0) return;
  const unsigned int blocks = num_blocks(n_src);
  if (F <= kWarp) {
    backward_x_kernel<scalar_t, index_t, 1><<<blocks, kThreads, 0, stream>>>(
        colptr, row_t, perm, grad_out, mask, value, wsum, grad_x, n_src, F, mean);
  } else if (F <= 2 * kWarp) {
    backward_x_kernel<scalar_t, index_t, 2><<<blocks, kThreads, 0, stream>>>(
        colptr, row_t, perm, grad_out, mask, value, wsum, grad_x, n_src, F, mean);
  } else {
    backward_x_kernel<scalar_t, index_t, 4><<<blocks, kThreads, 0, stream>>>(
        colptr, row_t, perm, grad_out, mask, value, wsum, grad_x, n_src, F, mean);
  }
}

template <typename scalar_t, typename index_t>
void launch_backward_value(const index_t* rowptr, const index_t* col, const scalar_t* x,
                           const scalar_t* grad_out, const scalar_t* grad_wsum, const bool* mask,
                           const scalar_t* out, const scalar_t* wsum, scalar_t* grad_value,
                           int64_t n_dst, int64_t F, bool mean, CUstream_st* stream) {
  if (n_dst == 0) return;
  backward_value_kernel<scalar_t, index_t><<<num_blocks(n_dst), kThreads, 0, stream>>>(
      rowptr, col, x, grad_out, grad_wsum, mask, out, wsum, grad_value, n_dst, F, mean);
}

#define PYG_MMREC_INSTANTIATE(scalar_t, index_t)                                               \
  template void launch_forward<scalar_t, index_t>(const index_t*, const index_t*,              \
                                                  const scalar_t*, const bool*, const scalar_t*, \
                                                  scalar_t*, scalar_t*, int64_t, int64_t, bool,  \
                                                  CUstream_st*);                                 \
  template void launch_backward_x<scalar_t, index_t>(                                          \
      const index_t*, const index_t*, const index_t*, const scalar_t*, const bool*,            \
      const scalar_t*, const scalar_t*, scalar_t*, int64_t, int64_t, bool, CUstream_st*);      \
  template void launch_backward_value<scalar_t, index_t>(                                      \
      const index_t*, const index_t*, const scalar_t*, const scalar_t*, const scalar_t*,       \
      const bool*, const scalar_t*, const scalar_t*, scalar_t*, int64_t, int64_t, bool,        \
      CUstream_st*);

PYG_MMREC_INSTANTIATE(float, int32_t)
PYG_MMREC_INSTANTIATE(float, int64_t)
PYG_MMREC_INSTANTIATE(double, int32_t)
PYG_MMREC_INSTANTIATE(double, int64_t)

#undef PYG_MMREC_INSTANTIATE

}  // namespace cuda
}  // namespace pyg_mmrec
