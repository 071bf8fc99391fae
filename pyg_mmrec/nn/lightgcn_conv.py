from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor

from pyg_mmrec.nn.adjacency import CSRAdjacency, csr_spmm, to_csr

__all__ = ["LightGCNConv"]

_COMBINE = ("mean", "sum", "last", "stack")


class LightGCNConv(torch.nn.Module):
    r"""User–item propagation of `"LightGCN: Simplifying and Powering Graph
    Convolution Network for Recommendation" <https://arxiv.org/abs/2002.02126>`_
    with optional modality-specific *item masking*, as in the per-modality
    user–item graphs of `MMGCN <https://doi.org/10.1145/3343031.3351034>`_ and
    `I³-MRec <https://arxiv.org/abs/2508.04247>`_.

    Users and items share one node set (users ``0..U-1``, items
    ``U..U+I-1``); the bipartite interaction matrix :math:`\mathbf{R}` gives

    .. math::
        \mathbf{A} = \begin{pmatrix} \mathbf{0} & \mathbf{R} \\
        \mathbf{R}^{\top} & \mathbf{0} \end{pmatrix}, \qquad
        \hat{\mathbf{A}} = \mathbf{D}^{-1/2} \mathbf{A} \mathbf{D}^{-1/2},
        \qquad \mathbf{E}^{(l+1)} = \hat{\mathbf{A}}\, \mathbf{E}^{(l)},

    built once from the training pairs (duplicates count once). With an item
    presence mask :math:`m` (users are always present), items whose modality
    is missing send no message:

    .. math::
        \mathbf{e}^{(l+1)}_u = c_u \sum_{i \in \mathcal{N}(u)}
        \hat{A}_{ui}\, m_i\, \mathbf{e}^{(l)}_i, \qquad
        c_u = \begin{cases} \dfrac{\sum_{i} \hat{A}_{ui}}{\sum_{i} \hat{A}_{ui}
        m_i} & \texttt{renormalize=True} \\ 1 & \texttt{renormalize=False}
        \end{cases}

    ``renormalize=True`` rescales each user's present weights to the user's
    full weight, so a user keeps the magnitude of plain LightGCN and the
    result equals it exactly when nothing is missing; a user whose items are
    all missing receives :math:`\mathbf{0}`. ``renormalize=False`` just drops
    the masked terms of :math:`\hat{\mathbf{A}}` (shrinking users with many
    missing items). Items always receive from their users, which is how a
    missing item obtains a representation. The product runs on
    :func:`pyg_mmrec.ops.masked_spmm`.

    Args:
        num_users (int): :math:`U`.
        num_items (int): :math:`I`.
        edge_index (Tensor): training interactions :math:`[2, E]` as
            ``(user, item)`` pairs, ids starting from 0 in both rows.
        num_layers (int): default :math:`L` of :meth:`propagate_layers`.
            (default: ``1``)
        renormalize (bool): see above. (default: ``True``)

    Shapes:
        - **input:** :math:`(U + I, F)` or ``((U, F), (I, F))``,
          item mask :math:`(I)` bool *(optional)*
        - **output:** same structure as the input
    """

    def __init__(self, num_users: int, num_items: int, edge_index: Tensor,
                 num_layers: int = 1, renormalize: bool = True) -> None:
        super().__init__()
        if int(num_users) != num_users or num_users < 1:
            raise ValueError(f"num_users: expected a positive int, got {num_users!r}")
        if int(num_items) != num_items or num_items < 1:
            raise ValueError(f"num_items: expected a positive int, got {num_items!r}")
        if int(num_layers) != num_layers or num_layers < 0:
            raise ValueError(f"num_layers: expected an int >= 0, got {num_layers!r}")
        self.num_users = int(num_users)
        self.num_items = int(num_items)
        self.num_layers = int(num_layers)
        self.renormalize = bool(renormalize)
        self.set_graph(edge_index)

    @property
    def num_nodes(self) -> int:
        return self.num_users + self.num_items

    # ------------------------------------------------------------------ graph
    @torch.no_grad()
    def set_graph(self, edge_index: Tensor) -> None:
        r"""(Re)builds :math:`\hat{\mathbf{A}}` from ``(user, item)`` pairs,
        e.g. after an edge-dropout step. Stored as non-persistent buffers, so
        it moves with ``.to(device)`` but stays out of checkpoints."""
        if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or \
                edge_index.size(0) != 2:
            got = list(edge_index.shape) if isinstance(edge_index, Tensor) else \
                type(edge_index).__name__
            raise ValueError(f"edge_index: expected a (user, item) tensor of shape [2, E], "
                             f"got {got}")
        if edge_index.is_floating_point() or edge_index.dtype == torch.bool:
            raise ValueError(f"edge_index: expected an integer tensor, got {edge_index.dtype}")
        U, I = self.num_users, self.num_items
        user, item = edge_index[0].long(), edge_index[1].long()
        if user.numel() > 0:
            if int(user.min()) < 0 or int(user.max()) >= U:
                raise ValueError(f"edge_index[0]: user ids must lie in [0, {U}), got "
                                 f"[{int(user.min())}, {int(user.max())}]")
            if int(item.min()) < 0 or int(item.max()) >= I:
                raise ValueError(f"edge_index[1]: item ids must lie in [0, {I}), got "
                                 f"[{int(item.min())}, {int(item.max())}]")
        # A is binary: a repeated interaction is still one edge.
        key = torch.unique(user * I + item)
        user, item = key // I, key % I
        deg = torch.zeros(U + I, dtype=torch.float, device=key.device)
        deg.index_add_(0, user, torch.ones_like(user, dtype=torch.float))
        deg.index_add_(0, item + U, torch.ones_like(item, dtype=torch.float))
        w = (deg[user] * deg[item + U]).rsqrt()
        # Both directions over the joint node set; to_csr sorts by target.
        src = torch.cat([item + U, user])
        dst = torch.cat([user, item + U])
        adj = to_csr(torch.stack([src, dst]), (U + I, U + I), torch.cat([w, w]))
        self._adj_validated = adj.validated  # the buffers below are that checked graph
        colptr, row_t, perm = adj.csc()
        row_sum = torch.zeros(U + I, device=key.device).index_add_(0, adj.row(), adj.value)
        for name, t in (("rowptr", adj.rowptr), ("col", adj.col), ("value", adj.value),
                        ("colptr", colptr), ("row_t", row_t), ("perm", perm),
                        ("row_sum", row_sum)):
            self.register_buffer(name, t, persistent=False)

    @property
    def adj(self) -> CSRAdjacency:
        r""":math:`\hat{\mathbf{A}}` as a :class:`CSRAdjacency` over the
        :math:`U + I` nodes (transposed layout included)."""
        adj = CSRAdjacency(self.rowptr, self.col, self.value, (self.num_nodes, self.num_nodes),
                           validated=self._adj_validated)
        adj._shared["csc"] = (self.colptr, self.row_t, self.perm)
        return adj

    # ---------------------------------------------------------------- forward
    def _split_input(self, x) -> Tuple[Tensor, bool]:
        if isinstance(x, (tuple, list)):
            if len(x) != 2:
                raise ValueError("x: expected a tensor [U+I, F] or a pair (x_user, x_item)")
            xu, xi = x
            if xu.dim() != 2 or xi.dim() != 2 or xu.size(0) != self.num_users or \
                    xi.size(0) != self.num_items or xu.size(1) != xi.size(1):
                raise ValueError(f"x: expected (x_user [{self.num_users}, F], x_item "
                                 f"[{self.num_items}, F]), got {list(xu.shape)}, "
                                 f"{list(xi.shape)}")
            return torch.cat([xu, xi], dim=0), True
        if not isinstance(x, Tensor) or x.dim() != 2 or x.size(0) != self.num_nodes:
            raise ValueError(f"x: expected shape [num_users + num_items = {self.num_nodes}, F], "
                             f"got {list(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"x: expected a floating point tensor, got {x.dtype}")
        return x, False

    def _node_mask(self, item_mask: Optional[Tensor]) -> Optional[Tensor]:
        if item_mask is None:
            return None
        if not isinstance(item_mask, Tensor) or item_mask.dtype != torch.bool:
            raise ValueError(f"item_mask: expected a bool tensor (True = modality present), got "
                             f"{getattr(item_mask, 'dtype', type(item_mask).__name__)}")
        if item_mask.shape != (self.num_items,):
            raise ValueError(f"item_mask: expected shape [{self.num_items}], got "
                             f"{list(item_mask.shape)}")
        users = torch.ones(self.num_users, dtype=torch.bool, device=item_mask.device)
        return torch.cat([users, item_mask])

    def _step(self, x: Tensor, mask: Optional[Tensor], adj: CSRAdjacency) -> Tensor:
        out, weight_sum = csr_spmm(adj, x, mask, reduce="sum")
        if mask is not None and self.renormalize:
            # The weights are constants: keep autograd from back-propagating
            # into weight_sum (a wasted O(E) pass per layer).
            weight_sum = weight_sum.detach()
            row_sum = self.row_sum.to(x.dtype)
            scale = torch.where(weight_sum > 0, row_sum / weight_sum.clamp_min(1e-30),
                                torch.zeros_like(weight_sum))
            out = out * scale.unsqueeze(-1)
        return out

    def _output(self, out: Tensor, as_pair: bool):
        return out.split([self.num_users, self.num_items], dim=0) if as_pair else out

    def forward(self, x: Union[Tensor, Tuple[Tensor, Tensor]],
                item_mask: Optional[Tensor] = None):
        r"""One propagation layer :math:`\hat{\mathbf{A}}\mathbf{E}` (masked).

        Args:
            x: :math:`[U + I, F]` (users first) or ``(x_user, x_item)``.
            item_mask (Tensor, optional): bool :math:`[I]`, ``True`` = the
                item's modality is present.
        """
        x, as_pair = self._split_input(x)
        return self._output(self._step(x, self._node_mask(item_mask), self.adj), as_pair)

    def propagate_layers(self, x: Union[Tensor, Tuple[Tensor, Tensor]],
                         num_layers: Optional[int] = None,
                         item_mask: Optional[Tensor] = None, combine: str = "mean"):
        r"""Runs :math:`L` layers and combines :math:`\mathbf{E}^{(0)}, \dots,
        \mathbf{E}^{(L)}`: ``"mean"`` (LightGCN's
        :math:`\frac{1}{L+1}\sum_l \mathbf{E}^{(l)}`), ``"sum"``, ``"last"``
        (:math:`\mathbf{E}^{(L)}`) or ``"stack"`` (:math:`[L+1, N, F]`)."""
        if combine not in _COMBINE:
            raise ValueError(f"combine: expected one of {_COMBINE}, got {combine!r}")
        L = self.num_layers if num_layers is None else num_layers
        if int(L) != L or L < 0:
            raise ValueError(f"num_layers: expected an int >= 0, got {L!r}")
        x, as_pair = self._split_input(x)
        mask, adj = self._node_mask(item_mask), self.adj
        if combine == "stack":
            layers: List[Tensor] = [x]
            for _ in range(int(L)):
                layers.append(self._step(layers[-1], mask, adj))
            out = torch.stack(layers, dim=0)
            return out.split([self.num_users, self.num_items], dim=1) if as_pair else out
        # Running sum: no [L+1, N, F] stack is materialised.
        h, total = x, x
        for _ in range(int(L)):
            h = self._step(h, mask, adj)
            total = total + h
        if combine == "last":
            return self._output(h, as_pair)
        out = total / (int(L) + 1) if combine == "mean" else total
        return self._output(out, as_pair)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(num_users={self.num_users}, "
                f"num_items={self.num_items}, num_edges={self.col.numel() // 2}, "
                f"renormalize={self.renormalize})")
