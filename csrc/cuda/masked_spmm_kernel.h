// Host-side launchers of the CUDA kernels of pyg_mmrec::masked_spmm (masked_spmm_kernel.cu).
// Plain C++ on purpose: this header is shared by the device file, which includes no ATen/torch
// header (so that it compiles with nvcc alone), and by the ATen glue masked_spmm_cuda.cpp.
// All pointers are device pointers to contiguous, validated tensors; optional inputs are nullptr.
#pragma once

#include <cstdint>

struct CUstream_st;  // cudaStream_t == CUstream_st*

namespace pyg_mmrec {
namespace cuda {

// out [n_dst, F], wsum [n_dst] (see the contract in csrc/masked_spmm.cpp).
template <typename scalar_t, typename index_t>
void launch_forward(const index_t* rowptr, const index_t* col, const scalar_t* x,
                    const bool* mask, const scalar_t* value, scalar_t* out, scalar_t* wsum,
                    int64_t n_dst, int64_t F, bool mean, CUstream_st* stream);

// grad_x [n_src, F] by a gather over the transposed graph (one warp per source row).
template <typename scalar_t, typename index_t>
void launch_backward_x(const index_t* colptr, const index_t* row_t, const index_t* perm,
                       const scalar_t* grad_out, const bool* mask, const scalar_t* value,
                       const scalar_t* wsum, scalar_t* grad_x, int64_t n_src, int64_t F,
                       bool mean, CUstream_st* stream);

// grad_value [E] (one warp per destination row, one warp-reduced dot product per edge).
template <typename scalar_t, typename index_t>
void launch_backward_value(const index_t* rowptr, const index_t* col, const scalar_t* x,
                           const scalar_t* grad_out, const scalar_t* grad_wsum, const bool* mask,
                           const scalar_t* out, const scalar_t* wsum, scalar_t* grad_value,
                           int64_t n_dst, int64_t F, bool mean, CUstream_st* stream);

}  // namespace cuda
}  // namespace pyg_mmrec
