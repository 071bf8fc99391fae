r"""Variational information-bottleneck encoder used by :class:`~pyg_mmrec.models.MRdIB`."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.nn import Linear, Module


def _check_hidden_and_bounds(hidden_channels: Optional[int],
                             logvar_bounds: Tuple[float, float]) -> Tuple[float, float]:
    if hidden_channels is not None and (not isinstance(hidden_channels, int)
                                        or hidden_channels <= 0):
        raise ValueError(f"hidden_channels: expected a positive int or None, "
                         f"got {hidden_channels!r}")
    lo, hi = logvar_bounds
    if not lo < hi:
        raise ValueError(f"logvar_bounds: expected (low, high) with low < high, "
                         f"got {logvar_bounds}")
    return lo, hi


def _reparameterize(mu: Tensor, logvar: Tensor, sample: bool,
                    generator: Optional[torch.Generator]) -> Tuple[Tensor, Tensor, Tensor]:
    """``(z, mu, logvar)``: ``z = mu + eps * sigma`` when sampling, else ``mu``."""
    if not sample:
        return mu, mu, logvar
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + eps * torch.exp(0.5 * logvar), mu, logvar


class VariationalBottleneck(Module):
    r"""Gaussian variational encoder :math:`q_\phi(z \mid h) = \mathcal{N}(\mu(h),
    \operatorname{diag}\sigma^2(h))` of the *Multimodal Information Bottleneck*
    in `"Multimodal Representation-disentangled Information Bottleneck for
    Multimodal Recommendation" <https://arxiv.org/abs/2509.20225>`_ (MRdIB),
    following the deep variational IB of `Alemi et al. (2017)
    <https://arxiv.org/abs/1612.00410>`_.

    .. math::
        \mu = W_\mu\, g(h) + b_\mu, \qquad
        \log\sigma^2 = W_\sigma\, g(h) + b_\sigma, \qquad
        z = \mu + \sigma \odot \epsilon,\ \epsilon \sim \mathcal{N}(0, I)

    where :math:`g` is the identity (``hidden_channels=None``) or a one-layer
    MLP with a tanh. The compression term is the closed-form

    .. math::
        \mathrm{KL}\big(q(z \mid h)\,\|\,\mathcal{N}(0, I)\big) =
        \tfrac{1}{2} \sum_{k} \big(\mu_k^2 + \sigma_k^2 - \log\sigma_k^2 - 1\big),

    averaged over the (present) rows. Codes are sampled with the
    reparameterisation trick in training and equal :math:`\mu` at inference.

    Args:
        in_channels (int): size of the input representation :math:`h`.
        out_channels (int): size of the code :math:`z`.
        hidden_channels (int, optional): width of the optional hidden layer.
        logvar_bounds (tuple, optional): clamp of :math:`\log\sigma^2` for
            numerical safety (:obj:`(-10., 10.)`).

    Shapes:
        - **input:** :math:`h` of shape :math:`(N, F_{in})`, optional
          ``mask`` :math:`(N,)` bool.
        - **output:** :math:`(z, \mu, \log\sigma^2)`, each :math:`(N, F_{out})`.
    """

    def __init__(self, in_channels: int, out_channels: int,
                 hidden_channels: Optional[int] = None,
                 logvar_bounds: Tuple[float, float] = (-10.0, 10.0)) -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        lo, hi = _check_hidden_and_bounds(hidden_channels, logvar_bounds)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.hidden_channels = hidden_channels
        self.logvar_bounds = (float(lo), float(hi))
        self.hidden = Linear(in_channels, hidden_channels) if hidden_channels else None
        d = hidden_channels or in_channels
        self.lin_mu = Linear(d, out_channels)
        self.lin_logvar = Linear(d, out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.hidden is not None:
            self.hidden.reset_parameters()
        self.lin_mu.reset_parameters()
        self.lin_logvar.reset_parameters()
        # Start close to a deterministic encoder (sigma ~ 0.05): early noise
        # would otherwise swamp the ranking signal of small representations.
        torch.nn.init.zeros_(self.lin_logvar.weight)
        torch.nn.init.constant_(self.lin_logvar.bias, -6.0)

    def encode(self, h: Tensor) -> Tuple[Tensor, Tensor]:
        r"""Return :math:`(\mu, \log\sigma^2)` for the rows of ``h``."""
        if h.dim() != 2 or h.size(-1) != self.in_channels:
            raise ValueError(f"h: expected shape [N, {self.in_channels}], got {list(h.shape)}")
        x = torch.tanh(self.hidden(h)) if self.hidden is not None else h
        logvar = self.lin_logvar(x).clamp(*self.logvar_bounds)
        return self.lin_mu(x), logvar

    def forward(self, h: Tensor, sample: Optional[bool] = None,
                generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor, Tensor]:
        r"""Encode ``h``; ``sample`` defaults to :obj:`self.training`.
        ``generator`` lets a caller draw :math:`\epsilon` from a private RNG
        stream (so that the plug-in never perturbs a backbone's randomness)."""
        mu, logvar = self.encode(h)
        return _reparameterize(mu, logvar, self.training if sample is None else sample,
                               generator)

    @staticmethod
    def kl_divergence(mu: Tensor, logvar: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        r"""Closed-form :math:`\mathrm{KL}(\mathcal{N}(\mu,\sigma^2)\,\|\,\mathcal{N}(0,I))`,
        summed over code dimensions and averaged over rows (rows with
        ``mask == False`` are ignored; 0 when no row is present)."""
        if mu.shape != logvar.shape:
            raise ValueError(f"mu/logvar: shapes differ, {list(mu.shape)} vs {list(logvar.shape)}")
        kl = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0).sum(-1)
        if mask is None:
            return kl.mean() if kl.numel() else kl.sum()
        if mask.dtype != torch.bool or mask.shape != kl.shape:
            raise ValueError(f"mask: expected a bool tensor of shape {list(kl.shape)}, "
                             f"got {mask.dtype} {list(mask.shape)}")
        n = mask.sum()
        return (kl * mask).sum() / n.clamp(min=1)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
                f"hidden_channels={self.hidden_channels})")


class StackedVariationalBottleneck(Module):
    r"""Several independent :class:`VariationalBottleneck` encoders, one per
    input :math:`h_m` (e.g. one per modality in MRdIB), evaluated as *one*
    batched matrix product:

    .. math::
        [\mu_m \,\Vert\, \log\sigma_m^2] = W_m\, g_m(h_m) + b_m, \qquad
        z_m = \mu_m + \sigma_m \odot \epsilon_m, \qquad m = 1, \dots, M.

    Mathematically identical to :math:`M` separate encoders; stacking them
    turns :math:`4M` small kernels (and as many optimiser updates) into one
    or two, which is what dominates a plug-in's cost on CPU. Inputs of
    different widths are zero-padded to the widest one (the padded weight
    rows start at 0 and receive zero gradients, so they stay 0).

    Args:
        in_channels (list of int): width :math:`d_m` of every input.
        out_channels (int): size :math:`k` of every code.
        hidden_channels (int, optional): width of an optional per-input hidden
            layer with a tanh (as in :class:`VariationalBottleneck`).
        logvar_bounds (tuple, optional): clamp of :math:`\log\sigma^2`.

    Shapes:
        - **input:** a list of :math:`M` tensors :math:`(N, d_m)`.
        - **output:** :math:`(z, \mu, \log\sigma^2)`, each :math:`(N, M, k)`.
    """

    def __init__(self, in_channels, out_channels: int, hidden_channels: Optional[int] = None,
                 logvar_bounds: Tuple[float, float] = (-10.0, 10.0)) -> None:
        super().__init__()
        in_channels = list(in_channels)
        if not in_channels or any(not isinstance(d, int) or d <= 0 for d in in_channels):
            raise ValueError(f"in_channels: expected a non-empty list of positive ints, got {in_channels!r}")
        if not isinstance(out_channels, int) or out_channels <= 0:
            raise ValueError(f"out_channels: expected a positive int, got {out_channels!r}")
        lo, hi = _check_hidden_and_bounds(hidden_channels, logvar_bounds)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.hidden_channels = hidden_channels
        self.logvar_bounds = (float(lo), float(hi))
        M, d = len(in_channels), max(in_channels)
        if hidden_channels:
            self.weight_hidden = torch.nn.Parameter(torch.empty(M, d, hidden_channels))
            self.bias_hidden = torch.nn.Parameter(torch.empty(M, hidden_channels))
            d = hidden_channels
        else:
            self.register_parameter("weight_hidden", None)
            self.register_parameter("bias_hidden", None)
        # [W_mu | W_logvar] of every input, transposed for x @ W
        self.weight = torch.nn.Parameter(torch.empty(M, d, 2 * out_channels))
        self.bias = torch.nn.Parameter(torch.empty(M, 2 * out_channels))
        self.reset_parameters()

    @staticmethod
    def _linear_init(w: Tensor, b: Tensor, fan_ins) -> None:
        # torch.nn.Linear's default init per input, on the first fan_in rows
        with torch.no_grad():
            w.zero_()
            for m, fan_in in enumerate(fan_ins):
                bound = 1.0 / fan_in ** 0.5
                w[m, :fan_in].uniform_(-bound, bound)
                b[m].uniform_(-bound, bound)

    def reset_parameters(self) -> None:
        k = self.out_channels
        if self.weight_hidden is not None:
            self._linear_init(self.weight_hidden, self.bias_hidden, self.in_channels)
            self._linear_init(self.weight, self.bias, [self.hidden_channels] * len(self.in_channels))
        else:
            self._linear_init(self.weight, self.bias, self.in_channels)
        with torch.no_grad():  # start near-deterministic (sigma ~ 0.05), see VariationalBottleneck
            self.weight[..., k:].zero_()
            self.bias[:, k:].fill_(-6.0)

    def encode(self, hs) -> Tuple[Tensor, Tensor]:
        r"""Return :math:`(\mu, \log\sigma^2)`, each ``[N, M, k]``."""
        if len(hs) != len(self.in_channels):
            raise ValueError(f"hs: expected {len(self.in_channels)} inputs, got {len(hs)}")
        d = max(self.in_channels)
        for m, (h, dm) in enumerate(zip(hs, self.in_channels)):
            if h.dim() != 2 or h.size(-1) != dm or h.size(0) != hs[0].size(0):
                raise ValueError(f"hs[{m}]: expected shape [{hs[0].size(0)}, {dm}], got {list(h.shape)}")
        H = torch.stack([h if h.size(-1) == d else torch.nn.functional.pad(h, (0, d - h.size(-1)))
                         for h in hs], 0)                                          # [M, N, d]
        if self.weight_hidden is not None:
            H = torch.tanh(torch.baddbmm(self.bias_hidden.unsqueeze(1), H, self.weight_hidden))
        y = torch.baddbmm(self.bias.unsqueeze(1), H, self.weight).transpose(0, 1)  # [N, M, 2k]
        k = self.out_channels
        return y[..., :k], y[..., k:].clamp(*self.logvar_bounds)

    def forward(self, hs, sample: Optional[bool] = None,
                generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor, Tensor]:
        r"""Encode the inputs ``hs``; ``sample`` defaults to :obj:`self.training`;
        ``generator``: a private RNG stream for :math:`\epsilon`."""
        mu, logvar = self.encode(hs)
        return _reparameterize(mu, logvar, self.training if sample is None else sample,
                               generator)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
                f"hidden_channels={self.hidden_channels})")
