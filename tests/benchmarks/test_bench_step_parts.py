"""benchmarks/bench_lazy_adam.py and benchmarks/bench_infonce.py run at a tiny size and print
one row per configuration with its ratio."""
import re

import pytest

from conftest import load_script
from pyg_mmrec.ops.lazy_adam import LAZY_ADAM_DEVICES


@pytest.mark.skipif("cpu" not in LAZY_ADAM_DEVICES, reason="no compiled lazy_adam_rows_")
def test_bench_lazy_adam_tiny(capsys):
    bench = load_script("benchmarks/bench_lazy_adam.py", "_bench_lazy_adam")
    assert bench.main(["--rows", "500", "--touched", "50,200", "--dim", "8",
                       "--repeats", "1"]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if re.match(r"\| \d", r)]
    assert len(rows) == 2 and all(len(r.split("|")) == 8 for r in rows)


def test_bench_infonce_tiny(capsys):
    bench = load_script("benchmarks/bench_infonce.py", "_bench_infonce")
    assert bench.main(["--sizes", "32", "--views", "2,3", "--dim", "4", "--repeats", "1"]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if re.match(r"\| \d", r)]
    assert len(rows) == 4  # 2 view counts x weighted or not
