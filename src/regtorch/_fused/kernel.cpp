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

// The sum of kLanes partial sums, pairwise: a serial sum of 32 float64 lanes is a ~130-cycle
// dependency chain, paid per group (row) by the group lasso (+15 µs on the seed MLP's 310 rows).
inline double lane_sum(double* a) {
  for (int64_t width = kLanes / 2; width > 0; width /= 2) {
#pragma omp simd
    for (int64_t j = 0; j < width; ++j) a[j] += a[j + width];
  }
  return a[0];
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
  const int64_t rest = n - body;  // the last partial row of lanes, masked in (no serial tail)
#pragma omp simd
  for (int64_t j = 0; j < kLanes; ++j) {
    const double x = j < rest ? static_cast<double>(w[body + j]) : 0.0;
    partial[j] += x * x;
  }
  return lane_sum(partial);
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

// ---------------------------------------------------------------------------------------------
// The proximal step attached to an optimizer (regtorch.optim.proximal), one call per penalty rule
// and optimizer param group, with the optimizer's effective step t read from its own state:
//
//   t = lr_k                                      (no moments: SGD's lr·(1−d)/(1−μ), or lr)
//   t = lr_k / (√v / s_k + eps)                   (v: exp_avg_sq / max_exp_avg_sq, Adagrad's sum,
//                                                  RMSprop's square_avg)
//   s_k  = √(1 − β₂ᵏ) (β₂ > 0: Adam's bias correction), else 1;
//   lr_k = lr / (1 + (k − 1)·lr_decay) (lr_decay > 0: Adagrad), else lr;
//
// k read from the optimizer's step tensor of each parameter (a CPU tensor: no host sync). Then,
// in the order of regtorch's Sum.prox_: soft-threshold by t·l1, shrink each group by
// max(1 − τ_g·c/‖w_g‖, 0), divide by 1 + t·l2. With an element-wise t a group's τ_g is the mean
// of t·λ over its elements (GroupLasso.prox_'s rule); with a scalar t it is t·λ.
// groups: −1 none, 0 rows, 1 columns, 2 tensor (a tensor viewed as [R, C, K] as in group_grad).
// The arithmetic follows the pure-PyTorch path operation by operation, except t (see StepSize),
// √, and the float64 sums of norms and group means, which may round differently by a few ulp.
// ---------------------------------------------------------------------------------------------
// The per-element helpers below must inline into the `omp simd` loops, or the loops do not
// vectorize (GCC 12 kept StepSize::operator() out of line in some instantiations: 10x slower).
#if defined(__GNUC__) || defined(__clang__)
#define REGTORCH_INLINE inline __attribute__((always_inline))
#else
#define REGTORCH_INLINE inline
#endif

double read_count(const at::Tensor& count) {
  TORCH_CHECK(count.device().is_cpu() && count.numel() == 1,
              "regtorch fused: a step count must be a one-element CPU tensor");
  double k = 0.0;
  AT_DISPATCH_ALL_TYPES(count.scalar_type(), "regtorch_read_count", [&] {
    k = static_cast<double>(*count.const_data_ptr<scalar_t>());
  });
  return k;
}

// t = lr / (√v/s + ε) evaluated as (lr·s) / (√v + ε·s), lr·s and ε·s rounded once from float64:
// one square root and one division per element instead of a square root and two divisions
// (torch's order: √v, ÷s, +ε, 1/·, ·lr). The two differ by a few ulp of t.
template <typename T, bool PRE>
struct StepSize {
  const T* v;
  T lr_scaled, eps_scaled;  // lr·s and ε·s; without moments lr_scaled is the scalar step
  REGTORCH_INLINE T operator()(int64_t i) const {
    if (PRE) return lr_scaled / (std::sqrt(v[i]) + eps_scaled);
    return lr_scaled;
  }
};

// The L1 threshold t·l1: per element, or the scalar one rounded once from float64 (as the
// pure-PyTorch path passes a Python float).
template <typename T, bool PRE, bool L1>
REGTORCH_INLINE T soft_threshold(T x, T t, T l1, T scalar_tau) {
  if (!L1) return x;
  const T tau = PRE ? t * l1 : scalar_tau;
  return x - std::min(std::max(x, -tau), tau);
}

// L2 divisor: per element 1 + t·l2 (element-wise t), or the precomputed float one.
template <typename T, bool PRE>
REGTORCH_INLINE T l2_divisor(T t, T l2, T scalar_divisor) {
  return PRE ? T(1) + t * l2 : scalar_divisor;
}

template <typename T, bool PRE, bool L1, bool L2>
void prox_elementwise_loop(T* __restrict w, int64_t n, StepSize<T, PRE> step, T l1, T tau,
                           T l2, T divisor) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T t = step(i);
    T x = soft_threshold<T, PRE, L1>(w[i], t, l1, tau);
    if (L2) x = x / l2_divisor<T, PRE>(t, l2, divisor);
    w[i] = x;
  }
}

// The group factor max(1 − τ_g·c/max(‖w_g‖, floor), 0); τ_g·c precomputed as `tau_c`.
template <typename T>
inline T group_factor(double sum_sq, T tau_c, T floor) {
  const T norm = std::max(static_cast<T>(std::sqrt(sum_sq)), floor);
  return std::max(T(1) - tau_c / norm, T(0));
}

// Groups of `len` contiguous elements (rows; a whole tensor is one row). Pass 1 soft-thresholds
// and sums the squares (and t·λ); pass 2 applies the factor and the L2 division.
template <typename T, bool PRE, bool L1, bool L2>
void prox_rows_loop(T* __restrict w, int64_t rows, int64_t len, StepSize<T, PRE> step, T l1,
                    T tau, T l2, T divisor, T lam, T c, T scalar_tau_c, T floor) {
  for (int64_t r = 0; r < rows; ++r) {
    T* wr = w + r * len;
    StepSize<T, PRE> s = step;
    if (PRE) s.v = step.v + r * len;
    double sum_sq = 0.0, sum_tau = 0.0;
#pragma omp simd reduction(+ : sum_sq, sum_tau)
    for (int64_t j = 0; j < len; ++j) {
      const T t = s(j);
      const T x = soft_threshold<T, PRE, L1>(wr[j], t, l1, tau);
      if (L1) wr[j] = x;
      sum_sq += static_cast<double>(x) * static_cast<double>(x);
      if (PRE) sum_tau += static_cast<double>(t * lam);
    }
    const T tau_c = PRE ? static_cast<T>(sum_tau / static_cast<double>(len)) * c : scalar_tau_c;
    const T factor = group_factor<T>(sum_sq, tau_c, floor);
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) {
      T x = wr[j] * factor;
      if (L2) x = x / l2_divisor<T, PRE>(s(j), l2, divisor);
      wr[j] = x;
    }
  }
}

// Column groups w[:, c, :] of a tensor viewed as [d0, d1, inner]: pass 1 over the whole tensor
// accumulates every column's sums, pass 2 applies the factors.
template <typename T, bool PRE, bool L1, bool L2>
void prox_columns_loop(T* __restrict w, int64_t d0, int64_t d1, int64_t inner,
                       StepSize<T, PRE> step, T l1, T tau, T l2, T divisor, T lam, T c,
                       T scalar_tau_c, T floor) {
  std::vector<double> sum_sq(static_cast<size_t>(d1), 0.0), sum_tau(static_cast<size_t>(d1), 0.0);
  double* sq_acc = sum_sq.data();
  double* tau_acc = sum_tau.data();
  for (int64_t i = 0; inner == 1 && i < d0; ++i) {  // a matrix: vectorized across the columns
    const int64_t base = i * d1;
#pragma omp simd
    for (int64_t col = 0; col < d1; ++col) {
      const T t = step(base + col);
      const T x = soft_threshold<T, PRE, L1>(w[base + col], t, l1, tau);
      if (L1) w[base + col] = x;
      sq_acc[col] += static_cast<double>(x) * static_cast<double>(x);
      if (PRE) tau_acc[col] += static_cast<double>(t * lam);
    }
  }
  for (int64_t i = 0; inner > 1 && i < d0; ++i) {
    for (int64_t col = 0; col < d1; ++col) {
      const int64_t base = (i * d1 + col) * inner;
      double sq = 0.0, ta = 0.0;
#pragma omp simd reduction(+ : sq, ta)
      for (int64_t k = 0; k < inner; ++k) {
        const T t = step(base + k);
        const T x = soft_threshold<T, PRE, L1>(w[base + k], t, l1, tau);
        if (L1) w[base + k] = x;
        sq += static_cast<double>(x) * static_cast<double>(x);
        if (PRE) ta += static_cast<double>(t * lam);
      }
      sum_sq[col] += sq;
      sum_tau[col] += ta;
    }
  }
  const double size = static_cast<double>(d0 * inner);
  std::vector<T> factors(static_cast<size_t>(d1));
  for (int64_t col = 0; col < d1; ++col) {
    const T tau_c = PRE ? static_cast<T>(sum_tau[col] / size) * c : scalar_tau_c;
    factors[col] = group_factor<T>(sum_sq[col], tau_c, floor);
  }
  const T* f_all = factors.data();
  for (int64_t i = 0; inner == 1 && i < d0; ++i) {
    const int64_t base = i * d1;
#pragma omp simd
    for (int64_t col = 0; col < d1; ++col) {
      T x = w[base + col] * f_all[col];
      if (L2) x = x / l2_divisor<T, PRE>(step(base + col), l2, divisor);
      w[base + col] = x;
    }
  }
  for (int64_t i = 0; inner > 1 && i < d0; ++i) {
    for (int64_t col = 0; col < d1; ++col) {
      const int64_t base = (i * d1 + col) * inner;
      const T f = factors[col];
#pragma omp simd
      for (int64_t k = 0; k < inner; ++k) {
        T x = w[base + k] * f;
        if (L2) x = x / l2_divisor<T, PRE>(step(base + k), l2, divisor);
        w[base + k] = x;
      }
    }
  }
}

struct ProxArgs {
  double l1, l2, lam, c, t;  // t: the scalar step (no moments)
  int64_t groups;
};

template <typename T, bool PRE, bool L1, bool L2>
void prox_tensor(const at::Tensor& w, StepSize<T, PRE> step, const ProxArgs& a) {
  T* wp = w.mutable_data_ptr<T>();
  const int64_t n = w.numel();
  const T l1 = static_cast<T>(a.l1), l2 = static_cast<T>(a.l2);
  const T tau = static_cast<T>(a.t * a.l1);
  const T divisor = static_cast<T>(1.0 + a.t * a.l2);
  if (a.groups < 0 || a.lam == 0.0) {
    prox_elementwise_loop<T, PRE, L1, L2>(wp, n, step, l1, tau, l2, divisor);
    return;
  }
  const T lam = static_cast<T>(a.lam), c = static_cast<T>(a.c);
  const T scalar_tau_c = static_cast<T>(a.t * a.lam * a.c);
  const T floor = std::sqrt(std::numeric_limits<T>::min());
  if (a.groups == 1) {
    TORCH_CHECK(w.dim() >= 2, "regtorch fused: columns need >= 2 dims");
    const int64_t d0 = w.size(0), d1 = w.size(1);
    if (n == 0) return;
    prox_columns_loop<T, PRE, L1, L2>(wp, d0, d1, n / (d0 * d1), step, l1, tau, l2, divisor, lam, c,
                                      scalar_tau_c, floor);
  } else {
    const int64_t rows = a.groups == 2 || w.dim() == 0 ? 1 : w.size(0);
    if (n == 0) return;
    prox_rows_loop<T, PRE, L1, L2>(wp, rows, n / rows, step, l1, tau, l2, divisor, lam, c,
                                   scalar_tau_c, floor);
  }
}

template <typename T, bool PRE>
void prox_dispatch(const at::Tensor& w, StepSize<T, PRE> step, const ProxArgs& a) {
  const bool has1 = a.l1 != 0.0, has2 = a.l2 != 0.0;
  if (has1 && has2) prox_tensor<T, PRE, true, true>(w, step, a);
  else if (has1) prox_tensor<T, PRE, true, false>(w, step, a);
  else if (has2) prox_tensor<T, PRE, false, true>(w, step, a);
  else prox_tensor<T, PRE, false, false>(w, step, a);
}

void prox_step(at::TensorList params, at::TensorList moments, at::TensorList counts, double lr,
               double eps, double beta2, double lr_decay, double l1, double l2, double lam,
               int64_t groups, at::ArrayRef<double> coefficients) {
  const bool pre = !moments.empty();
  TORCH_CHECK(!pre || moments.size() == params.size(), "regtorch fused: ", params.size(),
              " params and ", moments.size(), " moments");
  TORCH_CHECK(counts.empty() || counts.size() == params.size(),
              "regtorch fused: mismatched step counts");
  TORCH_CHECK(coefficients.empty() || coefficients.size() == params.size(),
              "regtorch fused: mismatched group coefficients");
  const bool group = groups >= 0 && lam != 0.0;
  if (!group && l1 == 0.0 && l2 == 0.0) return;
  for (size_t k = 0; k < params.size(); ++k) {
    double lr_k = lr, scale = 1.0;
    if (!counts.empty() && (lr_decay != 0.0 || (pre && beta2 != 0.0))) {
      const double count = read_count(counts[k]);
      if (lr_decay != 0.0) lr_k = lr / (1.0 + (count - 1.0) * lr_decay);
      if (pre && beta2 != 0.0) scale = std::sqrt(1.0 - std::pow(beta2, count));
    }
    ProxArgs a{l1, l2, lam, coefficients.empty() ? 1.0 : coefficients[k], lr_k, groups};
    const at::Tensor w = as_fast(params[k]);
    AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "regtorch_prox_step", [&] {
      using T = scalar_t;
      if (pre) {
        TORCH_CHECK(params[k].sizes() == moments[k].sizes(), "regtorch fused: shape mismatch");
        const at::Tensor v = moments[k].scalar_type() == w.scalar_type() && fast(moments[k])
                                 ? moments[k] : moments[k].to(w.scalar_type()).contiguous();
        StepSize<T, true> step{v.const_data_ptr<T>(), static_cast<T>(lr_k * scale),
                               static_cast<T>(eps * scale)};
        prox_dispatch<T, true>(w, step, a);
      } else {
        StepSize<T, false> step{nullptr, static_cast<T>(lr_k), T(0)};
        prox_dispatch<T, false>(w, step, a);
      }
    });
    unstage(params[k], w);
    params[k].unsafeGetTensorImpl()->bump_version();
  }
}

}  // namespace

namespace regtorch_fused {
// prox_step for prox.cpp's prox_call, which calls it without the dispatcher (same arguments,
// same loops: the same result bit for bit).
void prox_step_direct(at::TensorList params, at::TensorList moments, at::TensorList counts,
                      double lr, double eps, double beta2, double lr_decay, double l1, double l2,
                      double lam, int64_t groups, at::ArrayRef<double> coefficients) {
  prox_step(params, moments, counts, lr, eps, beta2, lr_decay, l1, l2, lam, groups, coefficients);
}
}  // namespace regtorch_fused

TORCH_LIBRARY(regtorch_fused, m) {
  m.def("elementwise_grad(Tensor[] params, Tensor(a!)[] grads, float l1, float l2, bool value) "
        "-> Tensor");
  m.def("group_grad(Tensor[] params, Tensor(a!)[] grads, float lam, int groups, "
        "float[] coefficients, bool value) -> Tensor");
  m.def("elementwise_prox(Tensor(a!)[] params, float[] steps, float l1, float l2) -> ()");
  m.def("adam_prox(Tensor(a!)[] params, Tensor[] exp_avg_sqs, float[] lrs, float[] scales, "
        "float[] eps, float l1, float l2) -> ()");
  m.def("prox_step(Tensor(a!)[] params, Tensor[] moments, Tensor[] counts, float lr, float eps, "
        "float beta2, float lr_decay, float l1, float l2, float lam, int groups, "
        "float[] coefficients) -> ()");
}

TORCH_LIBRARY_IMPL(regtorch_fused, CPU, m) {
  m.impl("elementwise_grad", &elementwise_grad);
  m.impl("group_grad", &group_grad);
  m.impl("elementwise_prox", &elementwise_prox);
  m.impl("adam_prox", &adam_prox);
  m.impl("prox_step", &prox_step);
}
