// Host-side launchers of the CUDA kernels of pyg_mmrec::masked_spmm (masked_spmm_kernel.cu).
// Plain C++ on purpose: this header is shared by the device file, which includes no ATen/torch
// header (so that it compiles with nvcc alone, and with g++ against the host emulator of
// tests/ops/cuda_emulator), and by the ATen glue masked_spmm_cuda.cpp.
// All pointers are device pointers to contiguous, validated tensors; optional inputs are nullptr.
//
// Work distribution (balanced by edges): the edges of every row are cut into chunks of `chunk`
// edges. The first chunk of a row is gathered by the warp that writes the row; every further
// chunk ("extra chunk") is gathered by a warp of its own into a workspace row (partial sums in
// the accumulation type), which the row's warp then adds in chunk order. A hub row of D edges is
// therefore spread over ceil(D / chunk) warps, and the result does not depend on scheduling
// (no atomics). `extra_ptr` [n_rows + 1] is the exclusive prefix sum of the extra chunks per
// row: launch_count_extra_chunks writes the per-row counts, the caller turns them into the
// prefix sum (an inclusive cumsum of the counts, whose entry 0 is 0) on the device, so that no
// host synchronisation is needed. The workspace has `workspace_rows(E, chunk)` rows of F + 1
// entries (features, then the weight sum).
#pragma once

#include <cstdint>

struct CUstream_st;  // cudaStream_t == CUstream_st*

namespace pyg_mmrec {
namespace cuda {

// 16-bit floating-point storage, layout-compatible with at::Half / __half and
// at::BFloat16 / __nv_bfloat16 (the device file maps them to the CUDA types).
struct half_bits {
  uint16_t bits;
};
struct bfloat16_bits {
  uint16_t bits;
};

// Accumulation type: float for the 16-bit types, the type itself otherwise.
template <typename scalar_t>
struct AccType {
  using type = scalar_t;
};
template <>
struct AccType<half_bits> {
  using type = float;
};
template <>
struct AccType<bfloat16_bits> {
  using type = float;
};
template <typename scalar_t>
using acc_type = typename AccType<scalar_t>::type;

// Default number of edges per chunk.
constexpr int64_t kDefaultChunk = 256;

// Upper bound of the number of extra chunks of a graph with `n_edges` edges (a row of d > 0
// edges has (d - 1) / chunk of them), known without reading the graph.
inline int64_t workspace_rows(int64_t n_edges, int64_t chunk) { return n_edges / chunk; }

// counts [n_rows + 1]: counts[0] = 0, counts[i + 1] = extra chunks of row i.
template <typename index_t>
void launch_count_extra_chunks(const index_t* ptr, int64_t* counts, int64_t n_rows,
                               int64_t chunk, CUstream_st* stream);

// out [n_dst, F], wsum [n_dst] (see the contract in csrc/masked_spmm.cpp).
template <typename scalar_t, typename index_t>
void launch_forward(const index_t* rowptr, const index_t* col, const scalar_t* x,
                    const bool* mask, const scalar_t* value, const int64_t* extra_ptr,
                    acc_type<scalar_t>* workspace, scalar_t* out, scalar_t* wsum, int64_t n_dst,
                    int64_t n_edges, int64_t F, bool mean, int64_t chunk, CUstream_st* stream);

// grad_x [n_src, F] by a gather over the transposed graph (extra_ptr of colptr).
template <typename scalar_t, typename index_t>
void launch_backward_x(const index_t* colptr, const index_t* row_t, const index_t* perm,
                       const scalar_t* grad_out, const bool* mask, const scalar_t* value,
                       const scalar_t* wsum, const int64_t* extra_ptr,
                       acc_type<scalar_t>* workspace, scalar_t* grad_x, int64_t n_src,
                       int64_t n_edges, int64_t F, bool mean, int64_t chunk,
                       CUstream_st* stream);

// grad_value [E]: one warp per chunk of a row (extra_ptr of rowptr), one warp-reduced dot
// product per edge.
template <typename scalar_t, typename index_t>
void launch_backward_value(const index_t* rowptr, const index_t* col, const scalar_t* x,
                           const scalar_t* grad_out, const scalar_t* grad_wsum, const bool* mask,
                           const scalar_t* out, const scalar_t* wsum, const int64_t* extra_ptr,
                           scalar_t* grad_value, int64_t n_dst, int64_t n_edges, int64_t F,
                           bool mean, int64_t chunk, CUstream_st* stream);

}  // namespace cuda
}  // namespace pyg_mmrec
