r"""BPR-MF: matrix factorisation trained with Bayesian personalised ranking."""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from torch import Tensor

from .base import Recommender, RecOutput


class BPR(Recommender):
    r"""Matrix factorisation with the BPR loss from `Rendle et al.: BPR: Bayesian
    Personalized Ranking from Implicit Feedback <https://arxiv.org/abs/1205.2618>`_
    (UAI 2009).

    .. math::
        \hat{y}_{ui} = e_u^\top e_i, \qquad
        \mathcal{L} = -\log\sigma(\hat{y}_{ui^+} - \hat{y}_{ui^-})
        + \frac{\lambda}{2B}\left(\lVert e_u\rVert^2 + \lVert e_{i^+}\rVert^2
        + \lVert e_{i^-}\rVert^2\right).

    Modality features, if given, are ignored (``uses_features = False``).

    **Sampled training** (``fanout``): there is no graph to sample, so the
    fan-out's values are not used; with ``fanout`` set a step reads only the
    batch's rows (:meth:`sampled_output`, exactly the full model's numbers)
    and the ID embeddings get sparse gradients, so the step and its
    optimiser update cost :math:`O(B)` instead of :math:`O(U + I)`.

    Args:
        embedding_size (int): :math:`d` (MMRec: 64).
        reg_weight (float): :math:`\lambda`.
        fanout (list of int, optional): any list of positive ints switches to
            batch-row steps (see above); ``None``: full tables per step.
    """

    uses_features = False

    def __init__(self, num_users: int, num_items: int, train_edge_index: Tensor,
                 features: Optional[Dict[str, Tensor]] = None,
                 masks: Optional[Dict[str, Tensor]] = None, *,
                 embedding_size: int = 64, reg_weight: float = 1e-5,
                 fanout: Optional[List[int]] = None) -> None:
        super().__init__(num_users, num_items, train_edge_index, features, masks)
        self.embedding_size, self.reg_weight = int(embedding_size), float(reg_weight)
        self._init_id_embeddings(self.embedding_size, sparse=self._init_sampler(fanout, None))
        self._finish_init()

    def reset_parameters(self) -> None:
        self._reset_id_embeddings()

    def forward(self) -> RecOutput:
        return RecOutput(user=self.user_embedding.weight, item=self.item_embedding.weight)

    def item_rows_of(self, items: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        return self.item_embedding(items), {}

    def sampled_output(self, users: Tensor, items: Tensor) -> RecOutput:
        r"""The batch's rows of :meth:`forward` (see "Sampled training")."""
        return self._batch_rows_output(users, items)


__all__ = ["BPR"]
