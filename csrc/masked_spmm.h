// Shared declarations of the masked sparse-dense matmul operator (see masked_spmm.cpp for the
// contract). Backends (cpu/, cuda/) call the check_* helpers before touching raw pointers, so
// every kernel only ever sees validated inputs.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string_view>

namespace pyg_mmrec {

// Parses `reduce` ("sum" | "mean"); returns true for "mean".
bool parse_reduce(std::string_view reduce);

// Validates the CSR graph and the operands of the forward op (metadata and index ranges).
// `colptr`, `row_t`, `perm` (the optional transposed layout) are checked for shape and dtype only.
void check_forward_inputs(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& x,
                          const std::optional<at::Tensor>& mask,
                          const std::optional<at::Tensor>& value,
                          const std::optional<at::Tensor>& colptr,
                          const std::optional<at::Tensor>& row_t,
                          const std::optional<at::Tensor>& perm);

// Validates the transposed (CSC) layout consumed by masked_spmm_backward_x.
void check_backward_x_inputs(const at::Tensor& colptr, const at::Tensor& row_t,
                             const at::Tensor& perm, const at::Tensor& grad_out,
                             const std::optional<at::Tensor>& mask,
                             const std::optional<at::Tensor>& value,
                             const std::optional<at::Tensor>& weight_sum);

// Validates the operands of masked_spmm_backward_value.
void check_backward_value_inputs(const at::Tensor& rowptr, const at::Tensor& col,
                                 const at::Tensor& x, const at::Tensor& grad_out,
                                 const std::optional<at::Tensor>& grad_weight_sum,
                                 const std::optional<at::Tensor>& mask,
                                 const at::Tensor& out, const at::Tensor& weight_sum);

// Validates the operands of csr_transpose.
void check_transpose_inputs(const at::Tensor& rowptr, const at::Tensor& col, int64_t num_src);

}  // namespace pyg_mmrec
