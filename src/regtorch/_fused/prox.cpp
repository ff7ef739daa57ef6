// The proximal step attached to an optimizer (regtorch.optim.proximal) as one CPython fast call
// per training step: `prox_call` does what ProxHandle._covered_calls, _kernel_step, _kernel_form
// and _coefficient do in Python, then runs kernel.cpp's prox_step on each (rule, param group)
// without the dispatcher, with the same arguments, so the result is the same bit for bit.
//
// Why: in a training step (caches and the interpreter cold after forward, backward and the
// optimizer's own step) those Python loops and the dispatcher's list parsing cost ~40-50 µs,
// against a ~60 µs kernel pass on the seed MLP.
//
// Nothing is cached here. Every call reads what can change between steps: the rules' penalties
// (their terms, each term's class, float strength, groups and scale), the param groups (lr, eps,
// betas, amsgrad, momentum, dampening, centered, lr_decay), the optimizer's `state` mapping and
// each parameter's entries (looked up with PyDict_GetItemWithError: a defaultdict's __missing__
// never runs, as with state.get(p)), which parameters have a gradient and require one, dtypes,
// devices, shapes of parameters vs moments, step counts. The rules' member lists per param group
// are ProxHandle._rules, rebuilt by ProxHandle._locate when the optimizer's parameter count
// changes (checked here too).
//
// All or nothing: anything the Python path would not cover, or would raise on, or that this
// function does not read exactly as Python would (a dict subclass, a number that is not an exact
// float or int, a tensor subclass, a missing key...), makes it return None before it has changed
// anything; the caller then takes the Python path, which does what it did before this function
// existed (including its errors).
#include <ATen/core/Tensor.h>
#include <ATen/TensorSubclassLikeUtils.h>
#include <c10/core/GradMode.h>
#include <pybind11/pybind11.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include <cmath>
#include <cstring>
#include <vector>

namespace regtorch_fused {
// kernel.cpp
void prox_step_direct(at::TensorList params, at::TensorList moments, at::TensorList counts,
                      double lr, double eps, double beta2, double lr_decay, double l1, double l2,
                      double lam, int64_t groups, at::ArrayRef<double> coefficients);
}  // namespace regtorch_fused

namespace {

// The optimizer families, as ProxHandle._family (prox_call's `family` argument).
enum Family : long { kSGD = 0, kAdam = 1, kAdagrad = 2, kRMSprop = 3 };

// Interned attribute and key names, made once (with the GIL held).
struct Names {
  PyObject *terms, *lam, *groups, *scale, *params, *lr, *eps, *betas, *amsgrad, *momentum,
      *dampening, *centered, *lr_decay, *step, *exp_avg_sq, *max_exp_avg_sq, *sum,
      *square_avg, *rows, *columns, *tensor, *sqrt, *none;
};

const Names& names() {
  static const Names n = [] {
    auto s = [](const char* text) { return PyUnicode_InternFromString(text); };
    return Names{s("terms"), s("lam"), s("groups"), s("scale"), s("params"), s("lr"), s("eps"),
                 s("betas"), s("amsgrad"), s("momentum"), s("dampening"), s("centered"),
                 s("lr_decay"), s("step"), s("exp_avg_sq"), s("max_exp_avg_sq"),
                 s("sum"), s("square_avg"), s("rows"), s("columns"), s("tensor"), s("sqrt"),
                 s("none")};
  }();
  return n;
}

// Thrown (and caught in prox_call) for "not covered": return None, change nothing.
struct NotCovered {};

[[noreturn]] void not_covered() { throw NotCovered{}; }

// d[key] of an exact dict, or nullptr when absent (a borrowed reference). A lookup error (an
// unhashable key cannot happen for the str and tensor keys used here) counts as not covered.
PyObject* lookup(PyObject* dict, PyObject* key) {
  PyObject* value = PyDict_GetItemWithError(dict, key);
  if (value == nullptr && PyErr_Occurred()) {
    PyErr_Clear();
    not_covered();
  }
  return value;
}

PyObject* require(PyObject* dict, PyObject* key) {
  PyObject* value = lookup(dict, key);
  if (value == nullptr) not_covered();  // Python raises KeyError: let it
  return value;
}

// float(x) as Python computes it, for an exact float or int; anything else is not covered.
double number(PyObject* x) {
  if (PyFloat_CheckExact(x)) return PyFloat_AS_DOUBLE(x);
  if (PyLong_CheckExact(x)) {
    const double value = PyLong_AsDouble(x);
    if (value == -1.0 && PyErr_Occurred()) {
      PyErr_Clear();
      not_covered();
    }
    return value;
  }
  not_covered();
}

bool flag(PyObject* x) {  // an exact bool
  if (x == Py_True) return true;
  if (x == Py_False) return false;
  not_covered();
}

bool same_str(PyObject* x, PyObject* interned) {
  if (x == interned) return true;
  return PyUnicode_CheckExact(x) && PyUnicode_Compare(x, interned) == 0;
}

// A tensor the kernel may read or write as Python handed it to the dispatcher: an exact Tensor
// or Parameter, no subclass-like wrapper (functorch, Python dispatch), no lazy negation.
const at::Tensor& plain_tensor(PyObject* x) {
  if (!THPVariable_CheckExact(x)) not_covered();
  const at::Tensor& t = THPVariable_Unpack(x);
  if (at::isTensorSubclassLike(t) || t.is_neg() || t.is_conj()) not_covered();
  return t;
}

// _momentum(group): float(group.get("momentum", 0.0)), 0 <= momentum < 1 (else Python raises).
double momentum_of(PyObject* group) {
  PyObject* m = lookup(group, names().momentum);
  const double momentum = m == nullptr ? 0.0 : number(m);
  if (!(0.0 <= momentum && momentum < 1.0)) not_covered();
  return momentum;
}

// A penalty as _kernel_form merges it: l1, l2, λ, group code (-1 none) and whether c_g = √|g|.
struct Form {
  double l1 = 0.0, l2 = 0.0, lam = 0.0;
  int64_t code = -1;
  bool sqrt_scale = false;
};

// getattr(x, name), as Python reads it (properties included); an error is not covered.
pybind11::object attribute(PyObject* x, PyObject* name) {
  PyObject* value = PyObject_GetAttr(x, name);
  if (value == nullptr) {
    PyErr_Clear();
    not_covered();
  }
  return pybind11::reinterpret_steal<pybind11::object>(value);
}

struct Kinds {
  PyObject *l1, *l2, *group_lasso;
};

Form form_of(PyObject* penalty, const Kinds& kinds) {
  const Names& n = names();
  const pybind11::object owned = attribute(penalty, n.terms);
  PyObject* terms = owned.ptr();
  if (!PyTuple_CheckExact(terms)) not_covered();
  Form form;
  bool grouped = false;
  pybind11::object scale;
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(terms); ++i) {
    PyObject* term = PyTuple_GET_ITEM(terms, i);
    PyObject* kind = reinterpret_cast<PyObject*>(Py_TYPE(term));
    if (kind != kinds.l1 && kind != kinds.l2 && kind != kinds.group_lasso) not_covered();
    const pybind11::object strength = attribute(term, n.lam);
    if (!PyFloat_CheckExact(strength.ptr())) not_covered();  // a [K] strength: Python's path
    const double s = PyFloat_AS_DOUBLE(strength.ptr());
    if (kind == kinds.l1) {
      form.l1 = form.l1 + s;
    } else if (kind == kinds.l2) {
      form.l2 = form.l2 + s;
    } else {
      form.lam = form.lam + s;
      const pybind11::object groups = attribute(term, n.groups);
      if (same_str(groups.ptr(), n.rows)) form.code = 0;
      else if (same_str(groups.ptr(), n.columns)) form.code = 1;
      else if (same_str(groups.ptr(), n.tensor)) form.code = 2;
      else not_covered();
      scale = attribute(term, n.scale);
      grouped = true;
    }
  }
  if (grouped) {  // the last group term's scale, as _kernel_form keeps it
    if (same_str(scale.ptr(), n.sqrt)) form.sqrt_scale = true;
    else if (!same_str(scale.ptr(), n.none)) not_covered();
  }
  return form;
}

// _coefficient: √(elements in a group) with scale "sqrt", else 1; rows: dims ≥ 1, columns: all
// but dim 1, tensor: all (group_dims).
double coefficient(const at::Tensor& w, const Form& form) {
  if (!form.sqrt_scale || form.code < 0) return 1.0;
  int64_t size = 1;
  for (int64_t d = 0; d < w.dim(); ++d) {
    if (form.code == 2 || (form.code == 0 && d >= 1) || (form.code == 1 && d != 1)) {
      size *= w.size(d);
    }
  }
  return std::sqrt(static_cast<double>(size));
}

// One prox_step call, as _fused_prox_ makes it.
struct Call {
  std::vector<at::Tensor> params, moments, counts;
  double lr = 0.0, eps = 0.0, beta2 = 0.0, lr_decay = 0.0;
  Form form;
  std::vector<double> coefficients;
};

// state[p][key] for each updated parameter: a plain tensor of the parameter's shape.
void moments_of(const std::vector<PyObject*>& entries, const std::vector<at::Tensor>& params,
                PyObject* key, std::vector<at::Tensor>& out) {
  for (size_t k = 0; k < entries.size(); ++k) {
    const at::Tensor& v = plain_tensor(require(entries[k], key));
    if (v.sizes() != params[k].sizes()) not_covered();  // prox_step would raise
    out.push_back(v);
  }
}

bool readable_count(const at::Tensor& count) {  // what kernel.cpp's read_count accepts
  switch (count.scalar_type()) {
    case at::kByte: case at::kChar: case at::kShort: case at::kInt: case at::kLong:
    case at::kFloat: case at::kDouble:
      return count.device().is_cpu() && count.numel() == 1;
    default:
      return false;
  }
}

void counts_of(const std::vector<PyObject*>& entries, bool read, std::vector<at::Tensor>& out) {
  for (PyObject* entry : entries) {
    const at::Tensor& count = plain_tensor(require(entry, names().step));
    if (read && !readable_count(count)) not_covered();  // prox_step would raise
    out.push_back(count);
  }
}

// _kernel_step: the step arguments of one param group.
void kernel_step(PyObject* group, long family, bool preconditioned,
                 const std::vector<PyObject*>& entries, Call& call) {
  const Names& n = names();
  double lr = number(require(group, n.lr));  // a tensor lr: Python's path
  if (family == kSGD) {
    const double momentum = momentum_of(group);
    if (momentum != 0.0) lr = lr * (1.0 - number(require(group, n.dampening))) / (1.0 - momentum);
    call.lr = lr;
    return;
  }
  if (family == kRMSprop) {
    call.lr = lr / (1.0 - momentum_of(group));
    if (!preconditioned) return;
    if (flag(require(group, n.centered))) not_covered();  // centered: Python's path
    moments_of(entries, call.params, n.square_avg, call.moments);
    call.eps = number(require(group, n.eps));
    return;
  }
  if (family == kAdagrad) {
    call.lr = lr;
    call.lr_decay = number(require(group, n.lr_decay));
    if (call.lr_decay != 0.0) counts_of(entries, true, call.counts);
    if (preconditioned) moments_of(entries, call.params, n.sum, call.moments);
    call.eps = number(require(group, n.eps));
    return;
  }
  // Adam, AdamW
  call.lr = lr;
  if (!preconditioned) return;
  PyObject* key = flag(require(group, n.amsgrad)) ? n.max_exp_avg_sq : n.exp_avg_sq;
  moments_of(entries, call.params, key, call.moments);
  call.eps = number(require(group, n.eps));
  PyObject* betas = require(group, n.betas);
  if (!(PyTuple_CheckExact(betas) || PyList_CheckExact(betas)) ||
      PySequence_Fast_GET_SIZE(betas) < 2) {
    not_covered();
  }
  call.beta2 = number(PySequence_Fast_ITEMS(betas)[1]);
  // prox_step reads the counts only for the bias correction
  counts_of(entries, call.beta2 != 0.0, call.counts);
}

// _covered_calls(groups=True): the calls, or NotCovered.
std::vector<Call> covered_calls(PyObject* rules, PyObject* param_groups, PyObject* state,
                                Py_ssize_t optimized, long family, bool preconditioned,
                                const Kinds& kinds) {
  const Names& n = names();
  if (!PyList_CheckExact(rules) || !PyList_CheckExact(param_groups)) not_covered();
  const Py_ssize_t n_groups = PyList_GET_SIZE(param_groups);
  Py_ssize_t total = 0;
  for (Py_ssize_t g = 0; g < n_groups; ++g) {
    PyObject* group = PyList_GET_ITEM(param_groups, g);
    if (!PyDict_CheckExact(group)) not_covered();
    PyObject* params = require(group, n.params);
    if (!PyList_CheckExact(params)) not_covered();
    total += PyList_GET_SIZE(params);
  }
  if (total != optimized) not_covered();  // add_param_group: Python relocates the members
  const bool stateful = family != kSGD;
  std::vector<Call> calls;
  std::vector<PyObject*> entries;
  for (Py_ssize_t r = 0; r < PyList_GET_SIZE(rules); ++r) {
    PyObject* rule = PyList_GET_ITEM(rules, r);  // _Rule(penalty, sharded, members)
    if (!PyTuple_Check(rule) || PyTuple_GET_SIZE(rule) != 3) not_covered();
    if (PyTuple_GET_ITEM(rule, 1) != Py_False) not_covered();  // DTensors: Python's path
    const Form form = form_of(PyTuple_GET_ITEM(rule, 0), kinds);
    PyObject* members = PyTuple_GET_ITEM(rule, 2);
    if (!PyList_CheckExact(members)) not_covered();
    for (Py_ssize_t m = 0; m < PyList_GET_SIZE(members); ++m) {
      PyObject* member = PyList_GET_ITEM(members, m);  // (param group index, params)
      if (!PyTuple_CheckExact(member) || PyTuple_GET_SIZE(member) != 2) not_covered();
      const Py_ssize_t index = PyLong_AsSsize_t(PyTuple_GET_ITEM(member, 0));
      if (index == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        not_covered();
      }
      if (index < 0 || index >= n_groups) not_covered();
      PyObject* params = PyTuple_GET_ITEM(member, 1);
      if (!PyList_CheckExact(params)) not_covered();
      Call call;
      call.form = form;
      entries.clear();
      for (Py_ssize_t i = 0; i < PyList_GET_SIZE(params); ++i) {
        PyObject* p = PyList_GET_ITEM(params, i);
        const at::Tensor& t = plain_tensor(p);
        if (!t.grad().defined() || !t.requires_grad()) continue;
        if (stateful) {  // state.get(p): truthy once the optimizer has stepped p
          PyObject* entry = lookup(state, p);
          if (entry == nullptr) continue;
          if (!PyDict_CheckExact(entry)) not_covered();
          if (PyDict_GET_SIZE(entry) == 0) continue;
          entries.push_back(entry);
        }
        const auto dtype = t.scalar_type();
        if (!t.device().is_cpu() || (dtype != at::kFloat && dtype != at::kDouble)) not_covered();
        if (form.code == 1 && form.lam != 0.0 && t.dim() < 2) not_covered();
        call.params.push_back(t);
      }
      if (call.params.empty()) continue;
      kernel_step(PyList_GET_ITEM(param_groups, index), family, preconditioned, entries, call);
      if (form.lam != 0.0) {
        for (const auto& t : call.params) call.coefficients.push_back(coefficient(t, form));
      }
      calls.push_back(std::move(call));
    }
  }
  return calls;
}

// prox_call(rules, param_groups, state, optimized, family, preconditioned, kinds): True when the
// proximal step ran, None when it is not covered (nothing changed). `kinds` is
// (L1, L2, GroupLasso, the state mapping types accepted: dict and defaultdict).
PyObject* prox_call(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  TORCH_CHECK_TYPE(nargs == 7, "regtorch prox_call: expected (rules, param_groups, state, "
                   "optimized, family, preconditioned, kinds), got ", nargs, " arguments");
  PyObject* kinds_tuple = args[6];
  TORCH_CHECK_TYPE(PyTuple_CheckExact(kinds_tuple) && PyTuple_GET_SIZE(kinds_tuple) == 4,
                   "regtorch prox_call: kinds must be (L1, L2, GroupLasso, defaultdict)");
  const Kinds kinds{PyTuple_GET_ITEM(kinds_tuple, 0), PyTuple_GET_ITEM(kinds_tuple, 1),
                    PyTuple_GET_ITEM(kinds_tuple, 2)};
  PyObject* state = args[2];
  const Py_ssize_t optimized = PyLong_AsSsize_t(args[3]);
  const long family = PyLong_AsLong(args[4]);
  if (PyErr_Occurred()) return nullptr;
  TORCH_CHECK_VALUE(family >= kSGD && family <= kRMSprop, "regtorch prox_call: bad family ",
                    family);
  // the state mapping: a dict or a defaultdict, whose lookups are state.get(p)'s
  if (!(PyDict_CheckExact(state) ||
        reinterpret_cast<PyObject*>(Py_TYPE(state)) == PyTuple_GET_ITEM(kinds_tuple, 3))) {
    Py_RETURN_NONE;
  }
  std::vector<Call> calls;
  try {
    calls = covered_calls(args[0], args[1], state, optimized, family, flag(args[5]), kinds);
  } catch (const NotCovered&) {
    Py_RETURN_NONE;
  }
  {
    pybind11::gil_scoped_release release;
    c10::NoGradGuard no_grad;  // as under _fused_prox_'s torch.no_grad() (a staged copy back)
    for (const Call& c : calls) {
      regtorch_fused::prox_step_direct(c.params, c.moments, c.counts, c.lr, c.eps, c.beta2,
                                       c.lr_decay, c.form.l1, c.form.l2, c.form.lam,
                                       c.form.code, c.coefficients);
    }
  }
  Py_RETURN_TRUE;
  END_HANDLE_TH_ERRORS
}

PyMethodDef prox_call_def = {
    "prox_call", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&prox_call)),
    METH_FASTCALL, "prox_call(rules, param_groups, state, optimized, family, preconditioned, "
    "kinds): see regtorch/_fused/prox.cpp"};

}  // namespace

namespace regtorch_fused {
// Added to the extension module by loss.cpp's PYBIND11_MODULE (one module per library).
void add_prox_functions(pybind11::module_& m) {
  m.add_object("prox_call", pybind11::reinterpret_steal<pybind11::object>(
                                PyCFunction_NewEx(&prox_call_def, nullptr, nullptr)));
}
}  // namespace regtorch_fused
