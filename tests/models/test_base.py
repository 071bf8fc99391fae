"""The shared pieces of :class:`Recommender`: the BPR + L2 terms, the ID
embeddings and the constructor tail."""
import math

import torch
from conftest import random_modal_data

from pyg_mmrec.models.base import Recommender, RecOutput, batch_l2, bpr_l2_terms

U, I = 10, 12


def test_batch_l2_and_bpr_l2_terms_by_hand():
    u = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    n = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    # squared norms 5 + 1, 1 + 2, 0 + 4 = 13 over 2 * B = 4
    assert math.isclose(float(batch_l2(0.5, u, p, n)), 0.5 * 13 / 4)
    terms = bpr_l2_terms(u, p, n, 0.5, name="bpr_x")
    assert list(terms) == ["bpr_x", "reg"]  # the trainer sums them in this order
    margins = torch.tensor([1.0 - 0.0, 1.0 - 0.0])  # u.p - u.n per row
    expected = float(-torch.nn.functional.logsigmoid(margins).mean())
    assert math.isclose(float(terms["bpr_x"]), expected,
                        rel_tol=1e-6)
    assert list(bpr_l2_terms(u, p, n, 0.0)) == ["bpr"]


class CacheModel(Recommender):
    """Needs its own module inside on_inputs_changed, like the kNN-graph models."""

    def __init__(self, *data, dim=4):
        super().__init__(*data)
        self.calls = []
        self._init_id_embeddings(dim, user_dim=2 * dim)
        self.scale = torch.nn.Parameter(torch.ones(()))
        self._finish_init()

    def reset_parameters(self):
        self._reset_id_embeddings(torch.nn.init.xavier_normal_)
        torch.nn.init.ones_(self.scale)

    def on_inputs_changed(self):
        if not self._ready:  # inside Recommender.__init__: nothing built yet
            return
        self.calls.append({m: int(self.mask(m).sum()) for m in self.modalities})

    def forward(self):
        return RecOutput(user=self.user_embedding.weight, item=self.item_embedding.weight)


def test_id_embeddings_and_constructor_tail():
    ei, feats, masks = random_modal_data(U, I, 0)
    torch.manual_seed(0)
    model = CacheModel(U, I, ei, feats, masks)
    assert model.user_embedding.weight.shape == (U, 8)
    assert model.item_embedding.weight.shape == (I, 4)
    assert not model.user_embedding.sparse
    assert model.calls == [{m: int(masks[m].sum()) for m in feats}]  # once, when ready
    # reset_parameters drew the embeddings with the given initialiser, from the global RNG
    torch.manual_seed(0)
    again = CacheModel(U, I, ei, feats, masks)
    assert torch.equal(again.user_embedding.weight, model.user_embedding.weight)
    full = {m: torch.ones(I, dtype=torch.bool) for m in feats}
    model.set_modality_inputs(feats, full)
    assert model.calls[-1] == {m: I for m in feats}
