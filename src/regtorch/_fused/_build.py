"""Build and load the fused C++ kernel at first use (private).

The kernel (``kernel.cpp``) is compiled with :func:`torch.utils.cpp_extension.load` the first
time it is needed, once per machine: the shared library is cached under
``$REGTORCH_CACHE_DIR`` (default ``$XDG_CACHE_HOME/regtorch``, else ``~/.cache/regtorch``) in a
directory named after the torch version, the CPU capability and a hash of the source, so a torch
upgrade, another CPU or an edited kernel builds anew and an unchanged one loads in milliseconds.

It is compiled for the instruction set torch itself dispatches to on this CPU
(:func:`torch.backends.cpu.get_cpu_capability`: ``AVX512``, ``AVX2`` or the portable
``DEFAULT``), never ``-march=native``. Building logs one line (``logging``, logger
``"regtorch"``); without a C++ compiler, or when the build fails, one line says so and the
pure-PyTorch path is used. ``REGTORCH_FUSED=0`` disables the kernel.

The same shared library is also a Python extension module (``loss.cpp``'s ``loss_term``, the
loss-mode entry point, and ``prox.cpp``'s ``prox_call``, the attached proximal
step's, all called without the dispatcher: :func:`load_loss_module`), so the build is
also keyed on the Python ABI.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import torch

__all__ = ["ENV_CACHE", "ENV_DISABLE", "build_flags", "cache_dir", "load_kernel",
           "load_loss_module"]

logger = logging.getLogger("regtorch")

ENV_DISABLE = "REGTORCH_FUSED"
ENV_CACHE = "REGTORCH_CACHE_DIR"
# kernel.cpp: the gradient and proximal kernels; loss.cpp: the loss-mode autograd node (and the
# Python module's init); prox.cpp: the proximal step's one fast call per training step.
_SOURCES = tuple(Path(__file__).with_name(name) for name in ("kernel.cpp", "loss.cpp",
                                                             "prox.cpp"))

# Flags per capability torch reports; torch's own per-ISA kernels use the same sets.
_ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mavx2", "-mfma"],
    "AVX2": ["-mavx2", "-mfma"],
}
# -ffp-contract=off: multiply-adds are fused only where the source says std::fma, as in torch's
# kernels (so gradients match them bit for bit); -fno-math-errno lets sqrt vectorize.
_COMMON_FLAGS = ["-O3", "-fopenmp-simd", "-ffp-contract=off", "-fno-math-errno"]

_lock = threading.Lock()
_state: dict[str, object] = {}


def capability() -> str:
    """The instruction set to build for: torch's dispatch capability on x86, else DEFAULT."""
    cap = torch.backends.cpu.get_cpu_capability()
    return cap if cap in _ISA_FLAGS else "DEFAULT"


def build_flags(cap: str | None = None) -> list[str]:
    """Compiler flags for capability ``cap`` (default: this CPU's)."""
    return _COMMON_FLAGS + _ISA_FLAGS.get(cap or capability(), [])


def cache_dir() -> Path:
    """Where built kernels live (one subdirectory per torch version, capability and source)."""
    root = os.environ.get(ENV_CACHE)
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "regtorch"


def _build_name(cap: str) -> str:
    digest = hashlib.sha256(b"".join(source.read_bytes() for source in _SOURCES))
    digest.update(" ".join(build_flags(cap)).encode())
    digest.update(sys.implementation.cache_tag.encode())  # the Python module's ABI
    version = torch.__version__.replace("+", "_").replace(".", "_")
    return f"regtorch_fused_{version}_{cap.lower()}_{digest.hexdigest()[:12]}"


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++"))


def disabled() -> bool:
    """True when ``REGTORCH_FUSED`` is set to 0 / false / off / no."""
    return os.environ.get(ENV_DISABLE, "").strip().lower() in {"0", "false", "off", "no"}


def load_kernel() -> SimpleNamespace | None:
    """The kernel's ops (``torch.ops.regtorch_fused``), building them on first use; ``None`` when
    disabled, without a compiler, or when the build failed (each said once in the log)."""
    if "ops" in _state:
        return _state["ops"]  # type: ignore[return-value]
    with _lock:
        if "ops" not in _state:
            _state["ops"] = _load()
    return _state["ops"]  # type: ignore[return-value]


def _load() -> SimpleNamespace | None:
    if disabled():
        logger.info("regtorch: fused kernel disabled (%s=%s); using the pure-PyTorch path",
                    ENV_DISABLE, os.environ.get(ENV_DISABLE))
        return None
    cap = capability()
    name = _build_name(cap)
    directory = cache_dir() / name
    library = directory / f"{name}.so"
    if library.is_file():  # built before: load it directly (cpp_extension.load costs ~1 s)
        try:
            torch.ops.load_library(str(library))
            _state["library"] = library
            return torch.ops.regtorch_fused
        except OSError as error:
            logger.warning("regtorch: could not load the cached fused kernel %s (%s); "
                           "rebuilding", library, error)
    if _compiler() is None:
        logger.warning("regtorch: no C++ compiler found (set CXX or install g++ or clang++ for "
                       "the fused kernel); using the pure-PyTorch path")
        return None
    logger.warning("regtorch: building the fused penalty kernel for %s in %s (once; about "
                   "a minute)", cap, directory)
    started = time.perf_counter()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        from torch.utils import cpp_extension

        cpp_extension.load(name=name, sources=[str(source) for source in _SOURCES],
                           extra_cflags=build_flags(cap), build_directory=str(directory),
                           is_python_module=False, verbose=False)
    except Exception as error:  # a failed build must never break training: fall back
        message = str(error).splitlines()[0] if str(error) else ""
        logger.warning("regtorch: the fused kernel failed to build (%s: %s); using the "
                       "pure-PyTorch path", type(error).__name__, message)
        return None
    logger.info("regtorch: fused kernel built in %.0f s", time.perf_counter() - started)
    _state["library"] = library
    return torch.ops.regtorch_fused


def load_loss_module():
    """The kernel's library as a Python module (its ``loss_term``), or ``None`` when the kernel
    is not available (:func:`load_kernel`) or the module cannot be imported (said once)."""
    if "module" in _state:
        return _state["module"]
    if load_kernel() is None:  # (takes the lock itself)
        return None
    with _lock:
        if "module" not in _state:
            _state["module"] = _import_module()
    return _state["module"]


def _import_module():
    library = _state["library"]
    try:  # the library torch.ops loaded, imported once more as the extension module it also is
        spec = importlib.util.spec_from_file_location(library.stem, library)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except (ImportError, OSError) as error:
        logger.warning("regtorch: the fused kernel's loss-mode entry could not be imported "
                       "(%s); loss mode uses the dispatcher's operator", error)
        return None
    return module
