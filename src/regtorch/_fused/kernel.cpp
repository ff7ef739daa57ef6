// Fused single-pass penalty kernels for regtorch (CPU, float32/float64).
//
// One call per penalty rule over a list of tensors. For each contiguous CPU float32/float64
// tensor the loop reads w once (and g, and v for Adam) and writes g (or w): the gradient update
// and the value's float64 accumulation happen in the same pass. Any other tensor (half types,
// non-contiguous) is staged through a contiguous float copy and the same loops.
//
// Portability: this file is compiled once per instruction set, with the flags of the capability
// torch reports at run time (torch.backends.cpu.get_cpu_capability(): DEFAULT, AVX2, AVX512),
// never -march=native; the loops are written for the compiler's vectorizer (`omp simd`).
//
// Rounding matches torch's own kernels operation by operation, so the gradients equal the
// pure-PyTorch path bit for bit: torch's vectorized `add(alpha)` is a fused multiply-add
// (vec::fmadd), so `madd` is std::fma where the target has FMA; clamps and divisions are
// exactly rounded. (Group lasso is the exception, see there.)
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/scalar_tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

#if defined(__FMA__)
template <typename T>
inline T madd(T a, T b, T c) { return std::fma(a, b, c); }
#else
template <typename T>
inline T madd(T a, T b, T c) { return a * b + c; }
#endif

bool fast(const at::Tensor& t) {
  return t.device().is_cpu() && t.is_contiguous() &&
         (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble);
}



// A tensor the loops cannot read directly (half type, non-contiguous) is staged: a contiguous
// float32 (or float64) copy goes through the same loop and is copied back, so every tensor gets
// the same arithmetic.
at::Tensor staged(const at::Tensor& t) {
  const auto dtype = t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return t.to(t.options().dtype(dtype).memory_format(at::MemoryFormat::Contiguous), false, true);
}

void unstage(const at::Tensor& target, const at::Tensor& copy) {
  if (!copy.is_same(target)) target.copy_(copy);
}

at::Tensor as_fast(const at::Tensor& t) { return fast(t) ? t : staged(t); }

// ---------------------------------------------------------------------------------------------
// L1 / L2 / elastic net gradient: g += l1·sign(w) (then) + l2·w; Σ|w| and Σw² in float64.
// ---------------------------------------------------------------------------------------------
// The float64 sums run in kLanes independent partial sums (several vector registers), so the
// additions' latency does not bound the loop: one accumulator chain made the value cost as much
// as the gradient update itself.
constexpr int64_t kLanes = 32;

template <typename T, bool L1, bool L2, bool VALUE>
inline T elementwise_update(T x, T gi, T l1, T l2) {
  if (L1) {
    const T s = x > T(0) ? T(1) : (x < T(0) ? T(-1) : T(0));
    gi = madd(s, l1, gi);
  }
  if (L2) gi = madd(x, l2, gi);
  return gi;
}

template <typename T, bool L1, bool L2, bool VALUE>
void elementwise_grad_loop(const T* __restrict w, T* __restrict g, int64_t n, T l1, T l2,
                           double& abs_sum, double& sq_sum) {
  double a1[kLanes] = {0.0}, a2[kLanes] = {0.0};
  const int64_t body = n - n % kLanes;
  for (int64_t i = 0; i < body; i += kLanes) {
#pragma omp simd
    for (int64_t j = 0; j < kLanes; ++j) {
      const T x = w[i + j];
      g[i + j] = elementwise_update<T, L1, L2, VALUE>(x, g[i + j], l1, l2);
      if (VALUE) {
        const double xd = static_cast<double>(x);
        if (L1) a1[j] += std::abs(xd);
        if (L2) a2[j] += xd * xd;
      }
    }
  }
  double t1 = 0.0, t2 = 0.0;
  for (int64_t i = body; i < n; ++i) {
    const T x = w[i];
    g[i] = elementwise_update<T, L1, L2, VALUE>(x, g[i], l1, l2);
    if (VALUE) {
      const double xd = static_cast<double>(x);
      if (L1) t1 += std::abs(xd);
      if (L2) t2 += xd * xd;
    }
  }
  if (VALUE) {
    for (int64_t j = 0; j < kLanes; ++j) {
      t1 += a1[j];
      t2 += a2[j];
    }
  }
  abs_sum += t1;
  sq_sum += t2;
}

template <typename T, bool VALUE>
void elementwise_grad_dispatch(const T* w, T* g, int64_t n, double l1, double l2, double& s1,
                               double& s2) {
  const bool has1 = l1 != 0.0, has2 = l2 != 0.0;
  const T a = static_cast<T>(l1), b = static_cast<T>(l2);
  if (has1 && has2) elementwise_grad_loop<T, true, true, VALUE>(w, g, n, a, b, s1, s2);
  else if (has1) elementwise_grad_loop<T, true, false, VALUE>(w, g, n, a, b, s1, s2);
  else if (has2) elementwise_grad_loop<T, false, true, VALUE>(w, g, n, a, b, s1, s2);
  else if (VALUE) elementwise_grad_loop<T, false, false, VALUE>(w, g, n, a, b, s1, s2);
}

at::Tensor elementwise_grad(at::TensorList params, at::TensorList grads, double l1, double l2,
                            bool value) {
  TORCH_CHECK(params.size() == grads.size(), "regtorch fused: ", params.size(), " params and ",
              grads.size(), " grads");
  double s1 = 0.0, s2 = 0.0;
  for (size_t k = 0; k < params.size(); ++k) {
    TORCH_CHECK(params[k].sizes() == grads[k].sizes(), "regtorch fused: shape mismatch");
    const at::Tensor w = as_fast(params[k]);
    const at::Tensor g = grads[k].scalar_type() == w.scalar_type() && fast(grads[k])
                             ? grads[k] : grads[k].to(w.scalar_type()).contiguous();
    const int64_t n = w.numel();
    AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "regtorch_elementwise_grad", [&] {
      const scalar_t* wp = w.const_data_ptr<scalar_t>();
      scalar_t* gp = g.mutable_data_ptr<scalar_t>();
      if (value) {
        // A term with strength 0 adds nothing to the value either: only its partner's sum counts.
        if (l1 != 0.0 || l2 != 0.0) elementwise_grad_dispatch<scalar_t, true>(wp, gp, n, l1, l2, s1, s2);
      } else {
        elementwise_grad_dispatch<scalar_t, false>(wp, gp, n, l1, l2, s1, s2);
      }
    });
    unstage(grads[k], g);
  }
  double total = 0.0;
  if (value) total = l1 * s1 + 0.5 * l2 * s2;
  return at::scalar_tensor(total, at::TensorOptions().dtype(at::kDouble));
}

// Σ x² in float64 over kLanes partial sums (see elementwise_grad_loop).
template <typename T>
double sum_of_squares(const T* __restrict w, int64_t n) {
  double partial[kLanes] = {0.0};
  const int64_t body = n - n % kLanes;
  for (int64_t i = 0; i < body; i += kLanes) {
#pragma omp simd
    for (int64_t j = 0; j < kLanes; ++j) {
      const double x = static_cast<double>(w[i + j]);
      partial[j] += x * x;
    }
  }
  double total = 0.0;
  for (int64_t i = body; i < n; ++i) {
    const double x = static_cast<double>(w[i]);
    total += x * x;
  }
  for (int64_t j = 0; j < kLanes; ++j) total += partial[j];
  return total;
}

// ---------------------------------------------------------------------------------------------
// Group lasso gradient: g_grp += w_grp · ((lam·c) / max(‖w_grp‖, floor)), one multiply-add per
// element (no division per element: the norms are rounded from float64 sums anyway, so this path
// is within 2 ulp of the pure-PyTorch one rather than bit-identical); Σ c·‖w_grp‖ in float64.
// A tensor is viewed as [R, C, K]: "rows" groups are w[r, :, :] (C = K = 1 collapsed), "columns"
// groups are w[:, c, :].
// ---------------------------------------------------------------------------------------------
template <typename T>
double group_rows_loop(const T* __restrict w, T* __restrict g, int64_t rows, int64_t cols,
                       T scale, T floor, bool update) {
  double total = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    const T* wr = w + r * cols;
    T* gr = g + r * cols;
    const double norm = std::sqrt(sum_of_squares(wr, cols));
    total += norm;
    if (!update) continue;
    const T factor = scale / std::max(static_cast<T>(norm), floor);
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) gr[j] = madd(wr[j], factor, gr[j]);
  }
  return total;
}

template <typename T>
double group_columns_loop(const T* __restrict w, T* __restrict g, int64_t d0, int64_t d1,
                          int64_t inner, T scale, T floor, bool update) {
  std::vector<double> sums(static_cast<size_t>(d1), 0.0);
  if (inner == 1) {  // a matrix: accumulate whole rows into the column sums (vectorized over c)
    double* acc = sums.data();
    for (int64_t i = 0; i < d0; ++i) {
      const T* wi = w + i * d1;
#pragma omp simd
      for (int64_t c = 0; c < d1; ++c) {
        const double x = static_cast<double>(wi[c]);
        acc[c] += x * x;
      }
    }
  }
  for (int64_t i = 0; inner > 1 && i < d0; ++i) {
    for (int64_t c = 0; c < d1; ++c) {
      sums[c] += sum_of_squares(w + (i * d1 + c) * inner, inner);
    }
  }
  double total = 0.0;
  std::vector<T> factors(static_cast<size_t>(d1));
  for (int64_t c = 0; c < d1; ++c) {
    const double norm = std::sqrt(sums[c]);
    total += norm;
    factors[c] = scale / std::max(static_cast<T>(norm), floor);
  }
  if (!update) return total;
  if (inner == 1) {
    const T* f = factors.data();
    for (int64_t i = 0; i < d0; ++i) {
      const T* wi = w + i * d1;
      T* gi = g + i * d1;
#pragma omp simd
      for (int64_t c = 0; c < d1; ++c) gi[c] = madd(wi[c], f[c], gi[c]);
    }
    return total;
  }
  for (int64_t i = 0; i < d0; ++i) {
    for (int64_t c = 0; c < d1; ++c) {
      const T* wc = w + (i * d1 + c) * inner;
      T* gc = g + (i * d1 + c) * inner;
      const T f = factors[c];
#pragma omp simd
      for (int64_t k = 0; k < inner; ++k) gc[k] = madd(wc[k], f, gc[k]);
    }
  }
  return total;
}

// groups: 0 rows, 1 columns, 2 tensor. coefficients[k] = c for tensor k; floors[k] = √tiny.
at::Tensor group_grad(at::TensorList params, at::TensorList grads, double lam, int64_t groups,
                      at::ArrayRef<double> coefficients, bool value) {
  TORCH_CHECK(params.size() == grads.size() && params.size() == coefficients.size(),
              "regtorch fused: mismatched list lengths");
  double total = 0.0;
  const bool update = lam != 0.0;
  for (size_t k = 0; k < params.size(); ++k) {
    TORCH_CHECK(params[k].sizes() == grads[k].sizes(), "regtorch fused: shape mismatch");
    const at::Tensor w = as_fast(params[k]);
    const at::Tensor g = grads[k].scalar_type() == w.scalar_type() && fast(grads[k])
                             ? grads[k] : grads[k].to(w.scalar_type()).contiguous();
    const double c = coefficients[k];
    const int64_t n = w.numel();
    if (n == 0) continue;
    AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "regtorch_group_grad", [&] {
      const scalar_t* wp = w.const_data_ptr<scalar_t>();
      scalar_t* gp = g.mutable_data_ptr<scalar_t>();
      const scalar_t scale = static_cast<scalar_t>(lam * c);
      const scalar_t floor = std::sqrt(std::numeric_limits<scalar_t>::min());
      double norms = 0.0;
      if (groups == 1) {
        TORCH_CHECK(w.dim() >= 2, "regtorch fused: columns need >= 2 dims");
        const int64_t d0 = w.size(0), d1 = w.size(1);
        norms = group_columns_loop<scalar_t>(wp, gp, d0, d1, n / (d0 * d1), scale, floor, update);
      } else if (groups == 2) {
        norms = group_rows_loop<scalar_t>(wp, gp, 1, n, scale, floor, update);
      } else {
        const int64_t rows = w.dim() == 0 ? 1 : w.size(0);
        norms = group_rows_loop<scalar_t>(wp, gp, rows, n / rows, scale, floor, update);
      }
      total += c * norms;
    });
    unstage(grads[k], g);
  }
  return at::scalar_tensor(value ? lam * total : 0.0, at::TensorOptions().dtype(at::kDouble));
}

// ---------------------------------------------------------------------------------------------
// Proximal steps of l1·‖w‖₁ + l2/2·‖w‖²: soft-threshold by τ = t·l1, then divide by 1 + t·l2.
// ---------------------------------------------------------------------------------------------
template <typename T, bool L1, bool L2>
void prox_scalar_loop(T* __restrict w, int64_t n, T tau, T divisor) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    T x = w[i];
    if (L1) x = x - std::min(std::max(x, -tau), tau);
    if (L2) x = x / divisor;
    w[i] = x;
  }
}

void elementwise_prox(at::TensorList params, at::ArrayRef<double> steps, double l1, double l2) {
  TORCH_CHECK(params.size() == steps.size(), "regtorch fused: mismatched list lengths");
  const bool has1 = l1 != 0.0, has2 = l2 != 0.0;
  for (size_t k = 0; k < params.size(); ++k) {
    const at::Tensor w = as_fast(params[k]);
    const double t = steps[k];
    AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "regtorch_elementwise_prox", [&] {
      scalar_t* wp = w.mutable_data_ptr<scalar_t>();
      const scalar_t tau = static_cast<scalar_t>(t * l1);
      const scalar_t divisor = static_cast<scalar_t>(1.0 + t * l2);
      const int64_t n = w.numel();
      if (has1 && has2) prox_scalar_loop<scalar_t, true, true>(wp, n, tau, divisor);
      else if (has1) prox_scalar_loop<scalar_t, true, false>(wp, n, tau, divisor);
      else if (has2) prox_scalar_loop<scalar_t, false, true>(wp, n, tau, divisor);
    });
    unstage(params[k], w);
    params[k].unsafeGetTensorImpl()->bump_version();
  }
}

// Adam / AdamW: t = lr / (√v / scale + eps) per element (scale = √(1 − β₂ᵏ), v the optimizer's
// exp_avg_sq or max_exp_avg_sq), in torch's operation order: 1/(√v/scale + eps), times lr.
template <typename T, bool L1, bool L2>
void prox_adam_loop(T* __restrict w, const T* __restrict v, int64_t n, T lr, T scale, T eps,
                    T l1, T l2) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T t = (T(1) / (std::sqrt(v[i]) / scale + eps)) * lr;
    T x = w[i];
    if (L1) {
      const T tau = t * l1;
      x = x - std::min(std::max(x, -tau), tau);
    }
    if (L2) x = x / (T(1) + t * l2);
    w[i] = x;
  }
}

void adam_prox(at::TensorList params, at::TensorList exp_avg_sqs, at::ArrayRef<double> lrs,
               at::ArrayRef<double> scales, at::ArrayRef<double> epss, double l1, double l2) {
  TORCH_CHECK(params.size() == exp_avg_sqs.size() && params.size() == lrs.size() &&
              params.size() == scales.size() && params.size() == epss.size(),
              "regtorch fused: mismatched list lengths");
  const bool has1 = l1 != 0.0, has2 = l2 != 0.0;
  for (size_t k = 0; k < params.size(); ++k) {
    TORCH_CHECK(params[k].sizes() == exp_avg_sqs[k].sizes(), "regtorch fused: shape mismatch");
    const at::Tensor w = as_fast(params[k]);
    const at::Tensor v = exp_avg_sqs[k].scalar_type() == w.scalar_type() && fast(exp_avg_sqs[k])
                             ? exp_avg_sqs[k] : exp_avg_sqs[k].to(w.scalar_type()).contiguous();
    AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "regtorch_adam_prox", [&] {
      using T = scalar_t;
      T* wp = w.mutable_data_ptr<T>();
      const T* vp = v.const_data_ptr<T>();
      const int64_t n = w.numel();
      const T lr = static_cast<T>(lrs[k]), scale = static_cast<T>(scales[k]);
      const T eps = static_cast<T>(epss[k]);
      const T a = static_cast<T>(l1), b = static_cast<T>(l2);
      if (has1 && has2) prox_adam_loop<T, true, true>(wp, vp, n, lr, scale, eps, a, b);
      else if (has1) prox_adam_loop<T, true, false>(wp, vp, n, lr, scale, eps, a, b);
      else if (has2) prox_adam_loop<T, false, true>(wp, vp, n, lr, scale, eps, a, b);
    });
    unstage(params[k], w);
    params[k].unsafeGetTensorImpl()->bump_version();
  }
}

}  // namespace

TORCH_LIBRARY(regtorch_fused, m) {
  m.def("elementwise_grad(Tensor[] params, Tensor(a!)[] grads, float l1, float l2, bool value) "
        "-> Tensor");
  m.def("group_grad(Tensor[] params, Tensor(a!)[] grads, float lam, int groups, "
        "float[] coefficients, bool value) -> Tensor");
  m.def("elementwise_prox(Tensor(a!)[] params, float[] steps, float l1, float l2) -> ()");
  m.def("adam_prox(Tensor(a!)[] params, Tensor[] exp_avg_sqs, float[] lrs, float[] scales, "
        "float[] eps, float l1, float l2) -> ()");
}

TORCH_LIBRARY_IMPL(regtorch_fused, CPU, m) {
  m.impl("elementwise_grad", &elementwise_grad);
  m.impl("group_grad", &group_grad);
  m.impl("elementwise_prox", &elementwise_prox);
  m.impl("adam_prox", &adam_prox);
}
