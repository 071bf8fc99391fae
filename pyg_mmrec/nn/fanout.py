"""Validation of per-hop fan-outs, kept free of PyTorch so that configuration
checks can use it before any heavy import."""
from __future__ import annotations

from typing import List


def check_fanout(fanout, num_layers: int) -> List[int]:
    r"""Validates a per-hop fan-out: a non-empty list of ``num_layers``
    positive ints (``fanout[0]`` is the hop next to the seeds). Raises a
    :class:`ValueError` naming ``fanout`` otherwise."""
    if isinstance(fanout, (str, bytes)) or not isinstance(fanout, (list, tuple)):
        raise ValueError(f"fanout: expected a list of {num_layers} positive ints (one per "
                         f"layer) or null for full-graph propagation, got {fanout!r}")
    if len(fanout) == 0:
        raise ValueError("fanout: expected a non-empty list of positive ints (one per layer), "
                         "got []; use null for full-graph propagation")
    for f in fanout:
        if isinstance(f, bool) or not isinstance(f, int) or f < 1:
            raise ValueError(f"fanout: expected positive ints, got {list(fanout)!r}")
    if len(fanout) != num_layers:
        raise ValueError(f"fanout: expected one entry per layer (n_layers={num_layers}), got "
                         f"{len(fanout)} entries {list(fanout)!r}")
    return [int(f) for f in fanout]
