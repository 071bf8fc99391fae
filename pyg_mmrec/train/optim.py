r"""Optimisers for sampled (mini-batch) training."""
from __future__ import annotations

import math
from typing import Iterable, List, Tuple

import torch
from torch import Tensor

__all__ = ["LazyAdam", "dense_adam", "dense_embedding_gradients", "has_sparse_parameters",
           "sparse_parameters"]


def dense_adam(params: Iterable[Tensor], **kwargs) -> torch.optim.Adam:
    """:class:`torch.optim.Adam` over dense parameters, with the fused kernel
    (``fused=True``: one pass over each tensor instead of ~10 elementwise
    kernels, which dominate a step for large embedding tables) whenever every
    parameter is a floating-point CPU or CUDA tensor; else the default
    implementation. Same update rule either way."""
    params = list(params)
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda")
                                 for p in params)
    return torch.optim.Adam(params, fused=fused or None, **kwargs)


def sparse_parameters(model: torch.nn.Module) -> List[torch.nn.Parameter]:
    """The weights of the :class:`torch.nn.Embedding` modules of ``model`` that
    produce sparse gradients (``sparse=True``), in module order (the same on
    every rank of a distributed job)."""
    return [m.weight for m in model.modules()
            if isinstance(m, torch.nn.Embedding) and m.sparse]


def dense_embedding_gradients(model: torch.nn.Module) -> int:
    """Switches every :class:`torch.nn.Embedding` of ``model`` with sparse
    gradients to dense ones (a dense optimiser then moves every row at every
    step, as in full-graph training); returns how many were switched. The
    forward pass is unchanged: only the gradient's layout differs."""
    switched = [m for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.sparse]
    for m in switched:
        m.sparse = False
    return len(switched)


def has_sparse_parameters(model: torch.nn.Module) -> bool:
    """Whether some :class:`torch.nn.Embedding` of ``model`` produces sparse
    gradients (``sparse=True``), i.e. it needs :class:`LazyAdam`."""
    return bool(sparse_parameters(model))


class LazyAdam(torch.optim.Optimizer):
    r"""`Adam <https://arxiv.org/abs/1412.6980>`_ that accepts both dense and
    sparse gradients, for embedding tables trained on sampled batches.

    Dense gradients get the usual Adam update (the formula of
    :class:`torch.optim.Adam`, ``amsgrad=False``). For a sparse gradient
    (``torch.nn.Embedding(sparse=True)``) only the rows present in the batch
    are updated: their moments decay and move, the other rows and their
    moments stay untouched ("lazy" Adam, as :class:`torch.optim.SparseAdam`
    and TensorFlow's LazyAdam), so a step costs :math:`O(\text{batch rows}
    \cdot d)` instead of :math:`O(\text{table size})`. Bias correction uses the
    parameter's step count:

    .. math::
        m \leftarrow \beta_1 m + (1-\beta_1) g, \quad
        v \leftarrow \beta_2 v + (1-\beta_2) g^2, \quad
        \theta \leftarrow \theta - \frac{\eta}{1-\beta_1^t}
        \frac{m}{\sqrt{v / (1-\beta_2^t)} + \epsilon}.

    ``weight_decay`` adds :math:`\lambda\theta` to the gradient (of the
    batch's rows only, for sparse gradients).

    Args:
        params: parameters or parameter groups.
        lr (float): :math:`\eta`. (default: ``1e-3``)
        betas ((float, float)): :math:`(\beta_1, \beta_2)`.
        eps (float): :math:`\epsilon`.
        weight_decay (float): :math:`\lambda`.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        if not lr > 0:
            raise ValueError(f"lr: expected > 0, got {lr}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas: expected values in [0, 1), got {betas}")
        if not eps >= 0:
            raise ValueError(f"eps: expected >= 0, got {eps}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay: expected >= 0, got {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = (group["lr"], group["betas"], group["eps"],
                                     group["weight_decay"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p,
                                                           memory_format=torch.preserve_format)
                # a Python int: the bias corrections are host numbers, and reading a
                # tensor counter would be a host read per step (older checkpoints
                # hold a CPU tensor: converted once)
                t = int(state["step"]) + 1
                state["step"] = t
                step_size = lr / (1 - b1 ** t)
                bc2_sqrt = math.sqrt(1 - b2 ** t)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                g = p.grad
                if g.is_sparse:
                    self._sparse_update(p, g, m, v, lr=step_size, b1=b1, b2=b2, eps=eps,
                                        wd=wd, bc2_sqrt=bc2_sqrt)
                    continue
                if wd:
                    g = g.add(p, alpha=wd)
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (v.sqrt() / bc2_sqrt).add_(eps)
                p.addcdiv_(m, denom, value=-step_size)
        return loss

    @staticmethod
    def _sparse_update(p: Tensor, g: Tensor, m: Tensor, v: Tensor, *, lr: float, b1: float,
                       b2: float, eps: float, wd: float, bc2_sqrt: float) -> None:
        # the gradient stays uncoalesced (repeated rows are summed by the update)
        from pyg_mmrec.ops.lazy_adam import lazy_adam_rows_
        lazy_adam_rows_(p, m, v, g._indices()[0], g._values(), step_size=lr, beta1=b1,
                        beta2=b2, eps=eps, weight_decay=wd, bc2_sqrt=bc2_sqrt)
