// Loss mode for regtorch: R(w) as one C++ autograd node (CPU, float32/float64).
//
// regtorch_fused::penalty_term(params, l1, l2, group_lams, group_codes, coefficients, dtype)
// returns R(w) = l1·Σ|w| + l2/2·Σw² + Σ_t lam_t·Σ_k c_tk·Σ_g ‖w_kg‖ (float64 sums, returned in
// `dtype`), with a backward node. The forward is one read of every weight (the value only).
//
// Backward without create_graph (the usual case), for a leaf parameter p (an AccumulateGrad
// edge): the node returns no tensor for p. It leaves s = dL/dR with p's regtorch hook, a
// FunctionPreHook in p's tensor pre-hooks, which autograd runs on p's *summed* incoming gradient
// g, in backward() (before AccumulateGrad) and in autograd.grad (before the capture) alike; the
// hook returns g + s·∇R(p): one pass reading p and g, in place when autograd holds the only
// reference to g, as InputBuffer's own additions do. That is the cost of add_grad_ after
// backward, without a gradient buffer of the penalty's own and without autograd's addition of
// that buffer to g. A non-leaf parameter gets s·∇R(p) returned as an ordinary gradient.
//
// Why the hook is sound: autograd evaluates p's AccumulateGrad (or capture) only after every
// node with an edge to it has run, this one included; the hook acts only for the graph task
// that ran this node (get_current_graph_task_id), so another backward through p is unaffected;
// it is the first of p's tensor pre-hooks, so user hooks see the summed gradient, as with plain
// autograd. A final callback of the task checks that every pending contribution was consumed
// (it raises otherwise, never drops one silently).
//
// Backward with create_graph=True: the gradient is built from differentiable ATen ops (what
// autograd through the value computes), so double backward works.
//
// Two entry points build the same node: the operator regtorch_fused::penalty_term (through the
// dispatcher) and `loss_term`, a Python function of this extension module, which is what
// regtorch calls: one call from Python with the rule's whole parameter list and strengths, which
// selects the trainable tensors, checks that they are plain CPU float32/float64 tensors
// (returning None otherwise, for the caller's fallback), derives the group coefficients from the
// shapes, and runs the value pass without the GIL. It skips the Python-side loops and the
// dispatcher's argument parsing: ~10 µs a call in a seed-MLP training step, about as much as the
// value pass itself.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/clamp_min.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/sign.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>
#include <ATen/TensorOperators.h>
#include <ATen/TensorSubclassLikeUtils.h>
#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/graph_task.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <ATen/EmptyTensor.h>
#include <ATen/autocast_mode.h>
#include <pybind11/pybind11.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using torch::autograd::variable_list;

#if defined(__FMA__)
template <typename T>
inline T madd(T a, T b, T c) { return std::fma(a, b, c); }
#else
template <typename T>
inline T madd(T a, T b, T c) { return a * b + c; }
#endif

constexpr int64_t kLanes = 32;  // independent float64 partial sums (see kernel.cpp)

// The penalty as the kernel sees it: one element-wise term and any number of group terms.
struct Terms {
  double l1 = 0.0, l2 = 0.0;
  std::vector<double> lams;        // per group term
  std::vector<int64_t> codes;      // per group term: 0 rows, 1 columns, 2 tensor
  std::vector<double> coefficients;  // [term * n_params + k]
  size_t n_params = 0;

  double coefficient(size_t term, size_t k) const { return coefficients[term * n_params + k]; }
};

// A tensor as [R, C, K] for group term `code`: rows = w[r], columns = w[:, c, ...].
struct Layout {
  int64_t d0, d1, inner;
};

Layout layout_of(const at::Tensor& w, int64_t code) {
  const int64_t n = w.numel();
  if (code == 1) return {w.size(0), w.size(1), n / std::max<int64_t>(w.size(0) * w.size(1), 1)};
  if (code == 2) return {1, n, 1};
  const int64_t rows = w.dim() == 0 ? 1 : w.size(0);
  return {rows, rows == 0 ? 0 : n / rows, 1};
}

at::Tensor contiguous_float(const at::Tensor& t) {
  return t.is_contiguous() ? t : t.contiguous();
}

// ---- value ----------------------------------------------------------------------------------
// The sum of kLanes partial sums, pairwise: a serial sum of 32 float64 lanes is a ~130-cycle
// dependency chain, which a group lasso would pay per row (a third of its value pass on the seed
// MLP's 310 rows).
inline double lane_sum(double* a) {
  for (int64_t width = kLanes / 2; width > 0; width /= 2) {
#pragma omp simd
    for (int64_t j = 0; j < width; ++j) a[j] += a[j + width];
  }
  return a[0];
}

// float64 (or any T): kLanes float64 partial sums; the last partial row of lanes is masked in,
// so no element is added by a serial chain (a group lasso pays the tail once per row).
template <typename T, bool W1, bool W2>
void elementwise_sums(const T* __restrict w, int64_t n, double& s1, double& s2) {
  double a1[kLanes] = {0.0}, a2[kLanes] = {0.0};
  const int64_t body = n - n % kLanes;
  for (int64_t i = 0; i < body; i += kLanes) {
#pragma omp simd
    for (int64_t j = 0; j < kLanes; ++j) {
      const double x = static_cast<double>(w[i + j]);
      if (W1) a1[j] += std::abs(x);
      if (W2) a2[j] += x * x;
    }
  }
  const int64_t rest = n - body;
#pragma omp simd
  for (int64_t j = 0; j < kLanes; ++j) {
    const double x = j < rest ? static_cast<double>(w[body + j]) : 0.0;
    if (W1) a1[j] += std::abs(x);
    if (W2) a2[j] += x * x;
  }
  if (W1) s1 += lane_sum(a1);
  if (W2) s2 += lane_sum(a2);
}

// float32 weights: each of kLanes float32 lanes sums at most kBlockPerLane elements (≤ 16·2⁻²⁴ ≈
// 1e-6 relative error per block, about 1e-7 typically, within the pure-PyTorch path's float32
// chunked sums), then each lane's block sums are added into its own float64 partial sum, and the
// kLanes float64 sums are added once at the end (pairwise). The last partial row of lanes is
// masked in. Three times as fast as float64 lanes (whose conversions bound the loop) and than a
// horizontal float64 reduction per block.
constexpr int64_t kBlockPerLane = 16;

template <bool W1, bool W2>
void elementwise_sums_float(const float* __restrict w, int64_t n, double& s1, double& s2) {
  constexpr int64_t kBlock = kBlockPerLane * kLanes;
  double a1[kLanes] = {0.0}, a2[kLanes] = {0.0};
  for (int64_t i = 0; i < n; i += kBlock) {
    const int64_t end = std::min(i + kBlock, n);
    float b1[kLanes] = {0.0f}, b2[kLanes] = {0.0f};
    int64_t k = i;
    for (; k + kLanes <= end; k += kLanes) {
#pragma omp simd
      for (int64_t j = 0; j < kLanes; ++j) {
        const float x = w[k + j];
        if (W1) b1[j] += std::abs(x);
        if (W2) b2[j] += x * x;
      }
    }
    const int64_t rest = end - k;  // < kLanes elements: the block's last, partial row of lanes
    if (rest > 0) {
#pragma omp simd
      for (int64_t j = 0; j < kLanes; ++j) {
        const float x = j < rest ? w[k + j] : 0.0f;
        if (W1) b1[j] += std::abs(x);
        if (W2) b2[j] += x * x;
      }
    }
#pragma omp simd
    for (int64_t j = 0; j < kLanes; ++j) {
      if (W1) a1[j] += static_cast<double>(b1[j]);
      if (W2) a2[j] += static_cast<double>(b2[j]);
    }
  }
  if (W1) s1 += lane_sum(a1);
  if (W2) s2 += lane_sum(a2);
}

template <typename T, bool W1, bool W2>
void sums(const T* w, int64_t n, double& s1, double& s2) {
  if constexpr (std::is_same_v<T, float>) {
    elementwise_sums_float<W1, W2>(w, n, s1, s2);
  } else {
    elementwise_sums<T, W1, W2>(w, n, s1, s2);
  }
}

template <typename T>
double squares(const T* __restrict w, int64_t n, int64_t stride = 1) {
  if (stride != 1) {
    double total = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const double x = static_cast<double>(w[i * stride]);
      total += x * x;
    }
    return total;
  }
  double unused = 0.0, total = 0.0;
  sums<T, false, true>(w, n, unused, total);
  return total;
}

// ‖w_g‖ for every group of `code` (float64), appended to `norms`.
template <typename T>
void group_norms(const T* w, const Layout& l, int64_t code, std::vector<double>& norms) {
  if (code != 1) {
    for (int64_t r = 0; r < l.d0; ++r) norms.push_back(std::sqrt(squares(w + r * l.d1, l.d1)));
    return;
  }
  std::vector<double> sums(static_cast<size_t>(l.d1), 0.0);
  for (int64_t i = 0; i < l.d0; ++i) {
    for (int64_t c = 0; c < l.d1; ++c) {
      sums[c] += squares(w + (i * l.d1 + c) * l.inner, l.inner);
    }
  }
  for (double s : sums) norms.push_back(std::sqrt(s));
}

// R of parameter k; its group norms (per group term, concatenated) go to `norms`.
double value_of(const Terms& terms, const at::Tensor& w, size_t k, std::vector<double>& norms) {
  double total = 0.0;
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "regtorch_penalty_value", [&] {
    const scalar_t* p = w.const_data_ptr<scalar_t>();
    const int64_t n = w.numel();
    if (terms.l1 != 0.0 || terms.l2 != 0.0) {
      double s1 = 0.0, s2 = 0.0;
      if (terms.l1 != 0.0 && terms.l2 != 0.0) sums<scalar_t, true, true>(p, n, s1, s2);
      else if (terms.l1 != 0.0) sums<scalar_t, true, false>(p, n, s1, s2);
      else sums<scalar_t, false, true>(p, n, s1, s2);
      total += terms.l1 * s1 + 0.5 * terms.l2 * s2;
    }
    for (size_t t = 0; t < terms.lams.size(); ++t) {
      const size_t start = norms.size();
      if (n > 0) group_norms<scalar_t>(p, layout_of(w, terms.codes[t]), terms.codes[t], norms);
      double sum = 0.0;
      for (size_t i = start; i < norms.size(); ++i) sum += norms[i];
      total += terms.lams[t] * terms.coefficient(t, k) * sum;
    }
  });
  return total;
}

// ---- gradient: out = g + s·∇R(w) (g may be null: out = s·∇R(w); out may be g) ---------------
template <typename T, bool HAS_G, bool L1, bool L2>
void elementwise_term(const T* __restrict w, const T* g, T* out, int64_t n, T a, T b) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T x = w[i];
    T gi = HAS_G ? g[i] : T(0);
    if (L1) {
      const T sgn = x > T(0) ? T(1) : (x < T(0) ? T(-1) : T(0));
      gi = HAS_G ? madd(sgn, a, gi) : sgn * a;
    }
    if (L2) gi = (HAS_G || L1) ? madd(x, b, gi) : x * b;
    out[i] = gi;
  }
}

template <typename T, bool HAS_G>
void elementwise_dispatch(const T* w, const T* g, T* out, int64_t n, double a, double b) {
  const T ta = static_cast<T>(a), tb = static_cast<T>(b);
  if (a != 0.0 && b != 0.0) elementwise_term<T, HAS_G, true, true>(w, g, out, n, ta, tb);
  else if (a != 0.0) elementwise_term<T, HAS_G, true, false>(w, g, out, n, ta, tb);
  else if (b != 0.0) elementwise_term<T, HAS_G, false, true>(w, g, out, n, ta, tb);
  else if (!HAS_G) std::fill(out, out + n, T(0));
  else if (out != g) std::copy(g, g + n, out);  // a group term alone adds onto g
}

// out_g += w_g · (scale / max(‖w_g‖, √tiny)), from the forward's norms.
template <typename T>
void group_term(const T* __restrict w, T* out, const Layout& l, int64_t code, double scale,
                const double* norms) {
  const T floor = std::sqrt(std::numeric_limits<T>::min());
  const T tscale = static_cast<T>(scale);
  auto factor = [&](int64_t g) { return tscale / std::max(static_cast<T>(norms[g]), floor); };
  if (code != 1) {
    for (int64_t r = 0; r < l.d0; ++r) {
      const T f = factor(r);
      const T* wr = w + r * l.d1;
      T* o = out + r * l.d1;
#pragma omp simd
      for (int64_t j = 0; j < l.d1; ++j) o[j] = madd(wr[j], f, o[j]);
    }
    return;
  }
  std::vector<T> factors(static_cast<size_t>(l.d1));
  for (int64_t c = 0; c < l.d1; ++c) factors[c] = factor(c);
  for (int64_t i = 0; i < l.d0; ++i) {
    for (int64_t c = 0; c < l.d1; ++c) {
      const T f = factors[c];
      const T* wc = w + (i * l.d1 + c) * l.inner;
      T* o = out + (i * l.d1 + c) * l.inner;
#pragma omp simd
      for (int64_t j = 0; j < l.inner; ++j) o[j] = madd(wc[j], f, o[j]);
    }
  }
}

// out = g + s·∇R(w) for contiguous w, out (and g, when defined) of w's dtype.
void add_term(const Terms& terms, double s, const at::Tensor& w, const at::Tensor& g,
              const at::Tensor& out, size_t k, const std::vector<double>& norms) {
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "regtorch_penalty_grad", [&] {
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const int64_t n = w.numel();
    if (g.defined()) {
      elementwise_dispatch<scalar_t, true>(wp, g.const_data_ptr<scalar_t>(), op, n,
                                           s * terms.l1, s * terms.l2);
    } else {
      elementwise_dispatch<scalar_t, false>(wp, nullptr, op, n, s * terms.l1, s * terms.l2);
    }
    size_t offset = 0;
    for (size_t t = 0; t < terms.lams.size() && n > 0; ++t) {
      const Layout l = layout_of(w, terms.codes[t]);
      const double scale = s * terms.lams[t] * terms.coefficient(t, k);
      group_term<scalar_t>(wp, op, l, terms.codes[t], scale, norms.data() + offset);
      offset += static_cast<size_t>(terms.codes[t] == 1 ? l.d1 : l.d0);
    }
  });
}

// ∇R(w)·go with differentiable ATen ops (create_graph=True).
at::Tensor differentiable_gradient(const Terms& terms, const at::Tensor& go, const at::Tensor& w,
                                   size_t k) {
  const at::Tensor s = go.to(w.scalar_type());
  at::Tensor grad = at::zeros_like(w);
  if (terms.l1 != 0.0) grad = grad + s * terms.l1 * at::sign(w);
  if (terms.l2 != 0.0) grad = grad + s * terms.l2 * w;
  for (size_t t = 0; t < terms.lams.size(); ++t) {
    std::vector<int64_t> dims;
    const int64_t code = terms.codes[t];
    for (int64_t d = 0; d < w.dim(); ++d) {
      if (code == 2 || (code == 0 && d >= 1) || (code == 1 && d != 1)) dims.push_back(d);
    }
    const at::Tensor norms = dims.empty() ? at::abs(w)
                                          : at::linalg_vector_norm(w, 2, dims, true);
    const double floor = w.scalar_type() == at::kDouble
                             ? std::sqrt(std::numeric_limits<double>::min())
                             : std::sqrt(static_cast<double>(std::numeric_limits<float>::min()));
    grad = grad + w * ((s * (terms.lams[t] * terms.coefficient(t, k))) / norms.clamp_min(floor));
  }
  return grad;
}

// ---- the hook ------------------------------------------------------------------------------
struct Pending {
  int task;
  std::shared_ptr<const Terms> terms;
  double scale;
  at::Tensor weight;
  size_t index;
  std::shared_ptr<const std::vector<double>> norms;
};

struct HookState {
  std::mutex mutex;
  std::vector<Pending> pending;
};

// Nothing but autograd's incoming list holds g or its memory, so adding in place is unobservable
// (InputBuffer checks the same before its own in-place additions). A view counts when its base
// is held by the view alone: Linear's weight gradient is the transpose of a product nobody else
// references.
bool sole_owner(const at::Tensor& g) {
  if (g.use_count() != 1 || !g.has_storage()) return false;
  const auto refs = g.storage().use_count();
  if (refs == 1) return true;
  if (refs != 2 || !g.is_view()) return false;
  auto* meta = torch::autograd::impl::get_view_autograd_meta(g);
  if (meta == nullptr || !meta->has_bw_view()) return false;
  const at::Tensor& base = meta->get_backward_view().base_;
  // (a view made without grad mode shares one ViewInfo between forward and backward AD)
  if (meta->has_fw_view() && !meta->get_forward_view().base_.is_same(base)) return false;
  return base.use_count() == 1 && !base.is_view();
}

// g is also a plain contiguous tensor of w's kind, which the loops can write.
bool exclusive(const at::Tensor& g, const at::Tensor& w) {
  return !at::isTensorSubclassLike(g) && !g._is_zerotensor() && !g.is_conj() && !g.is_neg() &&
         g.device().is_cpu() && g.scalar_type() == w.scalar_type() && g.is_contiguous() &&
         g.sizes() == w.sizes() && sole_owner(g);
}

struct PenaltyHook final : torch::autograd::FunctionPreHook {
  std::shared_ptr<HookState> state = std::make_shared<HookState>();

  variable_list operator()(const variable_list& grads) override {
    const int task = torch::autograd::get_current_graph_task_id();
    std::vector<Pending> mine;
    {
      std::lock_guard<std::mutex> lock(state->mutex);
      auto& all = state->pending;
      auto split = std::stable_partition(all.begin(), all.end(),
                                         [&](const Pending& p) { return p.task != task; });
      for (auto it = split; it != all.end(); ++it) mine.push_back(std::move(*it));
      all.erase(split, all.end());
    }
    if (mine.empty()) return grads;
    const at::Tensor& g = grads[0];
    const at::Tensor w = contiguous_float(mine[0].weight);
    at::Tensor out;
    if (g.defined() && exclusive(g, w)) {
      out = g;  // autograd holds no other reference: add in place, as InputBuffer would
      add_term(*mine[0].terms, mine[0].scale, w, g, out, mine[0].index, *mine[0].norms);
      torch::autograd::impl::bump_version(out);
    } else {
      out = at::empty(w.sizes(), w.options());
      const at::Tensor staged = g.defined() ? g.to(w.scalar_type()).contiguous() : g;
      add_term(*mine[0].terms, mine[0].scale, w, staged, out, mine[0].index, *mine[0].norms);
    }
    for (size_t i = 1; i < mine.size(); ++i) {  // the same parameter in several terms
      add_term(*mine[i].terms, mine[i].scale, w, out, out, mine[i].index, *mine[i].norms);
    }
    variable_list result = grads;
    result[0] = out;
    return result;
  }
};

// The hook of leaf `p`, installed first among its tensor pre-hooks when absent.
std::shared_ptr<HookState> hook_state(const at::Tensor& p) {
  auto& hooks = torch::autograd::impl::hooks(p);
  for (const auto& hook : hooks) {
    if (auto* ours = dynamic_cast<PenaltyHook*>(hook.get())) return ours->state;
  }
  auto hook = std::make_unique<PenaltyHook>();
  auto state = hook->state;
  hooks.insert(hooks.begin(), std::move(hook));
  return state;
}

// ---- the node ------------------------------------------------------------------------------
// dL/dR as a double: read directly from a CPU float32/float64 0-d tensor (no dispatch), else
// through item().
double scalar_of(const at::Tensor& go) {
  if (go.device().is_cpu() && go.numel() == 1 && !go.is_neg() && !go.is_conj() &&
      !at::isTensorSubclassLike(go)) {
    if (go.scalar_type() == at::kFloat) return static_cast<double>(*go.const_data_ptr<float>());
    if (go.scalar_type() == at::kDouble) return *go.const_data_ptr<double>();
  }
  return go.item<double>();
}

// A 0-d CPU tensor holding `value` in `dtype` (allocated without a dispatch).
at::Tensor scalar_result(double value, at::ScalarType dtype) {
  at::Tensor out = at::detail::empty_cpu({}, dtype, /*pin_memory=*/false, std::nullopt);
  if (dtype == at::kFloat) *out.mutable_data_ptr<float>() = static_cast<float>(value);
  else *out.mutable_data_ptr<double>() = value;
  return out;
}

struct PenaltyTermBackward final : torch::autograd::Node {
  std::shared_ptr<const Terms> terms;
  std::vector<torch::autograd::SavedVariable> saved;
  std::vector<std::shared_ptr<const std::vector<double>>> norms;  // per parameter

  std::string name() const override { return "PenaltyTermBackward"; }

  void release_variables() override {
    for (auto& variable : saved) variable.reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    variable_list out(num_outputs());
    const at::Tensor& go = grads[0];
    if (!go.defined()) return out;
    std::vector<at::Tensor> params;
    params.reserve(saved.size());
    for (auto& variable : saved) params.push_back(variable.unpack());
    if (at::GradMode::is_enabled()) {  // create_graph=True: a differentiable gradient
      for (size_t k = 0; k < params.size(); ++k) {
        if (task_should_compute_output(k)) {
          out[k] = differentiable_gradient(*terms, go, params[k], k);
        }
      }
      return out;
    }
    const double s = scalar_of(go);
    const int task = torch::autograd::get_current_graph_task_id();
    std::vector<std::shared_ptr<HookState>> pushed;
    for (size_t k = 0; k < params.size(); ++k) {
      if (!task_should_compute_output(k)) continue;
      const at::Tensor& p = params[k];
      if (task >= 0 && p.is_leaf()) {
        auto state = hook_state(p);
        {
          std::lock_guard<std::mutex> lock(state->mutex);
          state->pending.push_back({task, terms, s, p, k, norms[k]});
        }
        pushed.push_back(std::move(state));
      } else {
        const at::Tensor w = contiguous_float(p);
        out[k] = at::empty(w.sizes(), w.options());
        add_term(*terms, s, w, at::Tensor(), out[k], k, *norms[k]);
      }
    }
    if (!pushed.empty()) {
      torch::autograd::Engine::get_default_engine().queue_callback([pushed, task]() {
        bool left = false;
        for (const auto& state : pushed) {
          std::lock_guard<std::mutex> lock(state->mutex);
          auto& all = state->pending;
          const auto before = all.size();
          all.erase(std::remove_if(all.begin(), all.end(),
                                   [&](const Pending& p) { return p.task == task; }),
                    all.end());
          left = left || all.size() != before;
        }
        TORCH_CHECK(!left, "regtorch: a penalty gradient was not applied in this backward "
                    "(a parameter's gradient hooks were cleared during it?); rerun with "
                    "REGTORCH_FUSED=0");
      });
    }
    return out;
  }
};

Terms make_terms(size_t n_params, double l1, double l2, at::ArrayRef<double> lams,
                 at::ArrayRef<int64_t> codes, at::ArrayRef<double> coefficients) {
  TORCH_CHECK(lams.size() == codes.size() && coefficients.size() == lams.size() * n_params,
              "regtorch penalty_term: mismatched group term lists");
  Terms terms;
  terms.l1 = l1;
  terms.l2 = l2;
  terms.lams.assign(lams.begin(), lams.end());
  terms.codes.assign(codes.begin(), codes.end());
  terms.coefficients.assign(coefficients.begin(), coefficients.end());
  terms.n_params = n_params;
  for (int64_t code : terms.codes) TORCH_CHECK(code >= 0 && code <= 2, "bad group code ", code);
  return terms;
}

double forward_value(const Terms& terms, at::TensorList params,
                     std::vector<std::shared_ptr<const std::vector<double>>>* norms) {
  double total = 0.0;
  for (size_t k = 0; k < params.size(); ++k) {
    const at::Tensor& p = params[k];
    TORCH_CHECK(p.device().is_cpu() &&
                (p.scalar_type() == at::kFloat || p.scalar_type() == at::kDouble),
                "regtorch penalty_term: CPU float32/float64 tensors only");
    for (int64_t code : terms.codes) {
      TORCH_CHECK(code != 1 || p.dim() >= 2, "regtorch penalty_term: columns need >= 2 dims");
    }
    auto mine = std::make_shared<std::vector<double>>();
    total += value_of(terms, contiguous_float(p), k, *mine);
    if (norms != nullptr) norms->push_back(std::move(mine));
  }
  return total;
}

at::Tensor penalty_term_cpu(at::TensorList params, double l1, double l2,
                            at::ArrayRef<double> lams, at::ArrayRef<int64_t> codes,
                            at::ArrayRef<double> coefficients, at::ScalarType dtype) {
  const Terms terms = make_terms(params.size(), l1, l2, lams, codes, coefficients);
  return at::scalar_tensor(forward_value(terms, params, nullptr), at::TensorOptions().dtype(dtype));
}

at::Tensor penalty_term_autograd(at::TensorList params, double l1, double l2,
                                 at::ArrayRef<double> lams, at::ArrayRef<int64_t> codes,
                                 at::ArrayRef<double> coefficients, at::ScalarType dtype) {
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble,
              "regtorch penalty_term: dtype must be float32 or float64");
  auto terms = std::make_shared<Terms>(
      make_terms(params.size(), l1, l2, lams, codes, coefficients));
  const bool grad = torch::autograd::compute_requires_grad(params);
  std::vector<std::shared_ptr<const std::vector<double>>> norms;
  double total = 0.0;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    total = forward_value(*terms, params, grad ? &norms : nullptr);
  }
  at::Tensor value = scalar_result(total, dtype);
  if (!grad) return value;
  auto node = c10::make_intrusive<PenaltyTermBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(params));
  node->terms = std::move(terms);
  node->norms = std::move(norms);
  node->saved.reserve(params.size());
  for (const auto& p : params) node->saved.emplace_back(p, false);
  torch::autograd::set_history(value, node);
  return value;
}


// c_g of a group term on w, as GroupLasso._coefficient: √(elements in a group) for scale 0
// ("sqrt"), 1 for scale 1 ("none"); code 0 rows, 1 columns, 2 tensor (as layout_of).
double group_coefficient(const at::Tensor& w, int64_t code, int64_t scale) {
  if (scale != 0) return 1.0;
  int64_t size = 1;
  for (int64_t d = 0; d < w.dim(); ++d) {
    if (code == 2 || (code == 0 && d >= 1) || (code == 1 && d != 1)) size *= w.size(d);
  }
  return std::sqrt(static_cast<double>(size));
}

// loss_term(params, l1, l2, groups, dtype_code): R(w) over the tensors of `params` (a list or
// tuple) that require a gradient, as one node; `groups` a tuple of (lam, code, scale) per group
// term (code 0 rows, 1 columns, 2 tensor; scale 0 "sqrt", 1 "none"); dtype_code 1 float32,
// 2 float64, 0 the loss dtype (float64 when any kept tensor is float64, else float32). With grad
// mode off (no_grad, inference_mode: the penalty logged or evaluated) the value alone, a plain
// tensor, from the same pass. None when CUDA autocast is on, no tensor requires a gradient, or
// one that does is not a plain (no subclass, no functorch wrapper) CPU float32/float64 tensor:
// the caller then takes its fallback. A CPython fast-call function, not a pybind11 one: in a training step its argument
// parsing is what costs (cold caches), ~5 µs through pybind11's overload machinery.
PyObject* loss_term(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  TORCH_CHECK_TYPE(nargs == 5, "regtorch loss_term: expected (params, l1, l2, groups, "
                   "dtype_code), got ", nargs, " arguments");
  if (at::GradMode::is_enabled() && at::autocast::is_autocast_enabled(at::kCUDA)) Py_RETURN_NONE;
  const double l1 = PyFloat_AsDouble(args[1]);
  const double l2 = PyFloat_AsDouble(args[2]);
  const long dtype_code = PyLong_AsLong(args[4]);
  if (PyErr_Occurred()) return nullptr;
  TORCH_CHECK_TYPE(PyTuple_Check(args[3]), "regtorch loss_term: groups must be a tuple");
  std::vector<double> lams;
  std::vector<int64_t> codes, scales;
  const Py_ssize_t n_groups = PyTuple_GET_SIZE(args[3]);
  for (Py_ssize_t g = 0; g < n_groups; ++g) {
    PyObject* group = PyTuple_GET_ITEM(args[3], g);
    TORCH_CHECK_TYPE(PyTuple_Check(group) && PyTuple_GET_SIZE(group) == 3,
                     "regtorch loss_term: a group term is (lam, code, scale)");
    lams.push_back(PyFloat_AsDouble(PyTuple_GET_ITEM(group, 0)));
    codes.push_back(PyLong_AsLong(PyTuple_GET_ITEM(group, 1)));
    scales.push_back(PyLong_AsLong(PyTuple_GET_ITEM(group, 2)));
    if (PyErr_Occurred()) return nullptr;
    TORCH_CHECK(codes.back() >= 0 && codes.back() <= 2, "bad group code ", codes.back());
  }
  TORCH_CHECK_TYPE(PyList_Check(args[0]) || PyTuple_Check(args[0]),
                   "regtorch loss_term: params must be a list or a tuple");
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(args[0]);
  PyObject** items = PySequence_Fast_ITEMS(args[0]);
  std::vector<at::Tensor> kept;
  kept.reserve(static_cast<size_t>(n));
  bool wide = false;
  for (Py_ssize_t i = 0; i < n; ++i) {
    if (!THPVariable_CheckExact(items[i])) Py_RETURN_NONE;
    const at::Tensor& t = THPVariable_Unpack(items[i]);
    if (!t.requires_grad()) continue;
    const auto type = t.scalar_type();
    if (!t.device().is_cpu() || (type != at::kFloat && type != at::kDouble) ||
        at::isTensorSubclassLike(t)) {
      Py_RETURN_NONE;
    }
    wide = wide || type == at::kDouble;
    kept.push_back(t);
  }
  if (kept.empty()) Py_RETURN_NONE;
  std::vector<double> coefficients;
  coefficients.reserve(codes.size() * kept.size());
  for (size_t g = 0; g < codes.size(); ++g) {
    for (const auto& t : kept) coefficients.push_back(group_coefficient(t, codes[g], scales[g]));
  }
  const at::ScalarType dtype =
      dtype_code == 1 ? at::kFloat : (dtype_code == 2 || wide ? at::kDouble : at::kFloat);
  at::Tensor value;
  {
    pybind11::gil_scoped_release release;
    value = penalty_term_autograd(kept, l1, l2, lams, codes, coefficients, dtype);
  }
  return THPVariable_Wrap(std::move(value));
  END_HANDLE_TH_ERRORS
}

PyMethodDef loss_term_def = {
    "loss_term", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&loss_term)),
    METH_FASTCALL, "loss_term(params, l1, l2, groups, dtype_code): see regtorch/_fused/loss.cpp"};

}  // namespace

TORCH_LIBRARY_FRAGMENT(regtorch_fused, m) {
  m.def("penalty_term(Tensor[] params, float l1, float l2, float[] group_lams, "
        "int[] group_codes, float[] group_coefficients, ScalarType dtype) -> Tensor");
}

TORCH_LIBRARY_IMPL(regtorch_fused, CPU, m) { m.impl("penalty_term", &penalty_term_cpu); }

TORCH_LIBRARY_IMPL(regtorch_fused, Autograd, m) {
  m.impl("penalty_term", &penalty_term_autograd);
}

namespace regtorch_fused {
void add_prox_functions(pybind11::module_& m);  // prox.cpp: prox_call
}  // namespace regtorch_fused

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  regtorch_fused::add_prox_functions(m);
  m.add_object("loss_term", pybind11::reinterpret_steal<pybind11::object>(
                                PyCFunction_NewEx(&loss_term_def, nullptr, nullptr)));
}
