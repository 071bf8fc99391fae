import pytest
import torch

from pyg_mmrec.nn import edge_pruning
from pyg_mmrec.nn.edge_pruning import degree_sensitive_prune


def star_graph():
    # user 0 has every item; users 1..4 one item each: the edges of the hub user
    # (degree 5) towards popular items are the least likely to be kept
    users = torch.tensor([0, 0, 0, 0, 0, 1, 2, 3, 4, 0])  # (0, 0) listed twice
    items = torch.tensor([0, 1, 2, 3, 4, 0, 0, 0, 5, 0])
    return torch.stack([users, items])


def inclusion_frequency(ei, draws, drop=0.5):
    uniq = torch.unique(ei, dim=1)
    counts = torch.zeros(uniq.size(1))
    for _ in range(draws):
        kept = degree_sensitive_prune(ei, 5, 6, drop)
        counts += (kept.t().unsqueeze(1) == uniq.t().unsqueeze(0)).all(-1).any(0).float()
    return uniq, counts / draws


def test_keeps_distinct_edges_with_inverse_sqrt_degree_odds():
    ei = star_graph()
    torch.manual_seed(0)
    kept = degree_sensitive_prune(ei, 5, 6, 0.5)
    assert kept.shape == (2, 4)  # 9 distinct edges, floor(9 * 0.5)
    assert torch.unique(kept, dim=1).size(1) == 4  # without replacement
    uniq, freq = inclusion_frequency(ei, 3000)
    as_list = [tuple(e) for e in uniq.t().tolist()]
    # (4, 5): degrees 1 and 1, weight 1; (0, 0): degrees 5 and 4, weight 1/sqrt(20)
    light, heavy = as_list.index((4, 5)), as_list.index((0, 0))
    others = torch.ones_like(freq, dtype=torch.bool)
    others[[light, heavy]] = False
    assert freq[light] > freq[others].max() + 0.1 and freq[heavy] < freq[others].min() - 0.05
    assert torch.isclose(freq.sum(), torch.tensor(4.0))


def test_exponential_race_draws_the_same_distribution(monkeypatch):
    ei = star_graph()
    torch.manual_seed(1)
    _, small = inclusion_frequency(ei, 3000)
    monkeypatch.setattr(edge_pruning, "_MULTINOMIAL_MAX", 4)  # force the large-graph path
    torch.manual_seed(2)
    _, large = inclusion_frequency(ei, 3000)
    assert (small - large).abs().max() < 0.05


def test_bad_arguments():
    with pytest.raises(ValueError, match="drop"):
        degree_sensitive_prune(star_graph(), 5, 6, 1.0)
    with pytest.raises(ValueError, match="edge_index"):
        degree_sensitive_prune(torch.zeros(2, 0, dtype=torch.long), 5, 6, 0.5)


def test_draw_stays_on_the_device_of_its_graph(device):
    ei = star_graph().to(device)
    torch.manual_seed(0)
    kept = degree_sensitive_prune(ei, 5, 6, 0.5)
    assert kept.device == ei.device and kept.shape == (2, 4)
    # every kept edge is a distinct edge of the graph
    uniq = torch.unique(ei, dim=1)
    assert torch.unique(kept, dim=1).size(1) == 4
    assert (kept.t().unsqueeze(1) == uniq.t().unsqueeze(0)).all(-1).any(1).all()
