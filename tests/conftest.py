import os
from pathlib import Path

import pytest
import torch

# The real data lives beside the project (see README); tests using it skip when absent.
DATA_ROOT = Path(os.environ.get("PYG_MMREC_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not (DATA_ROOT / "ml100k_mm" / "ml100k_mm.inter").exists():
        pytest.skip(f"real data not found at {DATA_ROOT}")
    return DATA_ROOT


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
