// ATen glue of the CUDA kernels (masked_spmm_kernel.cu): the implementations of the kernel ops
// `_<name>_kernel` for CUDA tensors (dtype dispatch, stream, device guard, launch checks). Their
// inputs are validated before dispatch (csrc/masked_spmm.cpp). Compiled only in CUDA builds of
// torch (setup.py).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../masked_spmm.h"
#include "masked_spmm_kernel.h"

namespace pyg_mmrec {
namespace {

std::tuple<at::Tensor, at::Tensor> masked_spmm_cuda(
    const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& x,
    const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& value, bool mean) {
  const c10::cuda::CUDAGuard guard(x.device());
  const auto rowptr_c = rowptr.contiguous(), col_c = col.contiguous(), x_c = x.contiguous();
  const auto mask_c = contiguous(mask), value_c = contiguous(value);
  const int64_t n_dst = rowptr.numel() - 1, F = x.size(1);
  auto out = at::empty({n_dst, F}, x.options());
  auto wsum = at::empty({n_dst}, x.options());
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "masked_spmm_cuda", [&] {
    AT_DISPATCH_INDEX_TYPES(rowptr.scalar_type(), "masked_spmm_cuda", [&] {
      cuda::launch_forward<scalar_t, index_t>(
          rowptr_c.data_ptr<index_t>(), col_c.data_ptr<index_t>(), x_c.data_ptr<scalar_t>(),
          ptr_or_null<bool>(mask_c), ptr_or_null<scalar_t>(value_c), out.data_ptr<scalar_t>(),
          wsum.data_ptr<scalar_t>(), n_dst, F, mean, stream);
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
  const int64_t n_src = colptr.numel() - 1, F = grad_out.size(1);
  auto grad_x = at::empty({n_src, F}, grad_out.options());
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  AT_DISPATCH_FLOATING_TYPES(grad_out.scalar_type(), "masked_spmm_backward_x_cuda", [&] {
    AT_DISPATCH_INDEX_TYPES(colptr.scalar_type(), "masked_spmm_backward_x_cuda", [&] {
      cuda::launch_backward_x<scalar_t, index_t>(
          colptr_c.data_ptr<index_t>(), row_t_c.data_ptr<index_t>(), perm_c.data_ptr<index_t>(),
          g_c.data_ptr<scalar_t>(), ptr_or_null<bool>(mask_c), ptr_or_null<scalar_t>(value_c),
          ptr_or_null<scalar_t>(ws_c), grad_x.data_ptr<scalar_t>(), n_src, F, mean, stream);
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
  const int64_t n_dst = rowptr.numel() - 1, F = x.size(1);
  auto grad_value = at::empty({col.numel()}, x.options());
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "masked_spmm_backward_value_cuda", [&] {
    AT_DISPATCH_INDEX_TYPES(rowptr.scalar_type(), "masked_spmm_backward_value_cuda", [&] {
      cuda::launch_backward_value<scalar_t, index_t>(
          rowptr_c.data_ptr<index_t>(), col_c.data_ptr<index_t>(), x_c.data_ptr<scalar_t>(),
          g_c.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(gws_c), ptr_or_null<bool>(mask_c),
          out_c.data_ptr<scalar_t>(), ws_c.data_ptr<scalar_t>(), grad_value.data_ptr<scalar_t>(),
          n_dst, F, mean, stream);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return grad_value;
}

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
