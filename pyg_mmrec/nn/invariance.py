r"""Cross-environment invariance penalties: :class:`IRMPenalty` (IRMv1) and
:class:`VRExPenalty` (risk extrapolation).

In I3-MRec each modality is an *environment*; a penalty that is small when the
per-environment risks agree pushes the representation towards user
preferences that hold whatever modality they are read from.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

Risk = Callable[[Tensor, Optional[Tensor]], Tensor]


def bpr_risk(logits: Tensor, target: Optional[Tensor] = None) -> Tensor:
    r"""BPR risk :math:`-\frac{1}{B}\sum \log\sigma(\hat{r}_{ui^+} - \hat{r}_{ui^-})`
    of score differences (``target`` unused)."""
    return -F.logsigmoid(logits).mean()


def _bce_risk(logits: Tensor, target: Optional[Tensor]) -> Tensor:
    if target is None:
        raise ValueError("IRMPenalty(risk='bce'): targets are required")
    return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))


def _mse_risk(logits: Tensor, target: Optional[Tensor]) -> Tensor:
    if target is None:
        raise ValueError("IRMPenalty(risk='mse'): targets are required")
    return F.mse_loss(logits, target.to(logits.dtype))


_RISKS = {"bpr": bpr_risk, "bce": _bce_risk, "mse": _mse_risk}


class IRMPenalty(torch.nn.Module):
    r"""The IRMv1 penalty from the `"Invariant Risk Minimization"
    <https://arxiv.org/abs/1907.02893>`_ paper, as used for modality
    environments by `I3-MRec <https://arxiv.org/abs/2508.04247>`_.

    For environments :math:`e \in \mathcal{E}` with predictions (logits)
    :math:`f^e` and risk :math:`R^e`, a dummy classifier :math:`w = 1.0`
    scales the logits and

    .. math::
        \mathcal{P}_{\mathrm{IRM}} = \frac{1}{|\mathcal{E}|} \sum_{e}
            \big\| \nabla_{w \,|\, w = 1.0} R^e(w \cdot f^e) \big\|^2,

    which is zero when the same predictor is simultaneously optimal (w.r.t. a
    rescaling) in every environment. The gradient is taken with
    ``create_graph=True`` so the penalty itself is differentiable.

    Args:
        risk (str or callable, optional): ``"bpr"`` (logits are score
            differences :math:`\hat{r}_{ui^+} - \hat{r}_{ui^-}`), ``"bce"``,
            ``"mse"``, or a callable ``risk(logits, target) -> scalar``.
            (default: :obj:`"bpr"`)
        unbiased (bool, optional): if :obj:`True`, use the unbiased estimator of
            the squared gradient, the product of the gradients on the two halves
            of each environment's batch. (default: :obj:`False`)

    Shapes:
        - **input:** a sequence of :math:`|\mathcal{E}|` logit tensors (any
          shape), optionally targets of the same shapes
        - **output:** scalar
    """

    def __init__(self, risk: Union[str, Risk] = "bpr", unbiased: bool = False) -> None:
        super().__init__()
        if isinstance(risk, str):
            if risk not in _RISKS:
                raise ValueError(f"IRMPenalty: risk must be one of {sorted(_RISKS)} or a "
                                 f"callable, got '{risk}'")
            self.risk_name, self.risk = risk, _RISKS[risk]
        elif callable(risk):
            self.risk_name, self.risk = getattr(risk, "__name__", "custom"), risk
        else:
            raise ValueError(f"IRMPenalty: risk must be a string or a callable, got {type(risk)}")
        self.unbiased = bool(unbiased)

    def reset_parameters(self) -> None:  # no parameters; kept for the PyG convention
        pass

    def _grad(self, logits: Tensor, target: Optional[Tensor], w: Tensor) -> Tensor:
        (g,) = torch.autograd.grad(self.risk(logits * w, target), w, create_graph=True)
        return g

    def forward(self, logits: Sequence[Tensor],
                targets: Optional[Sequence[Optional[Tensor]]] = None) -> Tensor:
        if isinstance(logits, Tensor) or len(logits) == 0:
            raise ValueError("IRMPenalty: expected a non-empty sequence of per-environment "
                             "logit tensors")
        if targets is None:
            targets = [None] * len(logits)
        if len(targets) != len(logits):
            raise ValueError(f"IRMPenalty: got {len(logits)} environments but "
                             f"{len(targets)} targets")
        penalty = logits[0].new_zeros(())
        for f, y in zip(logits, targets):
            w = torch.ones((), dtype=f.dtype, device=f.device, requires_grad=True)
            if self.unbiased:
                if f.numel() < 2:
                    raise ValueError("IRMPenalty(unbiased=True): each environment needs "
                                     "at least 2 samples")
                half = f.size(0) // 2
                ya, yb = (None, None) if y is None else (y[:half], y[half:2 * half])
                penalty = penalty + self._grad(f[:half], ya, w) * self._grad(
                    f[half:2 * half], yb, w)
            else:
                penalty = penalty + self._grad(f, y, w).pow(2)
        return penalty / len(logits)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(risk={self.risk_name}, unbiased={self.unbiased})"


class VRExPenalty(torch.nn.Module):
    r"""The V-REx penalty from the `"Out-of-Distribution Generalization via Risk
    Extrapolation (REx)" <https://arxiv.org/abs/2003.00688>`_ paper: the
    variance of the per-environment risks,

    .. math::
        \mathcal{P}_{\mathrm{V\text{-}REx}} = \operatorname{Var}\big(
            R^{e_1}, \dots, R^{e_{|\mathcal{E}|}} \big),

    zero exactly when all environments have equal risk. With fewer than two
    environments the penalty is zero.

    Args:
        unbiased (bool, optional): divide by :math:`|\mathcal{E}| - 1` (as
            ``torch.var`` does, and as the I3-MRec reference code does — its
            penalty weights are tuned for this scale) instead of
            :math:`|\mathcal{E}|`. (default: :obj:`True`)

    Shapes:
        - **input:** risks :math:`(|\mathcal{E}|,)` or a sequence of scalars
        - **output:** scalar
    """

    def __init__(self, unbiased: bool = True) -> None:
        super().__init__()
        self.unbiased = bool(unbiased)

    def reset_parameters(self) -> None:  # no parameters; kept for the PyG convention
        pass

    def forward(self, risks: Union[Tensor, Sequence[Tensor]]) -> Tensor:
        if not isinstance(risks, Tensor):
            if len(risks) == 0:
                raise ValueError("VRExPenalty: expected at least one risk")
            risks = torch.stack([torch.as_tensor(r).reshape(()) for r in risks])
        if risks.dim() != 1 or risks.numel() == 0:
            raise ValueError(f"VRExPenalty: expected risks of shape [num_envs], got "
                             f"{list(risks.shape)}")
        if risks.numel() < 2:
            return risks.sum() * 0.0  # keeps the graph (and the device/dtype)
        return risks.var(correction=1 if self.unbiased else 0)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(unbiased={self.unbiased})"


__all__ = ["IRMPenalty", "VRExPenalty", "bpr_risk"]
