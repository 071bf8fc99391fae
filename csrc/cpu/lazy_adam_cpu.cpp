// CPU kernel of pyg_mmrec::lazy_adam_rows_ (contract in csrc/lazy_adam.cpp; inputs validated
// there). One pass per distinct row instead of the reference's dozen whole-tensor passes
// (gather, update, scatter back of param and both moments): the indices are sorted once, and
// each thread takes whole runs of equal indices, so every table row has one writer.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

namespace pyg_mmrec {
namespace {

template <typename scalar_t>
void update_rows(scalar_t* param, scalar_t* m, scalar_t* v, const int64_t* sorted,
                 const int64_t* order, const scalar_t* values, const std::vector<int64_t>& starts,
                 int64_t F, double step_size, double beta1, double beta2, double eps,
                 double weight_decay, double bc2_sqrt) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t lr = step_size, b1c = 1 - beta1, b2 = beta2, b2c = 1 - beta2, e = eps,
              wd = weight_decay, bc2 = bc2_sqrt;
  const int64_t n_seg = static_cast<int64_t>(starts.size()) - 1;
  at::parallel_for(0, n_seg, 2048, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> g(F);
    for (int64_t s = begin; s < end; ++s) {
      const int64_t row = sorted[starts[s]];
      std::fill(g.begin(), g.end(), acc_t(0));
      for (int64_t k = starts[s]; k < starts[s + 1]; ++k) {  // duplicates, in sorted order
        const scalar_t* src = values + order[k] * F;
#pragma omp simd
        for (int64_t f = 0; f < F; ++f) g[f] += static_cast<acc_t>(src[f]);
      }
      scalar_t* p = param + row * F;
      scalar_t* mr = m + row * F;
      scalar_t* vr = v + row * F;
#pragma omp simd
      for (int64_t f = 0; f < F; ++f) {
        const acc_t p_f = static_cast<acc_t>(p[f]);
        const acc_t g_f = g[f] + wd * p_f;
        acc_t m_f = static_cast<acc_t>(mr[f]);
        m_f = m_f + b1c * (g_f - m_f);
        const acc_t v_f = b2 * static_cast<acc_t>(vr[f]) + b2c * g_f * g_f;
        mr[f] = static_cast<scalar_t>(m_f);
        vr[f] = static_cast<scalar_t>(v_f);
        p[f] = static_cast<scalar_t>(p_f - lr * (m_f / (std::sqrt(v_f) / bc2 + e)));
      }
    }
  });
}

void lazy_adam_rows_cpu(at::Tensor& param, at::Tensor& exp_avg, at::Tensor& exp_avg_sq,
                        const at::Tensor& indices, const at::Tensor& values, double step_size,
                        double beta1, double beta2, double eps, double weight_decay,
                        double bc2_sqrt) {
  const int64_t n = indices.numel();
  if (n == 0 || param.size(1) == 0) return;
  auto [sorted_t, order_t] = at::sort(indices.contiguous());
  const int64_t* sorted = sorted_t.data_ptr<int64_t>();
  // starts of the runs of equal indices, plus the end
  std::vector<int64_t> starts;
  starts.reserve(n + 1);
  for (int64_t k = 0; k < n; ++k) {
    if (k == 0 || sorted[k] != sorted[k - 1]) starts.push_back(k);
  }
  starts.push_back(n);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, param.scalar_type(),
                                  "lazy_adam_rows_cpu", [&] {
    update_rows<scalar_t>(param.data_ptr<scalar_t>(), exp_avg.data_ptr<scalar_t>(),
                          exp_avg_sq.data_ptr<scalar_t>(), sorted, order_t.data_ptr<int64_t>(),
                          values.data_ptr<scalar_t>(), starts, param.size(1), step_size, beta1,
                          beta2, eps, weight_decay, bc2_sqrt);
  });
}

}  // namespace
}  // namespace pyg_mmrec

TORCH_LIBRARY_IMPL(pyg_mmrec, CPU, m) {
  m.impl("_lazy_adam_rows_kernel", &pyg_mmrec::lazy_adam_rows_cpu);
}
