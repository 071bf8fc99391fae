// CPU kernels of pyg_mmrec::masked_spmm (forward, backward w.r.t. x and value) and csr_transpose:
// the implementations of the kernel ops `_<name>_kernel` for CPU tensors. Their inputs are
// validated before dispatch (csrc/masked_spmm.cpp); nothing here checks them again.
//
// All kernels are row-parallel gathers: each output row has exactly one writer, so no atomics
// and no scatter are needed. The backward w.r.t. x gathers over the transposed (CSC) graph.
// Rows are split into chunks by edge count (not row count) so that power-law degree
// distributions do not leave one thread with all the hubs. The inner loops run over the
// contiguous feature dimension F, accumulate a 256-byte feature block in registers over all
// edges of a row, and are vectorised (`omp simd`, AVX2/AVX-512 chosen at run time); the source
// rows gathered next are prefetched because they are visited in random order.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>
#include <vector>

#include "../masked_spmm.h"

namespace pyg_mmrec {
namespace {

#define PYG_MMREC_INLINE inline __attribute__((always_inline))

// How many edges ahead the next source row is prefetched (only when it is present: prefetching
// masked rows would waste half the memory traffic at 50% missingness).
constexpr int64_t kPrefetchDistance = 12;

// Features are processed in blocks of 256 bytes of accumulator kept in a local array (in
// registers once vectorised) across all edges of a row; wider rows take several passes.
template <typename acc_t>
constexpr int kBlock = 256 / sizeof(acc_t);

template <typename scalar_t>
PYG_MMREC_INLINE void prefetch(const scalar_t* p, int64_t n) {
  const char* c = reinterpret_cast<const char*>(p);
  const int64_t bytes = n * static_cast<int64_t>(sizeof(scalar_t));
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(c + b, 0, 3);
}

template <typename acc_t, typename scalar_t>
PYG_MMREC_INLINE acc_t dot(const scalar_t* __restrict a, const scalar_t* __restrict b,
                           int64_t F) {
  acc_t s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t f = 0; f < F; ++f) s += static_cast<acc_t>(a[f]) * static_cast<acc_t>(b[f]);
  return s;
}

// Kernel arguments (raw pointers to contiguous, validated tensors; optional ones are nullptr).
template <typename scalar_t, typename index_t>
struct ForwardArgs {
  const index_t *rowptr, *col;
  const scalar_t* x;
  const bool* mask;
  const scalar_t* value;
  scalar_t *out, *wsum;
  int64_t n_dst, F;
  bool mean;
};

template <typename scalar_t, typename index_t>
struct BackwardXArgs {
  const index_t *colptr, *row_t, *perm;
  const scalar_t* grad_out;
  const bool* mask;
  const scalar_t* value;
  const at::opmath_type<scalar_t>* inv_wsum;  // 1 / weight_sum (0 where it is 0), or nullptr
  scalar_t* grad_x;
  int64_t n_src, F;
};

template <typename scalar_t, typename index_t>
struct BackwardValueArgs {
  const index_t *rowptr, *col;
  const scalar_t *x, *grad_out, *grad_wsum;
  const bool* mask;
  const scalar_t *out, *wsum;
  scalar_t* grad_value;
  int64_t n_dst, F;
  bool mean;
};

// Forward for rows [r0, r1), feature block [f0, f0 + len) (len == BF unless TAIL).
template <int BF, bool TAIL, typename scalar_t, typename index_t>
PYG_MMREC_INLINE void forward_block(const ForwardArgs<scalar_t, index_t>& a, int64_t r0,
                                    int64_t r1, int64_t f0, int64_t len) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t F = a.F, n_edges = a.rowptr[a.n_dst];
  for (int64_t i = r0; i < r1; ++i) {
    acc_t acc[BF];
    for (int f = 0; f < BF; ++f) acc[f] = acc_t(0);
    acc_t ws = 0;
    const int64_t e1 = a.rowptr[i + 1];
    for (int64_t e = a.rowptr[i]; e < e1; ++e) {
      if (e + kPrefetchDistance < n_edges) {
        const int64_t jp = a.col[e + kPrefetchDistance];
        if (a.mask == nullptr || a.mask[jp]) prefetch(a.x + jp * F + f0, BF);
      }
      const int64_t j = a.col[e];
      if (a.mask != nullptr && !a.mask[j]) continue;
      const acc_t w = a.value != nullptr ? static_cast<acc_t>(a.value[e]) : acc_t(1);
      ws += w;
      const scalar_t* __restrict xr = a.x + j * F + f0;
      if constexpr (TAIL) {
        for (int64_t f = 0; f < len; ++f) acc[f] += w * static_cast<acc_t>(xr[f]);
      } else {
#pragma omp simd
        for (int f = 0; f < BF; ++f) acc[f] += w * static_cast<acc_t>(xr[f]);
      }
    }
    scalar_t* __restrict o = a.out + i * F + f0;
    if (a.mean && ws == acc_t(0)) {
      // Exactly 0 as in the definition: `acc * 0` would be NaN when a present row holds inf.
      for (int64_t f = 0; f < (TAIL ? len : BF); ++f) o[f] = scalar_t(0);
    } else {
      const acc_t scale = a.mean ? acc_t(1) / ws : acc_t(1);
      for (int64_t f = 0; f < (TAIL ? len : BF); ++f)
        o[f] = static_cast<scalar_t>(acc[f] * scale);
    }
    if (f0 == 0) a.wsum[i] = static_cast<scalar_t>(ws);
  }
}

template <typename scalar_t, typename index_t>
PYG_MMREC_INLINE void forward_rows(const ForwardArgs<scalar_t, index_t>& a, int64_t r0,
                                   int64_t r1) {
  constexpr int BF = kBlock<at::opmath_type<scalar_t>>;
  int64_t f0 = 0;
  for (; f0 + BF <= a.F; f0 += BF) forward_block<BF, false>(a, r0, r1, f0, BF);
  // The tail block also writes weight_sum when F == 0.
  if (f0 < a.F || a.F == 0) forward_block<BF, true>(a, r0, r1, f0, a.F - f0);
}

// Backward w.r.t. x for source rows [r0, r1): grad_x[j] = m_j sum_k c_k grad_out[row_t[k]].
template <int BF, bool TAIL, typename scalar_t, typename index_t>
PYG_MMREC_INLINE void backward_x_block(const BackwardXArgs<scalar_t, index_t>& a, int64_t r0,
                                       int64_t r1, int64_t f0, int64_t len) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t F = a.F;
  auto present = [&](int64_t j) { return a.mask == nullptr || a.mask[j]; };
  // Prefetch cursor (pj, pk): kPrefetchDistance edges ahead of the loop below, in the same
  // order, skipping masked sources, whose edges are never read.
  int64_t pj = r0, pk = a.colptr[r0];
  auto settle = [&] {
    while (pj < r1 && (pk >= static_cast<int64_t>(a.colptr[pj + 1]) || !present(pj))) {
      if (++pj < r1) pk = a.colptr[pj];
    }
  };
  auto prefetch_next = [&] {
    if (pj >= r1) return;
    prefetch(a.grad_out + static_cast<int64_t>(a.row_t[pk]) * F + f0, BF);
    if (a.value != nullptr) __builtin_prefetch(a.value + a.perm[pk], 0, 3);
    ++pk;
    settle();
  };
  settle();
  for (int64_t d = 0; d < kPrefetchDistance; ++d) prefetch_next();
  for (int64_t j = r0; j < r1; ++j) {
    acc_t acc[BF];
    for (int f = 0; f < BF; ++f) acc[f] = acc_t(0);
    // A masked source contributes to no output, so its gradient is exactly 0.
    if (present(j)) {
      const int64_t k1 = a.colptr[j + 1];
      for (int64_t k = a.colptr[j]; k < k1; ++k) {
        prefetch_next();
        const int64_t i = a.row_t[k];
        // A "mean" row with weight sum 0 outputs exactly 0, so it passes no gradient (not
        // `0 * grad_out`, NaN where grad_out holds inf).
        if (a.inv_wsum != nullptr && a.inv_wsum[i] == acc_t(0)) continue;
        acc_t c = a.value != nullptr ? static_cast<acc_t>(a.value[a.perm[k]]) : acc_t(1);
        if (a.inv_wsum != nullptr) c *= a.inv_wsum[i];
        const scalar_t* __restrict gr = a.grad_out + i * F + f0;
        if constexpr (TAIL) {
          for (int64_t f = 0; f < len; ++f) acc[f] += c * static_cast<acc_t>(gr[f]);
        } else {
#pragma omp simd
          for (int f = 0; f < BF; ++f) acc[f] += c * static_cast<acc_t>(gr[f]);
        }
      }
    }
    scalar_t* __restrict o = a.grad_x + j * F + f0;
    for (int64_t f = 0; f < (TAIL ? len : BF); ++f) o[f] = static_cast<scalar_t>(acc[f]);
  }
}

template <typename scalar_t, typename index_t>
PYG_MMREC_INLINE void backward_x_rows(const BackwardXArgs<scalar_t, index_t>& a, int64_t r0,
                                      int64_t r1) {
  constexpr int BF = kBlock<at::opmath_type<scalar_t>>;
  int64_t f0 = 0;
  for (; f0 + BF <= a.F; f0 += BF) backward_x_block<BF, false>(a, r0, r1, f0, BF);
  if (f0 < a.F) backward_x_block<BF, true>(a, r0, r1, f0, a.F - f0);
}

// Backward w.r.t. value for rows [r0, r1): one dot product per present edge.
template <typename scalar_t, typename index_t>
PYG_MMREC_INLINE void backward_value_rows(const BackwardValueArgs<scalar_t, index_t>& a,
                                          int64_t r0, int64_t r1) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t F = a.F, n_edges = a.rowptr[a.n_dst];
  for (int64_t i = r0; i < r1; ++i) {
    const scalar_t* g_i = a.grad_out + i * F;
    acc_t inv = 1, c_i = 0;
    if (a.mean) {
      const acc_t w = static_cast<acc_t>(a.wsum[i]);
      inv = w != acc_t(0) ? acc_t(1) / w : acc_t(0);
      // d out_i / d w_e = m_j (x_j - out_i) / W_i, so <g_i, out_i> is shared by the row.
      if (inv != acc_t(0)) c_i = dot<acc_t>(g_i, a.out + i * F, F);
    }
    const acc_t gws = a.grad_wsum != nullptr ? static_cast<acc_t>(a.grad_wsum[i]) : acc_t(0);
    const int64_t e1 = a.rowptr[i + 1];
    for (int64_t e = a.rowptr[i]; e < e1; ++e) {
      if (e + kPrefetchDistance < n_edges) {
        const int64_t jp = a.col[e + kPrefetchDistance];
        if (a.mask == nullptr || a.mask[jp]) prefetch(a.x + jp * F, F);
      }
      const int64_t j = a.col[e];
      if (a.mask != nullptr && !a.mask[j]) {
        a.grad_value[e] = scalar_t(0);
        continue;
      }
      acc_t d = 0;
      if (inv != acc_t(0)) d = (dot<acc_t>(g_i, a.x + j * F, F) - c_i) * inv;
      a.grad_value[e] = static_cast<scalar_t>(d + gws);
    }
  }
}

// ---- Runtime ISA dispatch. The kernels above are compiled three times (baseline x86-64,
// AVX2+FMA, AVX-512) through always-inline templates and the best one the CPU supports runs:
// wheels stay portable, and the feature loops use 8- or 16-wide FMAs where available.
enum class Isa { kBaseline, kAvx2, kAvx512 };

#if defined(__GNUC__) && defined(__x86_64__)
#define PYG_MMREC_MULTIVERSION 1
// PYG_MMREC_CPU_ISA=baseline|avx2 caps the choice (to test or compare the code paths).
Isa detect_isa() {
  static const Isa isa = [] {
    __builtin_cpu_init();
    const char* cap_env = std::getenv("PYG_MMREC_CPU_ISA");
    const std::string cap = cap_env != nullptr ? cap_env : "";
    const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (cap == "baseline") return Isa::kBaseline;
    if (avx512 && cap != "avx2") return Isa::kAvx512;
    return avx2 ? Isa::kAvx2 : Isa::kBaseline;
  }();
  return isa;
}
#define PYG_MMREC_DEFINE_VERSIONS(KERNEL)                                                  \
  template <typename Args>                                                                 \
  __attribute__((target("avx512f,avx512vl,avx2,fma"))) void KERNEL##_avx512(               \
      const Args& a, int64_t r0, int64_t r1) {                                             \
    KERNEL(a, r0, r1);                                                                     \
  }                                                                                        \
  template <typename Args>                                                                 \
  __attribute__((target("avx2,fma"))) void KERNEL##_avx2(const Args& a, int64_t r0,        \
                                                         int64_t r1) {                     \
    KERNEL(a, r0, r1);                                                                     \
  }                                                                                        \
  template <typename Args>                                                                 \
  void KERNEL##_baseline(const Args& a, int64_t r0, int64_t r1) {                          \
    KERNEL(a, r0, r1);                                                                     \
  }                                                                                        \
  template <typename Args>                                                                 \
  void KERNEL##_dispatch(const Args& a, int64_t r0, int64_t r1) {                          \
    switch (detect_isa()) {                                                                \
      case Isa::kAvx512: KERNEL##_avx512(a, r0, r1); break;                                \
      case Isa::kAvx2: KERNEL##_avx2(a, r0, r1); break;                                    \
      default: KERNEL##_baseline(a, r0, r1);                                               \
    }                                                                                      \
  }
#else
#define PYG_MMREC_DEFINE_VERSIONS(KERNEL)                                                  \
  template <typename Args>                                                                 \
  void KERNEL##_dispatch(const Args& a, int64_t r0, int64_t r1) {                          \
    KERNEL(a, r0, r1);                                                                     \
  }
#endif

PYG_MMREC_DEFINE_VERSIONS(forward_rows)
PYG_MMREC_DEFINE_VERSIONS(backward_x_rows)
PYG_MMREC_DEFINE_VERSIONS(backward_value_rows)

// Runs fn(row_begin, row_end) over [0, n): contiguous chunks of about equal edges + rows
// (ptr is a CSR/CSC pointer of length n + 1), several per thread, handed out dynamically so
// that a thread slowed down by a hub row or by a busy core does not hold the others up.
template <typename index_t, typename Fn>
void parallel_rows(const index_t* ptr, int64_t n, int64_t F, const Fn& fn) {
  const int64_t cost = static_cast<int64_t>(ptr[n]) + n;
  const int64_t work = cost * std::max<int64_t>(F, 1);
  const int64_t nthreads = at::in_parallel_region() ? 1 : at::get_num_threads();
  if (work < (1 << 16) || nthreads <= 1 || n <= 1) {
    fn(int64_t(0), n);
    return;
  }
  const int64_t nchunks = std::min<int64_t>(8 * nthreads, n);
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
  std::atomic<int64_t> next{0};
  at::parallel_for(0, nthreads, 1, [&](int64_t, int64_t) {
    for (int64_t c = next++; c < nchunks; c = next++) {
      const int64_t r0 = boundary(c), r1 = boundary(c + 1);
      if (r0 < r1) fn(r0, r1);
    }
  });
}

#define PYG_MMREC_DISPATCH_FLOATS(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, TYPE, NAME, __VA_ARGS__)

std::tuple<at::Tensor, at::Tensor> masked_spmm_cpu(
    const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& x,
    const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& value, bool mean) {
  const auto rowptr_c = rowptr.contiguous(), col_c = col.contiguous(), x_c = x.contiguous();
  const auto mask_c = contiguous(mask), value_c = contiguous(value);
  const int64_t n_dst = rowptr.numel() - 1, F = x.size(1);
  auto out = at::empty({n_dst, F}, x.options());
  auto wsum = at::empty({n_dst}, x.options());
  PYG_MMREC_DISPATCH_FLOATS(x.scalar_type(), "masked_spmm_cpu", [&] {
    AT_DISPATCH_INDEX_TYPES(rowptr.scalar_type(), "masked_spmm_cpu", [&] {
      const ForwardArgs<scalar_t, index_t> a{
          rowptr_c.data_ptr<index_t>(), col_c.data_ptr<index_t>(), x_c.data_ptr<scalar_t>(),
          ptr_or_null<bool>(mask_c), ptr_or_null<scalar_t>(value_c), out.data_ptr<scalar_t>(),
          wsum.data_ptr<scalar_t>(), n_dst, F, mean};
      parallel_rows(a.rowptr, n_dst, F,
                    [&](int64_t r0, int64_t r1) { forward_rows_dispatch(a, r0, r1); });
    });
  });
  return {out, wsum};
}

at::Tensor masked_spmm_backward_x_cpu(const at::Tensor& colptr, const at::Tensor& row_t,
                                      const at::Tensor& perm, const at::Tensor& grad_out,
                                      const std::optional<at::Tensor>& mask,
                                      const std::optional<at::Tensor>& value,
                                      const std::optional<at::Tensor>& weight_sum, bool mean) {
  const auto colptr_c = colptr.contiguous(), row_t_c = row_t.contiguous(),
             perm_c = perm.contiguous(), g_c = grad_out.contiguous();
  const auto mask_c = contiguous(mask), value_c = contiguous(value), ws_c = contiguous(weight_sum);
  const int64_t n_src = colptr.numel() - 1, n_dst = grad_out.size(0), F = grad_out.size(1);
  auto grad_x = at::empty({n_src, F}, grad_out.options());
  PYG_MMREC_DISPATCH_FLOATS(grad_out.scalar_type(), "masked_spmm_backward_x_cpu", [&] {
    AT_DISPATCH_INDEX_TYPES(colptr.scalar_type(), "masked_spmm_backward_x_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      // 1 / weight_sum per destination row (0 where the sum is 0: those rows output 0).
      std::vector<acc_t> inv_wsum;
      if (mean) {
        const scalar_t* ws = ws_c->data_ptr<scalar_t>();
        inv_wsum.resize(n_dst);
        at::parallel_for(0, n_dst, 1 << 14, [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) {
            const acc_t w = static_cast<acc_t>(ws[i]);
            inv_wsum[i] = w != acc_t(0) ? acc_t(1) / w : acc_t(0);
          }
        });
      }
      const BackwardXArgs<scalar_t, index_t> a{
          colptr_c.data_ptr<index_t>(), row_t_c.data_ptr<index_t>(), perm_c.data_ptr<index_t>(),
          g_c.data_ptr<scalar_t>(), ptr_or_null<bool>(mask_c), ptr_or_null<scalar_t>(value_c),
          mean ? inv_wsum.data() : nullptr, grad_x.data_ptr<scalar_t>(), n_src, F};
      parallel_rows(a.colptr, n_src, F,
                    [&](int64_t r0, int64_t r1) { backward_x_rows_dispatch(a, r0, r1); });
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
  const auto rowptr_c = rowptr.contiguous(), col_c = col.contiguous(), x_c = x.contiguous(),
             g_c = grad_out.contiguous(), out_c = out.contiguous(), ws_c = weight_sum.contiguous();
  const auto gws_c = contiguous(grad_weight_sum), mask_c = contiguous(mask);
  const int64_t n_dst = rowptr.numel() - 1, F = x.size(1);
  auto grad_value = at::empty({col.numel()}, x.options());
  PYG_MMREC_DISPATCH_FLOATS(x.scalar_type(), "masked_spmm_backward_value_cpu", [&] {
    AT_DISPATCH_INDEX_TYPES(rowptr.scalar_type(), "masked_spmm_backward_value_cpu", [&] {
      const BackwardValueArgs<scalar_t, index_t> a{
          rowptr_c.data_ptr<index_t>(), col_c.data_ptr<index_t>(), x_c.data_ptr<scalar_t>(),
          g_c.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(gws_c), ptr_or_null<bool>(mask_c),
          out_c.data_ptr<scalar_t>(), ws_c.data_ptr<scalar_t>(), grad_value.data_ptr<scalar_t>(),
          n_dst, F, mean};
      parallel_rows(a.rowptr, n_dst, F,
                    [&](int64_t r0, int64_t r1) { backward_value_rows_dispatch(a, r0, r1); });
    });
  });
  return grad_value;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> csr_transpose_cpu(const at::Tensor& rowptr,
                                                                  const at::Tensor& col,
                                                                  int64_t num_src) {
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
  m.impl("_masked_spmm_kernel", &pyg_mmrec::masked_spmm_cpu);
  m.impl("_masked_spmm_backward_x_kernel", &pyg_mmrec::masked_spmm_backward_x_cpu);
  m.impl("_masked_spmm_backward_value_kernel", &pyg_mmrec::masked_spmm_backward_value_cpu);
  m.impl("_csr_transpose_kernel", &pyg_mmrec::csr_transpose_cpu);
}
