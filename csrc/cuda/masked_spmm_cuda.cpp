// ATen glue of the CUDA kernels (masked_spmm_kernel.cu): the implementations of the kernel ops
// `_<name>_kernel` for CUDA tensors (dtype dispatch, stream, device guard, launch checks). Their
// inputs are validated before dispatch (csrc/masked_spmm.cpp). Half and bfloat16 run the
// kernels' 16-bit storage types (accumulated in float). Compiled only in CUDA builds of
// torch (setup.py).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../masked_spmm.h"
#include "masked_spmm_kernel.h"

namespace pyg_mmrec {
namespace {

// The storage type of the kernels for an ATen scalar type (same layout).
template <typename T>
struct KernelType {
  using type = T;
};
template <>
struct KernelType<at::Half> {
  using type = cuda::half_bits;
};
template <>
struct KernelType<at::BFloat16> {
  using type = cuda::bfloat16_bits;
};

template <typename scalar_t>
using kernel_t = typename KernelType<scalar_t>::type;

template <typename scalar_t>
const kernel_t<scalar_t>* kptr(const at::Tensor& t) {
  return reinterpret_cast<const kernel_t<scalar_t>*>(t.data_ptr<scalar_t>());
}
template <typename scalar_t>
kernel_t<scalar_t>* kptr_mut(at::Tensor& t) {
  return reinterpret_cast<kernel_t<scalar_t>*>(t.data_ptr<scalar_t>());
}
template <typename scalar_t>
const kernel_t<scalar_t>* kptr_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? kptr<scalar_t>(*t) : nullptr;
}

// extra_ptr [n_rows + 1] of a pointer array (see masked_spmm_kernel.h): counted by a kernel,
// summed on the device (no host synchronisation).
at::Tensor extra_chunk_ptr(const at::Tensor& ptr, cudaStream_t stream) {
  const int64_t n_rows = ptr.numel() - 1;
  auto counts = at::empty({n_rows + 1}, ptr.options().dtype(at::kLong));
  AT_DISPATCH_INDEX_TYPES(ptr.scalar_type(), "masked_spmm_extra_chunks", [&] {
    cuda::launch_count_extra_chunks<index_t>(ptr.data_ptr<index_t>(), counts.data_ptr<int64_t>(),
                                             n_rows, cuda::kDefaultChunk, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return counts.cumsum(0);
}

// Partial sums of the extra chunks ([rows, F + 1] in the accumulation type).
at::Tensor chunk_workspace(int64_t n_edges, int64_t F, const at::Tensor& like) {
  return at::empty({cuda::workspace_rows(n_edges, cuda::kDefaultChunk), F + 1},
                   like.options().dtype(at::toOpMathType(like.scalar_type())));
}

#define PYG_MMREC_DISPATCH_FLOATING(type, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, type, name, __VA_ARGS__)

std::tuple<at::Tensor, at::Tensor> masked_spmm_cuda(
    const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& x,
    const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& value, bool mean) {
  const c10::cuda::CUDAGuard guard(x.device());
  const auto rowptr_c = rowptr.contiguous(), col_c = col.contiguous(), x_c = x.contiguous();
  const auto mask_c = contiguous(mask), value_c = contiguous(value);
  const int64_t n_dst = rowptr.numel() - 1, F = x.size(1), n_edges = col.numel();
  auto out = at::empty({n_dst, F}, x.options());
  auto wsum = at::empty({n_dst}, x.options());
  if (n_dst == 0) return {out, wsum};
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  const auto extra_ptr = extra_chunk_ptr(rowptr_c, stream);
  auto workspace = chunk_workspace(n_edges, F, x);
  PYG_MMREC_DISPATCH_FLOATING(x.scalar_type(), "masked_spmm_cuda", [&] {
    AT_DISPATCH_INDEX_TYPES(rowptr.scalar_type(), "masked_spmm_cuda", [&] {
      using acc_t = cuda::acc_type<kernel_t<scalar_t>>;
      cuda::launch_forward<kernel_t<scalar_t>, index_t>(
          rowptr_c.data_ptr<index_t>(), col_c.data_ptr<index_t>(), kptr<scalar_t>(x_c),
          ptr_or_null<bool>(mask_c), kptr_or_null<scalar_t>(value_c),
          extra_ptr.data_ptr<int64_t>(), workspace.data_ptr<acc_t>(), kptr_mut<scalar_t>(out),
          kptr_mut<scalar_t>(wsum), n_dst, n_edges, F, mean, cuda::kDefaultChunk, stream);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {out, wsum};
}

at::Tensor masked_spmm_backward_x_cuda(const at::Tensor& colptr, const at::Tensor& row_t,
                                       const at::Tensor& perm, const at::Tensor& grad_out,
                                       const std::optional<at::Tensor>& mask,
                                       const std::optional<at::Tensor>& value,
                                       const std::optional<at::Tensor>& weight_sum, bool mean) {
  const c10::cuda::CUDAGuard guard(grad_out.device());
  const auto colptr_c = colptr.contiguous(), row_t_c = row_t.contiguous(),
             perm_c = perm.contiguous(), g_c = grad_out.contiguous();
  const auto mask_c = contiguous(mask), value_c = contiguous(value), ws_c = contiguous(weight_sum);
  const int64_t n_src = colptr.numel() - 1, F = grad_out.size(1), n_edges = row_t.numel();
  auto grad_x = at::empty({n_src, F}, grad_out.options());
  if (n_src == 0 || F == 0) return grad_x;
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  const auto extra_ptr = extra_chunk_ptr(colptr_c, stream);
  auto workspace = chunk_workspace(n_edges, F, grad_out);
  PYG_MMREC_DISPATCH_FLOATING(grad_out.scalar_type(), "masked_spmm_backward_x_cuda", [&] {
    AT_DISPATCH_INDEX_TYPES(colptr.scalar_type(), "masked_spmm_backward_x_cuda", [&] {
      using acc_t = cuda::acc_type<kernel_t<scalar_t>>;
      cuda::launch_backward_x<kernel_t<scalar_t>, index_t>(
          colptr_c.data_ptr<index_t>(), row_t_c.data_ptr<index_t>(), perm_c.data_ptr<index_t>(),
          kptr<scalar_t>(g_c), ptr_or_null<bool>(mask_c), kptr_or_null<scalar_t>(value_c),
          kptr_or_null<scalar_t>(ws_c), extra_ptr.data_ptr<int64_t>(),
          workspace.data_ptr<acc_t>(), kptr_mut<scalar_t>(grad_x), n_src, n_edges, F, mean,
          cuda::kDefaultChunk, stream);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return grad_x;
}

at::Tensor masked_spmm_backward_value_cuda(const at::Tensor& rowptr, const at::Tensor& col,
                                           const at::Tensor& x, const at::Tensor& grad_out,
                                           const std::optional<at::Tensor>& grad_weight_sum,
                                           const std::optional<at::Tensor>& mask,
                                           const at::Tensor& out, const at::Tensor& weight_sum,
                                           bool mean) {
  const c10::cuda::CUDAGuard guard(x.device());
  const auto rowptr_c = rowptr.contiguous(), col_c = col.contiguous(), x_c = x.contiguous(),
             g_c = grad_out.contiguous(), out_c = out.contiguous(), ws_c = weight_sum.contiguous();
  const auto gws_c = contiguous(grad_weight_sum), mask_c = contiguous(mask);
  const int64_t n_dst = rowptr.numel() - 1, F = x.size(1), n_edges = col.numel();
  auto grad_value = at::empty({n_edges}, x.options());
  if (n_dst == 0 || n_edges == 0) return grad_value;
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  const auto extra_ptr = extra_chunk_ptr(rowptr_c, stream);
  PYG_MMREC_DISPATCH_FLOATING(x.scalar_type(), "masked_spmm_backward_value_cuda", [&] {
    AT_DISPATCH_INDEX_TYPES(rowptr.scalar_type(), "masked_spmm_backward_value_cuda", [&] {
      cuda::launch_backward_value<kernel_t<scalar_t>, index_t>(
          rowptr_c.data_ptr<index_t>(), col_c.data_ptr<index_t>(), kptr<scalar_t>(x_c),
          kptr<scalar_t>(g_c), kptr_or_null<scalar_t>(gws_c), ptr_or_null<bool>(mask_c),
          kptr<scalar_t>(out_c), kptr<scalar_t>(ws_c), extra_ptr.data_ptr<int64_t>(),
          kptr_mut<scalar_t>(grad_value), n_dst, n_edges, F, mean, cuda::kDefaultChunk, stream);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return grad_value;
}

#undef PYG_MMREC_DISPATCH_FLOATING

// Transpose with device-wide ATen primitives (stable sort by source); runs once per graph.
std::tuple<at::Tensor, at::Tensor, at::Tensor> csr_transpose_cuda(const at::Tensor& rowptr,
                                                                   const at::Tensor& col,
                                                                   int64_t num_src) {
  const c10::cuda::CUDAGuard guard(rowptr.device());
  const int64_t n_dst = rowptr.numel() - 1, n_edges = col.numel();
  auto row = at::repeat_interleave(at::arange(n_dst, rowptr.options()), rowptr.diff(), 0,
                                   n_edges);
  auto perm = at::argsort(col, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  auto colptr = at::searchsorted(col.index_select(0, perm),
                                 at::arange(num_src + 1, col.options()),
                                 /*out_int32=*/rowptr.scalar_type() == at::kInt);
  return {colptr, row.index_select(0, perm), perm.to(rowptr.scalar_type())};
}

}  // namespace
}  // namespace pyg_mmrec

TORCH_LIBRARY_IMPL(pyg_mmrec, CUDA, m) {
  m.impl("_masked_spmm_kernel", &pyg_mmrec::masked_spmm_cuda);
  m.impl("_masked_spmm_backward_x_kernel", &pyg_mmrec::masked_spmm_backward_x_cuda);
  m.impl("_masked_spmm_backward_value_kernel", &pyg_mmrec::masked_spmm_backward_value_cuda);
  m.impl("_csr_transpose_kernel", &pyg_mmrec::csr_transpose_cuda);
}
