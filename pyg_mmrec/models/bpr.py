r"""BPR-MF: matrix factorisation trained with Bayesian personalised ranking."""
from __future__ import annotations

from typing import Dict, Optional

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

    Args:
        embedding_size (int): :math:`d` (MMRec: 64).
        reg_weight (float): :math:`\lambda`.
    """

    uses_features = False

    def __init__(self, num_users: int, num_items: int, train_edge_index: Tensor,
                 features: Optional[Dict[str, Tensor]] = None,
                 masks: Optional[Dict[str, Tensor]] = None, *,
                 embedding_size: int = 64, reg_weight: float = 1e-5) -> None:
        super().__init__(num_users, num_items, train_edge_index, features, masks)
        self.embedding_size, self.reg_weight = int(embedding_size), float(reg_weight)
        self._init_id_embeddings(self.embedding_size)
        self._finish_init()

    def reset_parameters(self) -> None:
        self._reset_id_embeddings()

    def forward(self) -> RecOutput:
        return RecOutput(user=self.user_embedding.weight, item=self.item_embedding.weight)


__all__ = ["BPR"]
