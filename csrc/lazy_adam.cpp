// Operator schema and input validation of `pyg_mmrec::lazy_adam_rows_`: the row update of lazy
// ("sparse") Adam for embedding tables trained on sampled batches.
//
// Contract. `param`, `exp_avg`, `exp_avg_sq` are [N, F] tables of one floating dtype, contiguous,
// updated in place; `indices` [n] (int64, values in [0, N), repeats allowed) and `values` [n, F]
// (the dtype of `param`) are an uncoalesced sparse gradient. For every distinct row r of
// `indices`, with g = sum of the `values` rows whose index is r (+ weight_decay * param[r]):
//   exp_avg[r]    = exp_avg[r] + (1 - beta1) * (g - exp_avg[r])
//   exp_avg_sq[r] = beta2 * exp_avg_sq[r] + (1 - beta2) * g * g
//   param[r]      = param[r] - step_size * exp_avg[r] / (sqrt(exp_avg_sq[r]) / bc2_sqrt + eps)
// where step_size = lr / (1 - beta1^t) and bc2_sqrt = sqrt(1 - beta2^t) come from the caller (the
// step count lives in the optimiser). Rows not in `indices` are untouched. 16-bit tables are
// updated in float and rounded once per row. The pure-PyTorch definition (and the fallback when
// the extension is not built or the tensors are on another device) is
// pyg_mmrec/ops/lazy_adam.py::lazy_adam_rows_reference.
//
// As for masked_spmm, the public op validates (shapes, dtypes, devices, contiguity, the index
// range: one pass over `indices`) and dispatches to the per-device kernel op
// `_lazy_adam_rows_kernel`, which trusts its inputs.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace pyg_mmrec {
namespace {

void check_table(const at::Tensor& t, const char* name, const at::Tensor& param) {
  TORCH_CHECK_VALUE(t.dim() == 2, "lazy_adam_rows_: `", name, "` must be 2-D [N, F] (got shape ",
                    t.sizes(), ")");
  TORCH_CHECK_VALUE(t.sizes() == param.sizes(), "lazy_adam_rows_: `", name,
                    "` must have the shape of `param` ", param.sizes(), " (got ", t.sizes(), ")");
  TORCH_CHECK_VALUE(t.scalar_type() == param.scalar_type(), "lazy_adam_rows_: `", name,
                    "` must have the dtype of `param` (", param.scalar_type(), "), got ",
                    t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == param.device(), "lazy_adam_rows_: `", name, "` is on ",
                    t.device(), " but `param` is on ", param.device());
  TORCH_CHECK_VALUE(t.is_contiguous(), "lazy_adam_rows_: `", name,
                    "` must be contiguous (it is updated in place)");
}

void check_inputs(const at::Tensor& param, const at::Tensor& exp_avg,
                  const at::Tensor& exp_avg_sq, const at::Tensor& indices,
                  const at::Tensor& values, double beta1, double beta2, double eps,
                  double weight_decay, double bc2_sqrt) {
  TORCH_CHECK_VALUE(param.dim() == 2 && at::isFloatingType(param.scalar_type()),
                    "lazy_adam_rows_: `param` must be a 2-D floating-point table (got shape ",
                    param.sizes(), ", dtype ", param.scalar_type(), ")");
  check_table(param, "param", param);
  check_table(exp_avg, "exp_avg", param);
  check_table(exp_avg_sq, "exp_avg_sq", param);
  TORCH_CHECK_VALUE(indices.dim() == 1 && indices.scalar_type() == at::kLong,
                    "lazy_adam_rows_: `indices` must be a 1-D int64 tensor (got shape ",
                    indices.sizes(), ", dtype ", indices.scalar_type(), ")");
  TORCH_CHECK_VALUE(values.dim() == 2 && values.size(0) == indices.numel() &&
                        values.size(1) == param.size(1),
                    "lazy_adam_rows_: `values` must have shape [", indices.numel(), ", ",
                    param.size(1), "] (one row per index), got ", values.sizes());
  TORCH_CHECK_VALUE(values.scalar_type() == param.scalar_type(),
                    "lazy_adam_rows_: `values` must have the dtype of `param` (",
                    param.scalar_type(), "), got ", values.scalar_type());
  TORCH_CHECK_VALUE(indices.device() == param.device() && values.device() == param.device(),
                    "lazy_adam_rows_: `indices` and `values` must be on the device of `param` (",
                    param.device(), ")");
  TORCH_CHECK_VALUE(0 <= beta1 && beta1 < 1 && 0 <= beta2 && beta2 < 1,
                    "lazy_adam_rows_: betas must be in [0, 1) (got ", beta1, ", ", beta2, ")");
  TORCH_CHECK_VALUE(eps >= 0 && weight_decay >= 0 && bc2_sqrt > 0,
                    "lazy_adam_rows_: expected eps >= 0, weight_decay >= 0, bc2_sqrt > 0 (got ",
                    eps, ", ", weight_decay, ", ", bc2_sqrt, ")");
  if (indices.numel() > 0) {
    auto [lo, hi] = at::aminmax(indices);
    const int64_t lo_v = lo.item<int64_t>(), hi_v = hi.item<int64_t>();
    TORCH_CHECK_VALUE(lo_v >= 0 && hi_v < param.size(0),
                      "lazy_adam_rows_: `indices` must index the rows [0, ", param.size(0),
                      ") of `param`, got values in [", lo_v, ", ", hi_v, "]");
  }
}

}  // namespace

void lazy_adam_rows_(at::Tensor& param, at::Tensor& exp_avg, at::Tensor& exp_avg_sq,
                     const at::Tensor& indices, const at::Tensor& values, double step_size,
                     double beta1, double beta2, double eps, double weight_decay,
                     double bc2_sqrt) {
  check_inputs(param, exp_avg, exp_avg_sq, indices, values, beta1, beta2, eps, weight_decay,
               bc2_sqrt);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pyg_mmrec::_lazy_adam_rows_kernel", "")
                       .typed<void(at::Tensor&, at::Tensor&, at::Tensor&, const at::Tensor&,
                                   const at::Tensor&, double, double, double, double, double,
                                   double)>();
  op.call(param, exp_avg, exp_avg_sq, indices, values.contiguous(), step_size, beta1, beta2, eps,
          weight_decay, bc2_sqrt);
}

}  // namespace pyg_mmrec

TORCH_LIBRARY_FRAGMENT(pyg_mmrec, m) {
  m.def(
      "lazy_adam_rows_(Tensor(a!) param, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, "
      "Tensor indices, Tensor values, float step_size, float beta1, float beta2, float eps, "
      "float weight_decay, float bc2_sqrt) -> ()");
  m.def(
      "_lazy_adam_rows_kernel(Tensor(a!) param, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, "
      "Tensor indices, Tensor values, float step_size, float beta1, float beta2, float eps, "
      "float weight_decay, float bc2_sqrt) -> ()");
}

TORCH_LIBRARY_IMPL(pyg_mmrec, CompositeExplicitAutograd, m) {
  m.impl("lazy_adam_rows_", &pyg_mmrec::lazy_adam_rows_);
}
