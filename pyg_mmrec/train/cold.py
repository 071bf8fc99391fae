r"""Evaluation under the new-item (cold-items) protocol
(:mod:`pyg_mmrec.data.cold`).

A cold run's model is trained on the warm items ``0 .. W-1``. Before every
evaluation a *copy* of it grows by the new items ``W .. I-1`` through
``add_items`` (their content features and presence masks, filled by the
run's rule: see :func:`fill_new_item_features`), exactly what a deployment
does with a new item; the training model itself is never grown. Two groups
of metrics are computed from the same embeddings:

* overall (``recall@20``, ...): every user with targets, ranked over all
  :math:`I` items, as in a run without the protocol;
* new items only (``cold/recall@20``, ...): the users with targets among the
  new items, ranked over the new items only (the others are not candidates).
  The candidates are visited in a seeded random order, so ties (an ID-only
  model gives every new item the same zero score) fall at random and not by
  item id.

An ID-only model (``supports_new_items`` false: BPR, LightGCN) has no row for
an item it never saw: a new item's representation is the zero vector (score
0 for every user), which is what such a model can offer a new item. Its
new-item metrics therefore sit at the level of a random ranking.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..metrics import Metrics, evaluate_full_ranking

#: prefix of the new-item metrics (``cold/recall@20``)
COLD_PREFIX = "cold/"
_TIE_STREAM = 0x71E


@dataclass
class ColdEval:
    r"""What evaluation needs to place the new items of a cold run.

    Attributes:
        num_warm (int): :math:`W`, items the model was trained on.
        num_items (int): :math:`I`, all items (internal ids ``W .. I-1`` are new).
        features (dict): ``{modality: [I - W, F_m]}`` filled features of the new items.
        masks (dict): ``{modality: bool [I - W]}`` their presence masks.
        seed (int): seeds the candidates' order (ties).
    """

    num_warm: int
    num_items: int
    features: Dict[str, Tensor]
    masks: Dict[str, Tensor]
    seed: int = 0

    @property
    def num_cold(self) -> int:
        return self.num_items - self.num_warm


class GroupedMetrics(Metrics):
    r"""Overall validation/test :class:`~pyg_mmrec.metrics.Metrics` plus named
    groups computed on other users (``cold/recall@20``); the mapping holds
    every value, :attr:`groups` the group objects (their own user counts)."""

    def __init__(self, overall: Metrics, groups: Mapping[str, Metrics]) -> None:
        super().__init__(overall.sums, overall.count, overall.split)
        self.groups = dict(groups)
        for prefix, m in self.groups.items():
            if m.split != overall.split:
                raise ValueError("GroupedMetrics: groups come from different splits")
            self._values.update({f"{prefix}{k}": v for k, v in m.items()})


def supports_new_items(model: torch.nn.Module) -> bool:
    r"""Whether ``model`` can place new items from their content
    (:attr:`pyg_mmrec.models.Recommender.supports_new_items`)."""
    return bool(getattr(model, "supports_new_items", False))


@torch.no_grad()
def grow_with_new_items(model: torch.nn.Module, cold: ColdEval) -> Optional[torch.nn.Module]:
    r"""A copy of ``model`` (trained on the warm items, with its current
    modality inputs) grown by the new items through ``add_items``, in eval
    mode; ``None`` for an ID-only model (its new items get zero rows, see
    :func:`embeddings_with_new_items`). ``model`` itself is not changed."""
    if not supports_new_items(model):
        return None
    grown = copy.deepcopy(model)
    dev = next((b.device for b in grown.buffers()), torch.device("cpu"))
    grown.add_items({m: x.to(dev) for m, x in cold.features.items()},
                    {m: x.to(dev) for m, x in cold.masks.items()})
    grown.eval()
    return grown


@torch.no_grad()
def embeddings_with_new_items(model: torch.nn.Module, cold: ColdEval,
                              grown: Optional[torch.nn.Module] = None) -> Tuple[Tensor, Tensor]:
    r"""``(user [U, d], item [I, d])`` of ``model`` after placing the new items
    (:func:`grow_with_new_items`, or the already ``grown`` copy); an ID-only
    model's new items get zero rows. ``model`` itself is not changed."""
    if grown is None:
        grown = grow_with_new_items(model, cold)
    if grown is None:
        user, item = model.embeddings_for_eval()
        zeros = item.new_zeros(cold.num_cold, item.size(1))
        return user, torch.cat([item, zeros], 0)
    user, item = grown.embeddings_for_eval()
    if item.size(0) != cold.num_items:
        raise RuntimeError(f"{type(model).__name__}.add_items: expected embeddings for "
                           f"{cold.num_items} items after adding {cold.num_cold}, got "
                           f"{item.size(0)}")
    return user, item


def new_item_candidates(cold: ColdEval) -> Tensor:
    """Internal ids of the new items, in the seeded order ties are broken by."""
    from ..data.sampler import epoch_generator
    g = epoch_generator(cold.seed, _TIE_STREAM)
    return cold.num_warm + torch.randperm(cold.num_cold, generator=g)


def evaluate_with_new_items(user: Tensor, item: Tensor, target: Tensor,
                            exclude: Sequence[Tensor], ks: Sequence[int], split: str,
                            cold: ColdEval, rank: int = 0, world_size: int = 1
                            ) -> GroupedMetrics:
    r"""Overall and new-item metrics (see the module docstring) of one split,
    both through :func:`~pyg_mmrec.metrics.evaluate_full_ranking`.

    Args:
        user, item: embeddings covering all :math:`I` items (internal ids).
        target: ``[2, E]`` held-out pairs of the split.
        exclude: pairs never recommended (training; validation when testing).
        ks, split: as :func:`~pyg_mmrec.metrics.evaluate_full_ranking`.
        cold: the run's :class:`ColdEval`.
    """
    overall = evaluate_full_ranking(user, item, target, list(exclude), ks=ks, split=split,
                                    rank=rank, world_size=world_size)
    new = evaluate_full_ranking(user, item, target, list(exclude), ks=ks, split=split,
                                rank=rank, world_size=world_size,
                                candidates=new_item_candidates(cold).to(item.device))
    return GroupedMetrics(overall, {COLD_PREFIX: new})


def fill_new_item_features(features: Mapping[str, Tensor], masks: Mapping[str, Tensor],
                           reference: Mapping[str, Tensor], reference_masks: Mapping[str, Tensor],
                           strategy: str) -> Dict[str, Tensor]:
    r"""Applies a run's fill rule to the rows of *new* items.

    * ``"zero"``: a missing modality's row is zero;
    * ``"mean"``: the mean of the present rows of the trained items
      (``reference`` under ``reference_masks``), as for trained items;
    * ``"propagate"``: a new item has no neighbour in the training graph to
      propagate from, so it gets what :func:`~pyg_mmrec.data.missing.fill_features`
      gives an item without present neighbours: the same mean.

    Present rows are kept as given. Returns new tensors.
    """
    out = {}
    for m, x in features.items():
        mk = masks[m].to(x.device).unsqueeze(1)
        safe = torch.where(mk, x, torch.zeros((), dtype=x.dtype, device=x.device))
        if strategy == "zero":
            out[m] = safe
            continue
        ref, rmk = reference[m], reference_masks[m].to(reference[m].device)
        mean = ref[rmk].mean(0) if bool(rmk.any()) else ref.new_zeros(ref.size(1))
        out[m] = torch.where(mk, safe, mean.to(x.device, x.dtype).unsqueeze(0))
    return out


__all__ = ["ColdEval", "GroupedMetrics", "COLD_PREFIX", "embeddings_with_new_items",
           "evaluate_with_new_items", "fill_new_item_features", "grow_with_new_items", "new_item_candidates",
           "supports_new_items"]
