// Operator schemas and input validation of `pyg_mmrec::masked_spmm` and its helpers.
//
// Graph layout. A CSR graph with N_dst = rowptr.numel() - 1 destination rows and E = col.numel()
// edges: the edges of row i are e in [rowptr[i], rowptr[i+1]) and point to the source row col[e]
// of x [N_src, F]. The transposed (CSC) layout of the same graph is (colptr, row_t, perm): the
// edges entering source j are k in [colptr[j], colptr[j+1]), coming from destination row_t[k],
// and perm[k] is the CSR position of that edge (so value[perm[k]] is its weight).
//
// Semantics (m = mask, w = value; both default to 1):
//   weight_sum[i] = sum_e w_e * m_col[e]
//   out[i]        = sum_e w_e * m_col[e] * x[col[e]]                     (reduce = "sum")
//   out[i]        = that / weight_sum[i], or 0 where weight_sum[i] == 0  (reduce = "mean")
//
// Layout of this file (as in pyg-lib): the input checks, then for every public op one entry
// that runs on any device (registered for CompositeExplicitAutograd) and does, in this order,
//   1. parse its options (`reduce`),
//   2. validate its inputs once, here and not in every backend: wrong shapes, dtypes, devices,
//      a non-monotone rowptr or out-of-range indices raise a ValueError naming the argument
//      instead of reading out of bounds,
//   3. dispatch to the kernel op (`_<name>_kernel`, implemented per device in cpu/ and cuda/,
//      which trusts its inputs).
// The data-dependent checks (rowptr monotone and ending at E, index ranges) read tensor values:
// one device synchronisation each on CUDA. `masked_spmm(..., trusted=True)` skips them (the
// shape/dtype/device checks still run) for graphs validated once when they were built
// (pyg_mmrec.nn.to_csr); the autograd formula of a trusted call (pyg_mmrec/ops/masked_spmm.py)
// calls the backward kernel ops directly. The schemas and registrations close the file.
#include "masked_spmm.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <Python.h>
#include <torch/library.h>

#include <string_view>

// The extension is imported as the Python module `pyg_mmrec._C`; importing it runs the static
// TORCH_LIBRARY registrations below. It exposes no Python functions of its own.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "Compiled kernels of pyg_mmrec (torch.ops.pyg_mmrec)", -1,
      nullptr};
  return PyModule_Create(&module_def);
}

namespace pyg_mmrec {
namespace {

// Parses `reduce` ("sum" | "mean"); returns true for "mean".
bool parse_reduce(std::string_view reduce) {
  TORCH_CHECK_VALUE(reduce == "sum" || reduce == "mean",
                    "masked_spmm: `reduce` must be 'sum' or 'mean' (got '", std::string(reduce),
                    "')");
  return reduce == "mean";
}

bool is_index_dtype(at::ScalarType t) { return t == at::kInt || t == at::kLong; }

void check_same_device(const at::Tensor& ref, const char* ref_name, const at::Tensor& t,
                       const char* name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), "masked_spmm: `", name, "` is on ", t.device(),
                    " but `", ref_name, "` is on ", ref.device(),
                    "; all inputs must be on the same device");
}

// 1-D index pointer of length n + 1 (when n >= 0) going from 0 to `total`, non-decreasing
// (the values only when `check_data`).
void check_ptr(const at::Tensor& ptr, const char* name, int64_t total, bool check_data,
               int64_t n = -1) {
  TORCH_CHECK_VALUE(is_index_dtype(ptr.scalar_type()), "masked_spmm: `", name,
                    "` must be int32 or int64 (got ", ptr.scalar_type(), ")");
  TORCH_CHECK_VALUE(ptr.dim() == 1 && ptr.numel() >= 1, "masked_spmm: `", name,
                    "` must be a non-empty 1-D tensor (got shape ", ptr.sizes(), ")");
  if (n >= 0) {
    TORCH_CHECK_VALUE(ptr.numel() == n + 1, "masked_spmm: `", name, "` must have ", n + 1,
                      " entries (got ", ptr.numel(), ")");
  }
  if (!check_data) return;
  const int64_t first = ptr[0].item<int64_t>();
  const int64_t last = ptr[-1].item<int64_t>();
  TORCH_CHECK_VALUE(first == 0, "masked_spmm: `", name, "` must start at 0 (got ", first, ")");
  TORCH_CHECK_VALUE(last == total, "masked_spmm: `", name, "` must end at the number of edges ",
                    total, " (got ", last, ")");
  if (ptr.numel() > 2) {
    auto p = ptr.to(at::kLong);
    const bool decreasing = (p.slice(0, 1) < p.slice(0, 0, -1)).any().item<bool>();
    TORCH_CHECK_VALUE(!decreasing, "masked_spmm: `", name, "` must be non-decreasing");
  }
}

// 1-D index tensor with entries in [0, bound) (the values only when `check_data`).
void check_index(const at::Tensor& idx, const char* name, const at::Tensor& ptr,
                 const char* ptr_name, int64_t bound, const char* bound_desc, bool check_data) {
  TORCH_CHECK_VALUE(idx.dim() == 1, "masked_spmm: `", name, "` must be 1-D (got shape ",
                    idx.sizes(), ")");
  TORCH_CHECK_VALUE(idx.scalar_type() == ptr.scalar_type(), "masked_spmm: `", name, "` (",
                    idx.scalar_type(), ") must have the same dtype as `", ptr_name, "` (",
                    ptr.scalar_type(), ")");
  check_same_device(ptr, ptr_name, idx, name);
  if (check_data && idx.numel() > 0) {
    auto [lo, hi] = at::aminmax(idx);
    const int64_t lo_v = lo.item<int64_t>(), hi_v = hi.item<int64_t>();
    TORCH_CHECK_VALUE(lo_v >= 0 && hi_v < bound, "masked_spmm: `", name,
                      "` must index the range [0, ", bound, ") (", bound_desc, "), got values in [",
                      lo_v, ", ", hi_v, "]");
  }
}

void check_features(const at::Tensor& x, const char* name, const at::Tensor& ref,
                     const char* ref_name) {
  TORCH_CHECK_VALUE(x.dim() == 2, "masked_spmm: `", name, "` must be 2-D [N, F] (got shape ",
                    x.sizes(), ")");
  TORCH_CHECK_VALUE(at::isFloatingType(x.scalar_type()), "masked_spmm: `", name,
                    "` must be a floating-point tensor (got ", x.scalar_type(), ")");
  check_same_device(ref, ref_name, x, name);
}

void check_mask(const std::optional<at::Tensor>& mask, int64_t n_src, const at::Tensor& ref,
                const char* ref_name) {
  if (!mask.has_value()) return;
  const auto& m = *mask;
  TORCH_CHECK_VALUE(m.scalar_type() == at::kBool, "masked_spmm: `mask` must be a bool tensor (got ",
                    m.scalar_type(), ")");
  TORCH_CHECK_VALUE(m.dim() == 1 && m.numel() == n_src,
                    "masked_spmm: `mask` must be 1-D with one entry per source node (", n_src,
                    "), got shape ", m.sizes());
  check_same_device(ref, ref_name, m, "mask");
}

void check_vector(const std::optional<at::Tensor>& v, const char* name, int64_t n,
                  const char* n_desc, const at::Tensor& x, const char* x_name) {
  if (!v.has_value()) return;
  TORCH_CHECK_VALUE(v->dim() == 1 && v->numel() == n, "masked_spmm: `", name,
                    "` must be 1-D with ", n, " entries (", n_desc, "), got shape ", v->sizes());
  TORCH_CHECK_VALUE(v->scalar_type() == x.scalar_type(), "masked_spmm: `", name, "` (",
                    v->scalar_type(), ") must have the same dtype as `", x_name, "` (",
                    x.scalar_type(), ")");
  check_same_device(x, x_name, *v, name);
}

void check_csr(const at::Tensor& rowptr, const at::Tensor& col, int64_t n_src, bool check_data) {
  check_ptr(rowptr, "rowptr", col.numel(), check_data);
  check_index(col, "col", rowptr, "rowptr", n_src, "the number of source rows x.size(0)",
              check_data);
}

void check_forward_inputs(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& x,
                          const std::optional<at::Tensor>& mask,
                          const std::optional<at::Tensor>& value,
                          const std::optional<at::Tensor>& colptr,
                          const std::optional<at::Tensor>& row_t,
                          const std::optional<at::Tensor>& perm, bool check_data) {
  check_features(x, "x", rowptr, "rowptr");
  TORCH_CHECK_VALUE(is_index_dtype(rowptr.scalar_type()),
                    "masked_spmm: `rowptr` must be int32 or int64 (got ", rowptr.scalar_type(), ")");
  check_csr(rowptr, col, x.size(0), check_data);
  check_mask(mask, x.size(0), rowptr, "rowptr");
  check_vector(value, "value", col.numel(), "one per edge", x, "x");
  // The transposed layout is only carried to the backward pass; it is range-checked there.
  const int n_given = colptr.has_value() + row_t.has_value() + perm.has_value();
  TORCH_CHECK_VALUE(n_given == 0 || n_given == 3,
                    "masked_spmm: `colptr`, `row_t` and `perm` must be given together");
  if (n_given == 3) {
    const std::pair<const at::Tensor*, const char*> parts[] = {
        {&*colptr, "colptr"}, {&*row_t, "row_t"}, {&*perm, "perm"}};
    for (const auto& [t, name] : parts) {
      TORCH_CHECK_VALUE(t->dim() == 1 && t->scalar_type() == rowptr.scalar_type(),
                        "masked_spmm: `", name, "` must be 1-D with the dtype of `rowptr` (",
                        rowptr.scalar_type(), "), got shape ", t->sizes(), " and dtype ",
                        t->scalar_type());
      check_same_device(rowptr, "rowptr", *t, name);
    }
    TORCH_CHECK_VALUE(colptr->numel() == x.size(0) + 1, "masked_spmm: `colptr` must have ",
                      x.size(0) + 1, " entries (x.size(0) + 1), got ", colptr->numel());
    TORCH_CHECK_VALUE(row_t->numel() == col.numel() && perm->numel() == col.numel(),
                      "masked_spmm: `row_t` and `perm` must have one entry per edge (",
                      col.numel(), ")");
  }
}

void check_backward_x_inputs(const at::Tensor& colptr, const at::Tensor& row_t,
                             const at::Tensor& perm, const at::Tensor& grad_out,
                             const std::optional<at::Tensor>& mask,
                             const std::optional<at::Tensor>& value,
                             const std::optional<at::Tensor>& weight_sum, bool mean) {
  check_features(grad_out, "grad_out", colptr, "colptr");
  const int64_t n_src = colptr.numel() - 1;
  const int64_t n_edges = row_t.numel();
  check_ptr(colptr, "colptr", n_edges, /*check_data=*/true);
  check_index(row_t, "row_t", colptr, "colptr", grad_out.size(0),
              "the number of destination rows grad_out.size(0)", /*check_data=*/true);
  check_index(perm, "perm", colptr, "colptr", n_edges, "the number of edges",
              /*check_data=*/true);
  TORCH_CHECK_VALUE(perm.numel() == n_edges, "masked_spmm: `perm` must have one entry per edge (",
                    n_edges, "), got ", perm.numel());
  check_mask(mask, n_src, colptr, "colptr");
  check_vector(value, "value", n_edges, "one per edge", grad_out, "grad_out");
  check_vector(weight_sum, "weight_sum", grad_out.size(0), "one per destination row", grad_out,
               "grad_out");
  TORCH_CHECK_VALUE(!mean || weight_sum.has_value(),
                    "masked_spmm_backward_x: `weight_sum` is required when mean=True");
}

void check_backward_value_inputs(const at::Tensor& rowptr, const at::Tensor& col,
                                 const at::Tensor& x, const at::Tensor& grad_out,
                                 const std::optional<at::Tensor>& grad_weight_sum,
                                 const std::optional<at::Tensor>& mask,
                                 const at::Tensor& out, const at::Tensor& weight_sum) {
  check_features(x, "x", rowptr, "rowptr");
  check_csr(rowptr, col, x.size(0), /*check_data=*/true);
  const int64_t n_dst = rowptr.numel() - 1;
  check_features(grad_out, "grad_out", rowptr, "rowptr");
  check_features(out, "out", rowptr, "rowptr");
  for (const auto& [t, name] : {std::pair<const at::Tensor*, const char*>{&grad_out, "grad_out"},
                                {&out, "out"}}) {
    TORCH_CHECK_VALUE(t->size(0) == n_dst && t->size(1) == x.size(1), "masked_spmm: `", name,
                      "` must have shape [", n_dst, ", ", x.size(1), "], got ", t->sizes());
    TORCH_CHECK_VALUE(t->scalar_type() == x.scalar_type(), "masked_spmm: `", name,
                      "` must have the dtype of `x`");
  }
  check_vector(grad_weight_sum, "grad_weight_sum", n_dst, "one per destination row", x, "x");
  check_vector(weight_sum, "weight_sum", n_dst, "one per destination row", x, "x");
  check_mask(mask, x.size(0), rowptr, "rowptr");
}

void check_transpose_inputs(const at::Tensor& rowptr, const at::Tensor& col, int64_t num_src) {
  TORCH_CHECK_VALUE(num_src >= 0, "csr_transpose: `num_src` must be >= 0 (got ", num_src, ")");
  TORCH_CHECK_VALUE(is_index_dtype(rowptr.scalar_type()),
                    "masked_spmm: `rowptr` must be int32 or int64 (got ", rowptr.scalar_type(), ")");
  check_csr(rowptr, col, num_src, /*check_data=*/true);
}

// The kernel op `pyg_mmrec::<name>` with the C++ signature Fn, looked up once.
template <typename Fn>
c10::TypedOperatorHandle<Fn> kernel_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}

using OptTensor = std::optional<at::Tensor>;

// ---- The public ops: parse, validate, dispatch to the device kernel.

std::tuple<at::Tensor, at::Tensor> masked_spmm(const at::Tensor& rowptr, const at::Tensor& col,
                                               const at::Tensor& x, const OptTensor& mask,
                                               const OptTensor& value, std::string_view reduce,
                                               const OptTensor& colptr, const OptTensor& row_t,
                                               const OptTensor& perm, bool trusted) {
  const bool mean = parse_reduce(reduce);
  check_forward_inputs(rowptr, col, x, mask, value, colptr, row_t, perm, /*check_data=*/!trusted);
  static const auto op = kernel_op<std::tuple<at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&,
      const OptTensor&, bool)>("pyg_mmrec::_masked_spmm_kernel");
  return op.call(rowptr, col, x, mask, value, mean);
}

at::Tensor masked_spmm_backward_x(const at::Tensor& colptr, const at::Tensor& row_t,
                                  const at::Tensor& perm, const at::Tensor& grad_out,
                                  const OptTensor& mask, const OptTensor& value,
                                  const OptTensor& weight_sum, bool mean) {
  check_backward_x_inputs(colptr, row_t, perm, grad_out, mask, value, weight_sum, mean);
  static const auto op = kernel_op<at::Tensor(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
      const OptTensor&, const OptTensor&, const OptTensor&, bool)>(
      "pyg_mmrec::_masked_spmm_backward_x_kernel");
  return op.call(colptr, row_t, perm, grad_out, mask, value, weight_sum, mean);
}

at::Tensor masked_spmm_backward_value(const at::Tensor& rowptr, const at::Tensor& col,
                                      const at::Tensor& x, const at::Tensor& grad_out,
                                      const OptTensor& grad_weight_sum, const OptTensor& mask,
                                      const at::Tensor& out, const at::Tensor& weight_sum,
                                      bool mean) {
  check_backward_value_inputs(rowptr, col, x, grad_out, grad_weight_sum, mask, out, weight_sum);
  static const auto op = kernel_op<at::Tensor(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
      const OptTensor&, const OptTensor&, const at::Tensor&, const at::Tensor&, bool)>(
      "pyg_mmrec::_masked_spmm_backward_value_kernel");
  return op.call(rowptr, col, x, grad_out, grad_weight_sum, mask, out, weight_sum, mean);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> csr_transpose(const at::Tensor& rowptr,
                                                             const at::Tensor& col,
                                                             int64_t num_src) {
  check_transpose_inputs(rowptr, col, num_src);
  static const auto op = kernel_op<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, int64_t)>("pyg_mmrec::_csr_transpose_kernel");
  return op.call(rowptr, col, num_src);
}

}  // namespace
}  // namespace pyg_mmrec

TORCH_LIBRARY(pyg_mmrec, m) {
  // ---- Public ops (validated; implemented below for every device).
  // out, weight_sum = masked_spmm(...): the forward of the contract above. colptr/row_t/perm
  // are an optional precomputed transposed layout; the forward ignores them, autograd reuses
  // them so that a static graph is transposed once and not on every backward pass.
  // trusted=True: the caller guarantees that rowptr/col (and colptr/row_t/perm) form a valid
  // graph for x; the checks that read their values (a device sync each) are skipped.
  m.def(
      "masked_spmm(Tensor rowptr, Tensor col, Tensor x, Tensor? mask=None, Tensor? value=None, "
      "str reduce='mean', Tensor? colptr=None, Tensor? row_t=None, Tensor? perm=None, "
      "bool trusted=False) -> (Tensor out, Tensor weight_sum)");
  // grad_x [N_src, F] with grad_x[j] = m_j * sum_{k in colptr[j]..} c_k * grad_out[row_t[k]],
  // c_k = value[perm[k]] (1 without value), divided by weight_sum[row_t[k]] when `mean` (0 where
  // that is 0). A gather over the transposed graph: one writer per output row, no atomics.
  m.def(
      "masked_spmm_backward_x(Tensor colptr, Tensor row_t, Tensor perm, Tensor grad_out, "
      "Tensor? mask, Tensor? value, Tensor? weight_sum, bool mean) -> Tensor");
  // grad_value [E]: for the edge e = (i, j), m_j * (<grad_out[i], x[j]> for "sum", or
  // <grad_out[i], x[j] - out[i]> / weight_sum[i] for "mean"; 0 where weight_sum[i] == 0)
  // + m_j * grad_weight_sum[i].
  m.def(
      "masked_spmm_backward_value(Tensor rowptr, Tensor col, Tensor x, Tensor grad_out, "
      "Tensor? grad_weight_sum, Tensor? mask, Tensor out, Tensor weight_sum, bool mean) -> Tensor");
  // colptr, row_t, perm = csr_transpose(rowptr, col, num_src): the CSC layout described above,
  // with the edges of each source in increasing CSR order (a stable counting sort).
  m.def("csr_transpose(Tensor rowptr, Tensor col, int num_src) -> (Tensor, Tensor, Tensor)");

  // ---- Kernel ops: the same computations without checks, one implementation per device
  // (cpu/masked_spmm_cpu.cpp, cuda/masked_spmm_cuda.cpp). Called by the public ops above and,
  // for trusted graphs, by the autograd formula; not meant to be called by users.
  m.def(
      "_masked_spmm_kernel(Tensor rowptr, Tensor col, Tensor x, Tensor? mask, Tensor? value, "
      "bool mean) -> (Tensor out, Tensor weight_sum)");
  m.def(
      "_masked_spmm_backward_x_kernel(Tensor colptr, Tensor row_t, Tensor perm, "
      "Tensor grad_out, Tensor? mask, Tensor? value, Tensor? weight_sum, bool mean) -> Tensor");
  m.def(
      "_masked_spmm_backward_value_kernel(Tensor rowptr, Tensor col, Tensor x, Tensor grad_out, "
      "Tensor? grad_weight_sum, Tensor? mask, Tensor out, Tensor weight_sum, bool mean) "
      "-> Tensor");
  m.def(
      "_csr_transpose_kernel(Tensor rowptr, Tensor col, int num_src) "
      "-> (Tensor, Tensor, Tensor)");
}

// One entry per public op for every device: validation is device independent.
TORCH_LIBRARY_IMPL(pyg_mmrec, CompositeExplicitAutograd, m) {
  m.impl("masked_spmm", &pyg_mmrec::masked_spmm);
  m.impl("masked_spmm_backward_x", &pyg_mmrec::masked_spmm_backward_x);
  m.impl("masked_spmm_backward_value", &pyg_mmrec::masked_spmm_backward_value);
  m.impl("csr_transpose", &pyg_mmrec::csr_transpose);
}
