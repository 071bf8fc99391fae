// What the device backends (cpu/, cuda/) of pyg_mmrec::masked_spmm share.
//
// The operator has two layers (see masked_spmm.cpp):
//   * the public ops `masked_spmm`, `masked_spmm_backward_x`, `masked_spmm_backward_value` and
//     `csr_transpose`, implemented once for every device in masked_spmm.cpp: they parse and
//     validate their inputs, then call the kernel op through the dispatcher;
//   * the kernel ops `_masked_spmm_kernel`, `_masked_spmm_backward_x_kernel`,
//     `_masked_spmm_backward_value_kernel` and `_csr_transpose_kernel`, one implementation per
//     device (TORCH_LIBRARY_IMPL in the backend files). They run no checks: their inputs are
//     validated by the public op, or vouched for by the caller (`trusted=True`, a graph built
//     and checked once by pyg_mmrec.nn.to_csr).
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace pyg_mmrec {

// Data pointer of an optional tensor, nullptr when absent (the kernels' "not given").
template <typename T>
const T* ptr_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

// A contiguous copy (or the tensor itself) of an optional tensor.
inline std::optional<at::Tensor> contiguous(const std::optional<at::Tensor>& t) {
  if (!t.has_value()) return std::nullopt;
  return t->contiguous();
}

}  // namespace pyg_mmrec
