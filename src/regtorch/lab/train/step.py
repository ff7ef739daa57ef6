"""The vectorized step: per-member losses and gradients of stacked parameters in one pass.

A model built of known layers runs its members' forward written out for the stacked tensors
(:mod:`regtorch.lab.train.batched`: batched products, grouped convolutions, BatchNorm over the
members' channels), differentiated by plain autograd, eagerly; any other model runs
``vmap(grad_and_value(loss))`` over :func:`torch.func.functional_call` of one template model,
traced once, for the full batch, into a plain graph of batched ops (``make_fx``): the per-step
cost is then that of the ops, not of the transforms' Python work. Either way each member's
gradient is that of the *sum* of the member losses — never the mean, which would rescale SGD's lr
and Adam's ε — and nothing couples the members. Dropout draws a different mask per member.

**Buffers** (BatchNorm's running statistics and batch count) are stacked like the parameters,
``[K, ...]``: in train mode each member's batch statistics update its own running statistics in
place, exactly as the plain module's would; in eval mode each member normalizes with its own.
:func:`vectorizable` tries one small step first and says why when ``vmap`` cannot run a model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from regtorch.lab.train.batched import batched_forward
from regtorch.lab.train.build import stacked_loss

__all__ = ["StackedStep", "vectorizable"]

logger = logging.getLogger("regtorch.lab")

EVAL_BYTES = 2 << 20
"""An evaluation of stacked members runs in passes of as many rows as keep the widest stacked
activation within this many bytes, so that it stays in cache. Measured on ``digits-cnn``, 16
members, the 1797 images (CPU time, one thread): passes within 0.5 / 1 / 2 / 4 / 8 MiB took 94 /
74 / 68 / 82 / 92 ms, one pass over every row 134 ms (16 plain members: 170 ms)."""
MIN_EVAL_ROWS = 16
"""The fewest rows of one evaluation pass (fewer would cost more in per-op overhead)."""


class StackedStep:
    """Per-member losses and gradients of stacked parameters: ``vmap(grad_and_value(loss))``
    over ``functional_call``, traced for the full batch shape into a graph of batched ops (an
    epoch's last, smaller batch runs the same transform eagerly).

    Args:
        template: the model whose structure every member shares.
        names: the names of the stacked parameters, in the order of :meth:`bind`'s tensors.
        buffer_names: the names of the stacked buffers, likewise.
        loss: ``loss(outputs, targets)``, averaged over the batch.
        random: the model draws random numbers (dropout): a different draw per member.
        traces: traced steps by signature, shared between groups of the same shapes.
    """

    def __init__(self, template: nn.Module, names: list[str], loss: Callable,
                 *, random: bool, traces: dict[tuple, Callable],
                 buffer_names: Sequence[str] = ()) -> None:
        self.template = template
        # A trace holds only batched ops on its inputs: it serves any group of the same model
        # structure (the template's repr), loss, stacked shapes and batch shape.
        self.signature: tuple = (repr(template), loss, random)
        self.params: tuple[Tensor, ...] = ()
        self.buffers: tuple[Tensor, ...] = ()
        buffer_names = list(buffer_names)

        batched = batched_forward(template, names, buffer_names)
        self._batched = batched
        self.batched = batched is not None
        """The members' forward is written out for the model's layers (:mod:`.batched`), not
        run under vmap."""
        if batched is not None:
            member_losses = stacked_loss(loss)

            def batched_grad(params: tuple[Tensor, ...], buffers: tuple[Tensor, ...],
                             x: Tensor, y: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
                # Plain autograd on the stacked tensors: the gradient of the sum of the member
                # losses is each member's own gradient (nothing couples them).
                with torch.enable_grad():
                    leaves = tuple(p.detach().requires_grad_() for p in params)
                    losses = member_losses(batched(leaves, buffers, x, True), y)
                    grads = torch.autograd.grad(losses.sum(), leaves)
                # laid out as the parameters (a fused optimizer kernel reads both as flat)
                return tuple(g.contiguous() for g in grads), losses.detach()

            def batched_eval(params: tuple[Tensor, ...], buffers: tuple[Tensor, ...],
                             x: Tensor) -> Tensor:
                return batched(params, buffers, x, False)

            self.grad: Callable = batched_grad
            self.forward: Callable = batched_eval
        else:
            def member_output(params: tuple[Tensor, ...], buffers: tuple[Tensor, ...],
                              x: Tensor) -> Tensor:
                tensors = (dict(zip(names, params)), dict(zip(buffer_names, buffers)))
                return functional_call(template, tensors, (x,))

            def member_loss(params: tuple[Tensor, ...], buffers: tuple[Tensor, ...], x: Tensor,
                            y: Tensor) -> Tensor:
                return loss(member_output(params, buffers, x), y)

            randomness = "different" if random else "error"
            self.grad = vmap(grad_and_value(member_loss), in_dims=(0, 0, None, None),
                             randomness=randomness)
            self.forward = vmap(member_output, in_dims=(0, 0, None), randomness="different")
        self.row_bytes: int | None = None  # the widest activation per row (batched: measured)
        self.traced = traces
        self.batch_shape: torch.Size | None = None  # the first (full) batch's shape: traced
        self.step: Callable = self.grad

    def bind(self, tensors: Sequence[Tensor], buffers: Sequence[Tensor] = ()) -> None:
        """Step these stacked parameters (views: the optimizer's in-place updates show) and
        update these stacked buffers in place."""
        self.params = tuple(t.detach() for t in tensors)
        self.buffers = tuple(buffers)
        self.signature += (tuple((p.shape, p.dtype) for p in self.params + self.buffers),)

    @torch.no_grad()
    def __call__(self, x: Tensor, y: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
        """The gradients (one ``[K, ...]`` tensor per parameter) and the ``[K]`` losses."""
        if self.batched:
            # Eager: tracing the written-out step (0.08–0.17 s per group, 1.3–1.8 s for the
            # process's first) saves at most 0.06 ms a step (measured on the presets).
            return self.grad(self.params, self.buffers, x, y)
        if self.batch_shape is None:  # the first batch: trace it, or take another group's trace
            key = (*self.signature, x.shape, y.shape, x.dtype, y.dtype)
            if key not in self.traced:
                self.traced[key] = self._trace(x, y)
            self.step, self.batch_shape = self.traced[key], x.shape
        if x.shape != self.batch_shape:
            # An epoch's last, smaller batch: once per epoch, cheaper eagerly than a trace
            # (~0.2 s). Same ops, same results.
            return self.grad(self.params, self.buffers, x, y)
        return self.step(self.params, self.buffers, x, y)

    def _trace(self, x: Tensor, y: Tensor) -> Callable:
        # Looked up when a group first traces: a private torch module (tests replace it).
        from torch.fx.experimental.proxy_tensor import make_fx

        try:
            # Tracing runs the ops: it must neither consume dropout draws nor update the running
            # statistics (copies of the buffers are traced; the graph updates its inputs).
            with torch.random.fork_rng(devices=[]):
                buffers = tuple(b.clone() for b in self.buffers)
                graph = make_fx(self.grad)(self.params, buffers, x, y)
        except Exception as error:  # any tracing failure: run the same transform eagerly
            logger.debug("regtorch.lab: tracing failed (%s); running vmap eagerly", error)
            return self.grad
        _simplify(graph)
        return graph

    def eval_rows(self, x: Tensor) -> int:
        """How many rows one evaluation pass takes: as many as keep the widest stacked
        activation within :data:`EVAL_BYTES` (it stays in cache: on ``digits-cnn`` the 16
        members' first feature maps over every split are 59 MB, and each pass over them is
        then memory-bound), all of them under vmap."""
        if not self.batched:
            return x.shape[0]
        if self.row_bytes is None:
            self.row_bytes = self._batched.widest_row_bytes(self.params, self.buffers, x[:2])
        return max(MIN_EVAL_ROWS, EVAL_BYTES // max(1, self.row_bytes))

    @torch.no_grad()
    def evaluate(self, x: Tensor) -> Tensor:
        """Eval-mode outputs of every member, ``[K, n, outputs]``."""
        self.template.eval()
        try:
            rows = self.eval_rows(x)
            if rows >= x.shape[0]:
                return self.forward(self.params, self.buffers, x)
            return torch.cat([self.forward(self.params, self.buffers, part)
                              for part in x.split(rows)], dim=1)
        finally:
            self.template.train()


def _simplify(graph: torch.fx.GraphModule) -> None:
    """Drop what the traced step need not run each step: ``detach`` (the graph runs without
    autograd: it is its input) and ops whose results nothing uses (the transforms leave some).
    Ops that write into their inputs (running statistics) and random ones are kept."""
    detach = torch.ops.aten.detach.default
    for node in list(graph.graph.nodes):
        if node.op == "call_function" and node.target is detach:
            node.replace_all_uses_with(node.args[0])
            graph.graph.erase_node(node)
    graph.graph.eliminate_dead_code()
    graph.recompile()


def vectorizable(template: nn.Module, x: Tensor, y: Tensor, loss: Callable, *,
                 random: bool) -> str | None:
    """Why ``vmap`` cannot train ``template`` (one line), or None when it can.

    Tries one vectorized gradient and one eval-mode forward of two stacked copies of the template
    on the first two examples, on copies of its buffers and without consuming random numbers.
    """
    params = {name: torch.stack([p.detach()] * 2) for name, p in template.named_parameters()}
    buffers = {name: torch.stack([b.detach()] * 2) for name, b in template.named_buffers()}
    step = StackedStep(template, list(params), loss, random=random, traces={},
                       buffer_names=list(buffers))
    step.bind(list(params.values()), list(buffers.values()))
    try:
        with torch.random.fork_rng(devices=[]):
            step.grad(step.params, step.buffers, x[:2], y[:2])
            step.evaluate(x[:2])
    except Exception as error:  # whatever vmap refuses: the group trains member by member
        text = str(error).strip()
        return text.splitlines()[0] if text else type(error).__name__
    return None
