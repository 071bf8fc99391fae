// CPU kernels of pyg_mmrec::masked_spmm (forward, backward w.r.t. x and value) and csr_transpose.
//
// All kernels are row-parallel gathers: each output row has exactly one writer, so no atomics
// and no scatter are needed. The backward w.r.t. x gathers over the transposed (CSC) graph.
// Rows are split between threads by edge count (not row count) so that power-law degree
// distributions do not leave one thread with all the hubs. The inner loops run over the
// contiguous feature dimension F and are vectorised (`omp simd`); the rows gathered next are
// prefetched because the source rows are visited in random order.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../masked_spmm.h"

namespace pyg_mmrec {
namespace {

// How many edges ahead the source row is prefetched. The gather is latency bound: a row of
// F = 64 floats spans 4 cache lines and lives at a random address.
constexpr int64_t kPrefetchDistance = 8;

template <typename scalar_t>
inline void prefetch_row(const scalar_t* p, int64_t F) {
  const char* c = reinterpret_cast<const char*>(p);
  const int64_t bytes = F * static_cast<int64_t>(sizeof(scalar_t));
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(c + b, 0, 3);
}

// y += a * x over F contiguous features.
template <typename acc_t, typename scalar_t>
inline void axpy(acc_t* __restrict y, const scalar_t* __restrict x, acc_t a, int64_t F) {
#pragma omp simd
  for (int64_t f = 0; f < F; ++f) y[f] += a * static_cast<acc_t>(x[f]);
}

template <typename acc_t, typename scalar_t>
inline acc_t dot(const scalar_t* __restrict a, const scalar_t* __restrict b, int64_t F) {
  acc_t s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t f = 0; f < F; ++f) s += static_cast<acc_t>(a[f]) * static_cast<acc_t>(b[f]);
  return s;
}

// Runs fn(row_begin, row_end) over [0, n) split into one contiguous block per thread, each
// with about the same number of edges + rows (ptr is a CSR/CSC pointer of length n + 1).
template <typename index_t, typename Fn>
void parallel_rows(const index_t* ptr, int64_t n, int64_t F, const Fn& fn) {
  const int64_t cost = static_cast<int64_t>(ptr[n]) + n;
  const int64_t work = cost * std::max<int64_t>(F, 1);
  const int64_t nthreads = at::get_num_threads();
  const int64_t nchunks = (work < (1 << 16) || nthreads <= 1) ? 1 : std::min(nthreads, n);
  if (nchunks <= 1) {
    fn(int64_t(0), n);
    return;
  }
  // First row r with ptr[r] + r >= target; ptr[r] + r is strictly increasing in r.
  auto boundary = [&](int64_t c) -> int64_t {
    if (c >= nchunks) return n;
    const int64_t target = cost * c / nchunks;
    int64_t lo = 0, hi = n;
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (static_cast<int64_t>(ptr[mid]) + mid < target) lo = mid + 1; else hi = mid;
    }
    return lo;
  };
  at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t r0 = boundary(c), r1 = boundary(c + 1);
      if (r0 < r1) fn(r0, r1);
    }
  });
}

// Accumulator row: the output row itself when scalar_t is the accumulation type, else a
// per-thread buffer in float (bf16 / half inputs).
template <typename scalar_t, typename acc_t>
struct RowAcc {
  std::vector<acc_t> buf;
  explicit RowAcc(int64_t F) {
    if constexpr (!std::is_same_v<scalar_t, acc_t>) buf.resize(F);
  }
  acc_t* begin(scalar_t* out_row, int64_t F) {
    acc_t* a;
    if constexpr (std::is_same_v<scalar_t, acc_t>) a = out_row; else a = buf.data();
    std::fill(a, a + F, acc_t(0));
    return a;
  }
  void finish(acc_t* a, scalar_t* out_row, acc_t scale, int64_t F) {
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      if (scale != acc_t(1)) {
#pragma omp simd
        for (int64_t f = 0; f < F; ++f) out_row[f] = a[f] * scale;
      }
    } else {
      for (int64_t f = 0; f < F; ++f) out_row[f] = static_cast<scalar_t>(a[f] * scale);
    }
  }
};

template <typename scalar_t, typename index_t>
void forward_kernel(const index_t* rowptr, const index_t* col, const scalar_t* x, const bool* mask,
                    const scalar_t* value, scalar_t* out, scalar_t* wsum, int64_t n_dst,
                    int64_t F, bool mean) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n_edges = rowptr[n_dst];
  parallel_rows(rowptr, n_dst, F, [&](int64_t r0, int64_t r1) {
    RowAcc<scalar_t, acc_t> acc_row(F);
    for (int64_t i = r0; i < r1; ++i) {
      scalar_t* out_i = out + i * F;
      acc_t* acc = acc_row.begin(out_i, F);
      acc_t ws = 0;
      const int64_t e1 = rowptr[i + 1];
      for (int64_t e = rowptr[i]; e < e1; ++e) {
        if (e + kPrefetchDistance < n_edges) {
          prefetch_row(x + static_cast<int64_t>(col[e + kPrefetchDistance]) * F, F);
        }
        const int64_t j = col[e];
        if (mask != nullptr && !mask[j]) continue;
        const acc_t w = value != nullptr ? static_cast<acc_t>(value[e]) : acc_t(1);
        ws += w;
        axpy(acc, x + j * F, w, F);
      }
      acc_t scale = 1;
      if (mean) scale = ws != acc_t(0) ? acc_t(1) / ws : acc_t(0);
      acc_row.finish(acc, out_i, scale, F);
      wsum[i] = static_cast<scalar_t>(ws);
    }
  });
}

template <typename scalar_t, typename index_t>
void backward_x_kernel(const index_t* colptr, const index_t* row_t, const index_t* perm,
                       const scalar_t* grad_out, const bool* mask, const scalar_t* value,
                       const scalar_t* wsum, scalar_t* grad_x, int64_t n_src, int64_t n_dst,
                       int64_t F, bool mean) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n_edges = colptr[n_src];
  // 1 / weight_sum per destination row (0 where the sum is 0: those rows output a constant 0).
  std::vector<acc_t> inv_ws;
  if (mean) {
    inv_ws.resize(n_dst);
    at::parallel_for(0, n_dst, 1 << 14, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const acc_t w = static_cast<acc_t>(wsum[i]);
        inv_ws[i] = w != acc_t(0) ? acc_t(1) / w : acc_t(0);
      }
    });
  }
  const acc_t* inv = mean ? inv_ws.data() : nullptr;
  parallel_rows(colptr, n_src, F, [&](int64_t r0, int64_t r1) {
    RowAcc<scalar_t, acc_t> acc_row(F);
    for (int64_t j = r0; j < r1; ++j) {
      scalar_t* gx_j = grad_x + j * F;
      acc_t* acc = acc_row.begin(gx_j, F);
      // A masked source contributes nothing to any output, so its gradient is exactly 0.
      if (mask == nullptr || mask[j]) {
        const int64_t k1 = colptr[j + 1];
        for (int64_t k = colptr[j]; k < k1; ++k) {
          if (k + kPrefetchDistance < n_edges) {
            prefetch_row(grad_out + static_cast<int64_t>(row_t[k + kPrefetchDistance]) * F, F);
          }
          const int64_t i = row_t[k];
          acc_t c = value != nullptr ? static_cast<acc_t>(value[perm[k]]) : acc_t(1);
          if (mean) c *= inv[i];
          axpy(acc, grad_out + i * F, c, F);
        }
      }
      acc_row.finish(acc, gx_j, acc_t(1), F);
    }
  });
}

template <typename scalar_t, typename index_t>
void backward_value_kernel(const index_t* rowptr, const index_t* col, const scalar_t* x,
                           const scalar_t* grad_out, const scalar_t* grad_wsum, const bool* mask,
                           const scalar_t* out, const scalar_t* wsum, scalar_t* grad_value,
                           int64_t n_dst, int64_t F, bool mean) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n_edges = rowptr[n_dst];
  parallel_rows(rowptr, n_dst, F, [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const scalar_t* g_i = grad_out + i * F;
      acc_t inv = 1, c_i = 0;
      if (mean) {
        const acc_t w = static_cast<acc_t>(wsum[i]);
        inv = w != acc_t(0) ? acc_t(1) / w : acc_t(0);
        // d out_i / d w_e = m_j (x_j - out_i) / W_i, so <g_i, out_i> is shared by the row.
        if (inv != acc_t(0)) c_i = dot<acc_t>(g_i, out + i * F, F);
      }
      const acc_t gws = grad_wsum != nullptr ? static_cast<acc_t>(grad_wsum[i]) : acc_t(0);
      const int64_t e1 = rowptr[i + 1];
      for (int64_t e = rowptr[i]; e < e1; ++e) {
        if (e + kPrefetchDistance < n_edges) {
          prefetch_row(x + static_cast<int64_t>(col[e + kPrefetchDistance]) * F, F);
        }
        const int64_t j = col[e];
        if (mask != nullptr && !mask[j]) {
          grad_value[e] = scalar_t(0);
          continue;
        }
        acc_t d = 0;
        if (inv != acc_t(0)) d = (dot<acc_t>(g_i, x + j * F, F) - c_i) * inv;
        grad_value[e] = static_cast<scalar_t>(d + gws);
      }
    }
  });
}

template <typename T>
const T* ptr_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

std::optional<at::Tensor> contiguous(const std::optional<at::Tensor>& t) {
  if (!t.has_value()) return std::nullopt;
  return t->contiguous();
}

#define PYG_MMREC_DISPATCH_FLOATS(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, TYPE, NAME, __VA_ARGS__)

std::tuple<at::Tensor, at::Tensor> masked_spmm_cpu(
    const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& x,
    const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& value,
    std::string_view reduce, const std::optional<at::Tensor>& colptr,
    const std::optional<at::Tensor>& row_t, const std::optional<at::Tensor>& perm) {
  const bool mean = parse_reduce(reduce);
  check_forward_inputs(rowptr, col, x, mask, value, colptr, row_t, perm);
  const auto rowptr_c = rowptr.contiguous(), col_c = col.contiguous(), x_c = x.contiguous();
  const auto mask_c = contiguous(mask), value_c = contiguous(value);
  const int64_t n_dst = rowptr.numel() - 1, F = x.size(1);
  auto out = at::empty({n_dst, F}, x.options());
  auto wsum = at::empty({n_dst}, x.options());
  PYG_MMREC_DISPATCH_FLOATS(x.scalar_type(), "masked_spmm_cpu", [&] {
    AT_DISPATCH_INDEX_TYPES(rowptr.scalar_type(), "masked_spmm_cpu", [&] {
      forward_kernel<scalar_t, index_t>(
          rowptr_c.data_ptr<index_t>(), col_c.data_ptr<index_t>(), x_c.data_ptr<scalar_t>(),
          ptr_or_null<bool>(mask_c), ptr_or_null<scalar_t>(value_c), out.data_ptr<scalar_t>(),
          wsum.data_ptr<scalar_t>(), n_dst, F, mean);
    });
  });
  return {out, wsum};
}

at::Tensor masked_spmm_backward_x_cpu(const at::Tensor& colptr, const at::Tensor& row_t,
                                      const at::Tensor& perm, const at::Tensor& grad_out,
                                      const std::optional<at::Tensor>& mask,
                                      const std::optional<at::Tensor>& value,
                                      const std::optional<at::Tensor>& weight_sum, bool mean) {
  check_backward_x_inputs(colptr, row_t, perm, grad_out, mask, value, weight_sum);
  TORCH_CHECK_VALUE(!mean || weight_sum.has_value(),
                    "masked_spmm_backward_x: `weight_sum` is required when mean=True");
  const auto colptr_c = colptr.contiguous(), row_t_c = row_t.contiguous(),
             perm_c = perm.contiguous(), g_c = grad_out.contiguous();
  const auto mask_c = contiguous(mask), value_c = contiguous(value), ws_c = contiguous(weight_sum);
  const int64_t n_src = colptr.numel() - 1, n_dst = grad_out.size(0), F = grad_out.size(1);
  auto grad_x = at::empty({n_src, F}, grad_out.options());
  PYG_MMREC_DISPATCH_FLOATS(grad_out.scalar_type(), "masked_spmm_backward_x_cpu", [&] {
    AT_DISPATCH_INDEX_TYPES(colptr.scalar_type(), "masked_spmm_backward_x_cpu", [&] {
      backward_x_kernel<scalar_t, index_t>(
          colptr_c.data_ptr<index_t>(), row_t_c.data_ptr<index_t>(), perm_c.data_ptr<index_t>(),
          g_c.data_ptr<scalar_t>(), ptr_or_null<bool>(mask_c), ptr_or_null<scalar_t>(value_c),
          ptr_or_null<scalar_t>(ws_c), grad_x.data_ptr<scalar_t>(), n_src, n_dst, F, mean);
    });
  });
  return grad_x;
}

at::Tensor masked_spmm_backward_value_cpu(const at::Tensor& rowptr, const at::Tensor& col,
                                          const at::Tensor& x, const at::Tensor& grad_out,
                                          const std::optional<at::Tensor>& grad_weight_sum,
                                          const std::optional<at::Tensor>& mask,
                                          const at::Tensor& out, const at::Tensor& weight_sum,
                                          bool mean) {
  check_backward_value_inputs(rowptr, col, x, grad_out, grad_weight_sum, mask, out, weight_sum);
  const auto rowptr_c = rowptr.contiguous(), col_c = col.contiguous(), x_c = x.contiguous(),
             g_c = grad_out.contiguous(), out_c = out.contiguous(), ws_c = weight_sum.contiguous();
  const auto gws_c = contiguous(grad_weight_sum), mask_c = contiguous(mask);
  const int64_t n_dst = rowptr.numel() - 1, F = x.size(1);
  auto grad_value = at::empty({col.numel()}, x.options());
  PYG_MMREC_DISPATCH_FLOATS(x.scalar_type(), "masked_spmm_backward_value_cpu", [&] {
    AT_DISPATCH_INDEX_TYPES(rowptr.scalar_type(), "masked_spmm_backward_value_cpu", [&] {
      backward_value_kernel<scalar_t, index_t>(
          rowptr_c.data_ptr<index_t>(), col_c.data_ptr<index_t>(), x_c.data_ptr<scalar_t>(),
          g_c.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(gws_c), ptr_or_null<bool>(mask_c),
          out_c.data_ptr<scalar_t>(), ws_c.data_ptr<scalar_t>(), grad_value.data_ptr<scalar_t>(),
          n_dst, F, mean);
    });
  });
  return grad_value;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> csr_transpose_cpu(const at::Tensor& rowptr,
                                                                  const at::Tensor& col,
                                                                  int64_t num_src) {
  check_transpose_inputs(rowptr, col, num_src);
  const auto rowptr_c = rowptr.contiguous(), col_c = col.contiguous();
  const int64_t n_dst = rowptr.numel() - 1, n_edges = col.numel();
  auto colptr = at::zeros({num_src + 1}, rowptr.options());
  auto row_t = at::empty({n_edges}, rowptr.options());
  auto perm = at::empty({n_edges}, rowptr.options());
  AT_DISPATCH_INDEX_TYPES(rowptr.scalar_type(), "csr_transpose_cpu", [&] {
    // Stable counting sort of the edges by source: O(E + N), sequential (it runs once per
    // static graph and is bound by random writes).
    const index_t* rp = rowptr_c.data_ptr<index_t>();
    const index_t* c = col_c.data_ptr<index_t>();
    index_t* cp = colptr.data_ptr<index_t>();
    index_t* rt = row_t.data_ptr<index_t>();
    index_t* pm = perm.data_ptr<index_t>();
    for (int64_t e = 0; e < n_edges; ++e) ++cp[static_cast<int64_t>(c[e]) + 1];
    for (int64_t j = 0; j < num_src; ++j) cp[j + 1] += cp[j];
    std::vector<index_t> next(cp, cp + num_src);
    for (int64_t i = 0; i < n_dst; ++i) {
      for (int64_t e = rp[i]; e < rp[i + 1]; ++e) {
        const index_t k = next[c[e]]++;
        rt[k] = static_cast<index_t>(i);
        pm[k] = static_cast<index_t>(e);
      }
    }
  });
  return {colptr, row_t, perm};
}

}  // namespace
}  // namespace pyg_mmrec

TORCH_LIBRARY_IMPL(pyg_mmrec, CPU, m) {
  m.impl("masked_spmm", &pyg_mmrec::masked_spmm_cpu);
  m.impl("masked_spmm_backward_x", &pyg_mmrec::masked_spmm_backward_x_cpu);
  m.impl("masked_spmm_backward_value", &pyg_mmrec::masked_spmm_backward_value_cpu);
  m.impl("csr_transpose", &pyg_mmrec::csr_transpose_cpu);
}
