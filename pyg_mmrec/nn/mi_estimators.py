r"""Neural estimators of mutual information: :class:`CLUB` (upper bound) and
:class:`MINE` (lower bound).

Both follow the same two-optimiser protocol used by the models in this package:

* ``est.mi_upper_bound(x, y)`` / ``est.mi_lower_bound(x, y)`` return a scalar
  that goes into the *main* loss. Gradients flow into ``x`` and ``y`` only —
  the estimator's own parameters are used as constants there, so the main
  optimiser can never "cheat" by degrading the estimator to shrink the bound.
* ``est.learning_loss(x, y)`` trains the estimator itself; ``x`` and ``y`` are
  detached, so minimising it (with a separate optimiser, in alternation) never
  moves the representations.

Every method takes an optional ``weight`` (bool ``[N]``): the estimate on
the kept rows alone (the left-out rows are neither samples nor negatives),
so that a caller can drop rows (duplicates, missing modalities) without a
data-dependent shape, i.e. without waiting for the device.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch
from torch import Tensor
from torch.func import functional_call


def _reset_linear_layers(*nets: torch.nn.Module) -> None:
    for net in nets:
        for layer in net.modules():
            if isinstance(layer, torch.nn.Linear):
                layer.reset_parameters()


def _mlp(in_dim: int, hidden_dim: int, out_dim: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Linear(in_dim, hidden_dim),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden_dim, out_dim),
    )


def _check_pair(x: Tensor, y: Tensor, x_dim: int, y_dim: int, who: str) -> None:
    if x.dim() != 2 or x.size(-1) != x_dim:
        raise ValueError(f"{who}: expected x of shape [N, {x_dim}], got {list(x.shape)}")
    if y.dim() != 2 or y.size(-1) != y_dim:
        raise ValueError(f"{who}: expected y of shape [N, {y_dim}], got {list(y.shape)}")
    if x.size(0) != y.size(0):
        raise ValueError(f"{who}: x and y must have the same number of rows, "
                         f"got {x.size(0)} and {y.size(0)}")
    if x.size(0) < 2:
        raise ValueError(f"{who}: need at least 2 samples to contrast joint and "
                         f"marginal pairs, got {x.size(0)}")


def _weighted_mean(x: Tensor, weight: Optional[Tensor], dim: int = 0,
                   keepdim: bool = False) -> Tensor:
    """Mean of ``x`` over ``dim`` where ``weight`` (bool or 0/1 ``[N]``) is
    set; the plain mean without ``weight``."""
    if weight is None:
        return x.mean(dim, keepdim=keepdim)
    w = weight.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return (x * w).sum(dim, keepdim=keepdim) / w.sum().clamp(min=1)


def _permutation(n: int, weight: Optional[Tensor], device: torch.device) -> Tensor:
    r"""A uniformly random permutation of the rows, or with ``weight`` (bool
    ``[n]``) of the kept rows among themselves (the others map to left-out
    rows): the negatives of the kept rows alone, with a static shape."""
    if weight is None:
        return torch.randperm(n, device=device)
    keep = weight.to(torch.bool)
    keys = torch.rand(n, device=device) + (~keep).to(torch.float)  # kept rows first, shuffled
    shuffled = torch.argsort(keys)
    slots = torch.sort((~keep).to(torch.uint8), stable=True).indices  # kept positions first
    return torch.empty_like(shuffled).scatter_(0, slots, shuffled)


def _frozen(module: torch.nn.Module) -> Dict[str, Tensor]:
    """The module's parameters, detached: call it as a constant function."""
    return {k: v.detach() for k, v in module.named_parameters()}


class CLUB(torch.nn.Module):
    r"""The Contrastive Log-ratio Upper Bound of mutual information from the
    `"CLUB: A Contrastive Log-ratio Upper Bound of Mutual Information"
    <https://arxiv.org/abs/2006.12013>`_ paper.

    A variational Gaussian :math:`q_\theta(y \mid x) = \mathcal{N}(\mu_\theta(x),
    \operatorname{diag}\sigma^2_\theta(x))` is fitted by maximum likelihood
    (:meth:`learning_loss`), and

    .. math::
        \hat{I}_{\mathrm{vCLUB}}(x; y) = \frac{1}{N}\sum_{i=1}^N \Big[
            \log q_\theta(y_i \mid x_i) - \frac{1}{N}\sum_{j=1}^N
            \log q_\theta(y_j \mid x_i) \Big]

    upper-bounds :math:`I(x; y)` when :math:`q_\theta` is a good approximation
    of :math:`p(y \mid x)`. The inner mean over all :math:`N^2` pairs is computed
    in closed form in :math:`O(N d)` (the Gaussian log-density is quadratic in
    :math:`y`), so no :math:`N \times N \times d` tensor is ever built.

    Args:
        x_dim (int): dimension of :math:`x` (the conditioning variable).
        y_dim (int): dimension of :math:`y` (the predicted variable).
        hidden_dim (int, optional): hidden width of the mean and log-variance
            networks. (default: :obj:`64`)
        max_log_var (float, optional): the log-variance is softly bounded to
            :math:`[-\text{max\_log\_var}, \text{max\_log\_var}]` for numerical
            stability. (default: :obj:`5.0`)
        sample (bool, optional): if :obj:`True`, use the sampled variant
            (one random negative :math:`y_{\pi(i)}` per row, "CLUBSample")
            instead of the exact all-pairs mean. (default: :obj:`False`)

    Shapes:
        - **input:** :math:`x` :math:`(N, d_x)`, :math:`y` :math:`(N, d_y)`
        - **output:** scalar
    """

    def __init__(self, x_dim: int, y_dim: int, hidden_dim: int = 64,
                 max_log_var: float = 5.0, sample: bool = False) -> None:
        super().__init__()
        if x_dim <= 0 or y_dim <= 0 or hidden_dim <= 0:
            raise ValueError(f"CLUB: x_dim, y_dim and hidden_dim must be positive, got "
                             f"{x_dim}, {y_dim}, {hidden_dim}")
        if max_log_var <= 0:
            raise ValueError(f"CLUB: max_log_var must be positive, got {max_log_var}")
        self.x_dim, self.y_dim, self.hidden_dim = int(x_dim), int(y_dim), int(hidden_dim)
        self.max_log_var = float(max_log_var)
        self.sample = bool(sample)
        self.mu = _mlp(x_dim, hidden_dim, y_dim)
        self.log_var = _mlp(x_dim, hidden_dim, y_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _reset_linear_layers(self.mu, self.log_var)

    def _moments(self, x: Tensor, frozen: bool) -> tuple[Tensor, Tensor]:
        if frozen:
            mu = functional_call(self.mu, _frozen(self.mu), (x,))
            raw = functional_call(self.log_var, _frozen(self.log_var), (x,))
        else:
            mu, raw = self.mu(x), self.log_var(x)
        # soft bound: tanh keeps gradients alive, unlike a hard clamp
        log_var = self.max_log_var * torch.tanh(raw / self.max_log_var)
        return mu, log_var

    def log_likelihood(self, x: Tensor, y: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        r"""Mean :math:`\log q_\theta(y_i \mid x_i)` (with constants), a scalar."""
        _check_pair(x, y, self.x_dim, self.y_dim, "CLUB.log_likelihood")
        mu, log_var = self._moments(x, frozen=False)
        ll = -0.5 * ((y - mu).pow(2) / log_var.exp() + log_var + math.log(2 * math.pi))
        return _weighted_mean(ll.sum(-1), weight)

    def learning_loss(self, x: Tensor, y: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        r"""Negative log-likelihood of :math:`q_\theta(y \mid x)` on detached
        inputs; minimise it with the estimator's own optimiser."""
        return -self.log_likelihood(x.detach(), y.detach(), weight)

    def mi_upper_bound(self, x: Tensor, y: Tensor, through_estimator: bool = False,
                       weight: Optional[Tensor] = None) -> Tensor:
        r"""The CLUB estimate (scalar); differentiable in ``x`` and ``y`` only
        (also in the estimator's parameters with ``through_estimator=True``)."""
        _check_pair(x, y, self.x_dim, self.y_dim, "CLUB.mi_upper_bound")
        mu, log_var = self._moments(x, frozen=not through_estimator)
        inv_var = (-log_var).exp()
        # log q(y_i|x_i) up to terms that cancel in the difference
        positive = -0.5 * ((y - mu).pow(2) * inv_var).sum(-1)
        if self.sample:
            perm = _permutation(y.size(0), weight, y.device)
            negative = -0.5 * ((y[perm] - mu).pow(2) * inv_var).sum(-1)
        else:
            # mean_j (y_j - mu_i)^2 = E[y^2] - 2 mu_i E[y] + mu_i^2   (per dimension)
            y_mean = _weighted_mean(y, weight, keepdim=True)
            y_sq_mean = _weighted_mean(y.pow(2), weight, keepdim=True)
            sq = y_sq_mean - 2 * mu * y_mean + mu.pow(2)
            negative = -0.5 * (sq * inv_var).sum(-1)
        return _weighted_mean(positive - negative, weight)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Alias of :meth:`mi_upper_bound`."""
        return self.mi_upper_bound(x, y)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.x_dim}, {self.y_dim}, "
                f"hidden_dim={self.hidden_dim}, sample={self.sample})")


class MINE(torch.nn.Module):
    r"""The Mutual Information Neural Estimator from the `"Mutual Information
    Neural Estimation" <https://arxiv.org/abs/1801.04062>`_ paper.

    A critic :math:`T_\phi(x, y)` gives the Donsker–Varadhan lower bound

    .. math::
        \hat{I}_{\mathrm{DV}}(x; y) = \frac{1}{N}\sum_i T_\phi(x_i, y_i)
            - \log \frac{1}{N}\sum_i e^{T_\phi(x_i, y_{\pi(i)})},

    where :math:`\pi` is a random permutation (samples of the product of
    marginals). :meth:`learning_loss` maximises it w.r.t. :math:`\phi`, with
    MINE's moving-average correction of the biased gradient of the log term.

    Args:
        x_dim (int): dimension of :math:`x`.
        y_dim (int): dimension of :math:`y`.
        hidden_dim (int, optional): hidden width of the critic. (default: :obj:`64`)
        ema_decay (float, optional): decay of the running mean of
            :math:`e^{T}` used for the bias-corrected gradient; :obj:`0` disables
            the correction. (default: :obj:`0.99`)

    Shapes:
        - **input:** :math:`x` :math:`(N, d_x)`, :math:`y` :math:`(N, d_y)`
        - **output:** scalar
    """

    def __init__(self, x_dim: int, y_dim: int, hidden_dim: int = 64,
                 ema_decay: float = 0.99) -> None:
        super().__init__()
        if x_dim <= 0 or y_dim <= 0 or hidden_dim <= 0:
            raise ValueError(f"MINE: x_dim, y_dim and hidden_dim must be positive, got "
                             f"{x_dim}, {y_dim}, {hidden_dim}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"MINE: ema_decay must be in [0, 1), got {ema_decay}")
        self.x_dim, self.y_dim, self.hidden_dim = int(x_dim), int(y_dim), int(hidden_dim)
        self.ema_decay = float(ema_decay)
        self.critic = _mlp(x_dim + y_dim, hidden_dim, 1)
        self.register_buffer("ema_exp", torch.zeros(()))
        self.register_buffer("ema_ready", torch.zeros((), dtype=torch.bool))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in self.critic:
            if isinstance(layer, torch.nn.Linear):
                layer.reset_parameters()
        self.ema_exp.zero_()
        self.ema_ready.fill_(False)

    def _scores(self, x: Tensor, y: Tensor, frozen: bool,
                weight: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        perm = _permutation(y.size(0), weight, y.device)
        xy = torch.cat([torch.cat([x, y], -1), torch.cat([x, y[perm]], -1)], 0)
        if frozen:
            t = functional_call(self.critic, _frozen(self.critic), (xy,)).squeeze(-1)
        else:
            t = self.critic(xy).squeeze(-1)
        return t[: x.size(0)], t[x.size(0):]

    @staticmethod
    def _dv(t_joint: Tensor, t_marg: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        if weight is None:
            log_mean_exp = torch.logsumexp(t_marg, 0) - math.log(t_marg.numel())
        else:
            # (the lowest finite value, not -inf: with no kept row the gradient
            # of the log-sum-exp stays finite, and the caller weighs it 0)
            keep = weight.to(torch.bool)
            low = torch.finfo(t_marg.dtype).min
            log_mean_exp = (torch.logsumexp(t_marg.masked_fill(~keep, low), 0)
                            - keep.sum().clamp(min=1).to(t_marg.dtype).log())
        return _weighted_mean(t_joint, weight) - log_mean_exp

    def mi_lower_bound(self, x: Tensor, y: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        r"""The Donsker–Varadhan estimate (scalar); differentiable in ``x`` and
        ``y`` only (the critic is used as a constant)."""
        _check_pair(x, y, self.x_dim, self.y_dim, "MINE.mi_lower_bound")
        return self._dv(*self._scores(x, y, frozen=True, weight=weight), weight)

    def mi_estimate(self, x: Tensor, y: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        """Alias of :meth:`mi_lower_bound`."""
        return self.mi_lower_bound(x, y, weight)

    def learning_loss(self, x: Tensor, y: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        r"""Loss of the critic on detached inputs (minimise it): the negative DV
        bound, whose gradient uses a running mean of :math:`e^{T}` in the
        denominator (the bias correction of MINE) when ``ema_decay > 0``."""
        _check_pair(x, y, self.x_dim, self.y_dim, "MINE.learning_loss")
        t_joint, t_marg = self._scores(x.detach(), y.detach(), frozen=False, weight=weight)
        if self.ema_decay == 0.0 or not self.training:
            return -self._dv(t_joint, t_marg, weight)
        # stabilised batch mean of exp(T) (shift by the max, undo afterwards)
        keep = None if weight is None else weight.to(torch.bool)
        t_kept = t_marg.detach() if keep is None else \
            torch.where(keep, t_marg.detach(), t_marg.detach().min())
        shift = t_kept.max()
        batch_exp = _weighted_mean((t_marg - shift).exp(), keep)
        with torch.no_grad():
            cur = batch_exp.detach() * shift.exp()
            # (on the device: a branch on ema_ready would wait for it)
            self.ema_exp.copy_(torch.where(
                self.ema_ready, self.ema_exp * self.ema_decay + (1 - self.ema_decay) * cur, cur))
            self.ema_ready.fill_(True)
            denom = self.ema_exp.clamp_min(1e-12)
        # value: -DV bound; gradient: -(∇E[T_joint] - ∇E[e^T]/ema)
        surrogate = batch_exp * (shift - denom.log()).exp()
        grad_part = -(_weighted_mean(t_joint, keep) - surrogate)
        value = -self._dv(t_joint, t_marg, weight)
        # straight-through: report the DV value, back-propagate the corrected gradient
        return grad_part + (value - grad_part).detach()

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Alias of :meth:`mi_lower_bound`."""
        return self.mi_lower_bound(x, y)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.x_dim}, {self.y_dim}, "
                f"hidden_dim={self.hidden_dim})")


class SigmoidCLUBSample(torch.nn.Module):
    r"""The sampled CLUB estimator in the form the I3-MRec reference code uses
    it (the estimator of `"CLUB: A Contrastive Log-ratio Upper Bound of Mutual
    Information" <https://arxiv.org/abs/2006.12013>`_ with one sampled
    negative), kept to reproduce that code's numbers; :class:`CLUB` is the
    exact, better-conditioned default.

    Both inputs first pass through a sigmoid, :math:`\tilde{x} = \sigma(x)`,
    :math:`\tilde{y} = \sigma(y)`; the mean and the log-variance come from
    two one-hidden-layer ReLU networks, the log-variance squashed by
    :math:`\tanh` to :math:`(-1, 1)`. With a random permutation :math:`\pi`
    of the rows,

    .. math::
        \hat{I}(x; y) = \frac{1}{2N}\sum_{i=1}^N \Big[
            \lVert \mu_i - \tilde{y}_{\pi(i)} \rVert^2_{\sigma_i^{-2}}
            - \lVert \mu_i - \tilde{y}_i \rVert^2_{\sigma_i^{-2}} \Big]

    (weighted squared norms, :math:`\lVert v \rVert^2_{w} = \sum_k w_k v_k^2`),
    and the fit minimises :math:`-\frac{1}{N}\sum_i \sum_k \big[-(\mu_{ik} -
    \tilde{y}_{ik})^2 / \sigma^2_{ik} - \log \sigma^2_{ik}\big]` (twice a
    Gaussian negative log-likelihood, without its constant).

    Args:
        x_dim (int): dimension of :math:`x`.
        y_dim (int): dimension of :math:`y`.
        hidden_dim (int, optional): hidden width of both networks (the
            reference: 32). (default: :obj:`32`)

    Shapes:
        - **input:** :math:`x` :math:`(N, d_x)`, :math:`y` :math:`(N, d_y)`
        - **output:** scalar
    """

    max_log_var = 1.0  # the tanh squashing: log-variance in (-1, 1)

    def __init__(self, x_dim: int, y_dim: int, hidden_dim: int = 32) -> None:
        super().__init__()
        if x_dim <= 0 or y_dim <= 0 or hidden_dim <= 0:
            raise ValueError(f"SigmoidCLUBSample: x_dim, y_dim and hidden_dim must be positive, "
                             f"got {x_dim}, {y_dim}, {hidden_dim}")
        self.x_dim, self.y_dim, self.hidden_dim = int(x_dim), int(y_dim), int(hidden_dim)
        self.mu = _mlp(x_dim, hidden_dim, y_dim)
        self.log_var = torch.nn.Sequential(*_mlp(x_dim, hidden_dim, y_dim), torch.nn.Tanh())
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _reset_linear_layers(self.mu, self.log_var)

    def moments(self, x: Tensor, frozen: bool = False) -> tuple[Tensor, Tensor]:
        r"""``(mu, log_var)`` of :math:`q(\cdot \mid \sigma(x))`; ``x`` is the
        raw input (the sigmoid is applied here)."""
        xs = torch.sigmoid(x)
        if frozen:
            return (functional_call(self.mu, _frozen(self.mu), (xs,)),
                    functional_call(self.log_var, _frozen(self.log_var), (xs,)))
        return self.mu(xs), self.log_var(xs)

    def learning_loss(self, x: Tensor, y: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        r"""The fit's loss on detached inputs (see the class description)."""
        _check_pair(x, y, self.x_dim, self.y_dim, "SigmoidCLUBSample.learning_loss")
        mu, log_var = self.moments(x.detach())
        ys = torch.sigmoid(y.detach())
        return _weighted_mean(((mu - ys).pow(2) / log_var.exp() + log_var).sum(-1), weight)

    def mi_upper_bound(self, x: Tensor, y: Tensor, through_estimator: bool = False,
                       weight: Optional[Tensor] = None) -> Tensor:
        r"""The sampled bound (scalar); differentiable in ``x`` and ``y``, and
        in the estimator's parameters with ``through_estimator=True``."""
        _check_pair(x, y, self.x_dim, self.y_dim, "SigmoidCLUBSample.mi_upper_bound")
        mu, log_var = self.moments(x, frozen=not through_estimator)
        ys = torch.sigmoid(y)
        inv_var = (-log_var).exp()
        perm = _permutation(ys.size(0), weight, ys.device)
        positive = -((mu - ys).pow(2) * inv_var).sum(-1)
        negative = -((mu - ys[perm]).pow(2) * inv_var).sum(-1)
        return 0.5 * _weighted_mean(positive - negative, weight)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Alias of :meth:`mi_upper_bound`."""
        return self.mi_upper_bound(x, y)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.x_dim}, {self.y_dim}, "
                f"hidden_dim={self.hidden_dim})")


__all__ = ["CLUB", "MINE", "SigmoidCLUBSample"]
