// C entry points of the emulated CUDA kernels (csrc/cuda/masked_spmm_kernel.cu compiled by g++
// against the stubs of this folder), called through ctypes by tests/ops/test_cuda_emulated.py.
// Pointers are host pointers laid out as the device pointers of masked_spmm_kernel.h.
// dtype: 0 float32, 1 float64, 2 float16, 3 bfloat16; index_bits: 32 or 64.
// Every entry returns 0, or 1 with the message in emu_last_error().
#include "cuda_runtime.h"
#include "../../../csrc/cuda/masked_spmm_kernel.cu"

namespace {

using namespace pyg_mmrec::cuda;

template <typename F>
int dispatch(int dtype, int index_bits, F&& f) {
  emu::state().error.clear();
  auto with_index = [&](auto scalar) {
    using S = decltype(scalar);
    if (index_bits == 32) {
      f(S{}, int32_t{});
    } else if (index_bits == 64) {
      f(S{}, int64_t{});
    } else {
      emu::state().error = "index_bits must be 32 or 64";
    }
  };
  switch (dtype) {
    case 0: with_index(float{}); break;
    case 1: with_index(double{}); break;
    case 2: with_index(half_bits{}); break;
    case 3: with_index(bfloat16_bits{}); break;
    default: emu::state().error = "unknown dtype code"; break;
  }
  return emu::state().error.empty() ? 0 : 1;
}

}  // namespace

extern "C" {

const char* emu_last_error() { return emu::state().error.c_str(); }

int64_t emu_intrinsics() { return emu::state().intrinsics; }

int emu_count_extra_chunks(int index_bits, const void* ptr, int64_t* counts, int64_t n_rows,
                           int64_t chunk) {
  return dispatch(0, index_bits, [&](auto, auto index) {
    using I = decltype(index);
    launch_count_extra_chunks<I>(static_cast<const I*>(ptr), counts, n_rows, chunk, nullptr);
  });
}

int emu_forward(int dtype, int index_bits, const void* rowptr, const void* col, const void* x,
                const bool* mask, const void* value, const int64_t* extra_ptr, void* workspace,
                void* out, void* wsum, int64_t n_dst, int64_t n_edges, int64_t F, int mean,
                int64_t chunk) {
  return dispatch(dtype, index_bits, [&](auto scalar, auto index) {
    using S = decltype(scalar);
    using I = decltype(index);
    launch_forward<S, I>(static_cast<const I*>(rowptr), static_cast<const I*>(col),
                         static_cast<const S*>(x), mask, static_cast<const S*>(value), extra_ptr,
                         static_cast<acc_type<S>*>(workspace), static_cast<S*>(out),
                         static_cast<S*>(wsum), n_dst, n_edges, F, mean != 0, chunk, nullptr);
  });
}

int emu_backward_x(int dtype, int index_bits, const void* colptr, const void* row_t,
                   const void* perm, const void* grad_out, const bool* mask, const void* value,
                   const void* wsum, const int64_t* extra_ptr, void* workspace, void* grad_x,
                   int64_t n_src, int64_t n_edges, int64_t F, int mean, int64_t chunk) {
  return dispatch(dtype, index_bits, [&](auto scalar, auto index) {
    using S = decltype(scalar);
    using I = decltype(index);
    launch_backward_x<S, I>(static_cast<const I*>(colptr), static_cast<const I*>(row_t),
                            static_cast<const I*>(perm), static_cast<const S*>(grad_out), mask,
                            static_cast<const S*>(value), static_cast<const S*>(wsum), extra_ptr,
                            static_cast<acc_type<S>*>(workspace), static_cast<S*>(grad_x), n_src,
                            n_edges, F, mean != 0, chunk, nullptr);
  });
}

int emu_backward_value(int dtype, int index_bits, const void* rowptr, const void* col,
                       const void* x, const void* grad_out, const void* grad_wsum,
                       const bool* mask, const void* out, const void* wsum,
                       const int64_t* extra_ptr, void* grad_value, int64_t n_dst,
                       int64_t n_edges, int64_t F, int mean, int64_t chunk) {
  return dispatch(dtype, index_bits, [&](auto scalar, auto index) {
    using S = decltype(scalar);
    using I = decltype(index);
    launch_backward_value<S, I>(
        static_cast<const I*>(rowptr), static_cast<const I*>(col), static_cast<const S*>(x),
        static_cast<const S*>(grad_out), static_cast<const S*>(grad_wsum), mask,
        static_cast<const S*>(out), static_cast<const S*>(wsum), extra_ptr,
        static_cast<S*>(grad_value), n_dst, n_edges, F, mean != 0, chunk, nullptr);
  });
}

}  // extern "C"
