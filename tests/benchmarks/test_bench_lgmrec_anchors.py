"""bench_lgmrec_anchors.py: one table row per size, ratios of the three steps, the growth line."""
import re

import pytest

from conftest import load_script


def test_prints_a_row_per_size_and_the_growth(capsys):
    bench = load_script("benchmarks/bench_lgmrec_anchors.py", "_bench_lgmrec_anchors")
    assert bench.main(["--sizes", "4k,2k", "--batches", "1", "--anchors", "16",
                       "--fanout", "3,3"]) == 0
    out = capsys.readouterr().out
    assert "| E | users | items | full graph | 16 anchors | every item |" in out
    rows = re.findall(r"^\| (\d+k) \| (\d+) \| (\d+) \|((?: [\d.]+ \|){5})$", out, re.M)
    assert [r[:3] for r in rows] == [("2k", "100", "50"), ("4k", "200", "100")]  # sorted
    for *_, cells in rows:
        full, bounded, every, r1, r2 = (float(x) for x in cells.strip(" |").split(" | "))
        assert min(full, bounded, every) > 0
        # the ratios come from unrounded times: within the cells' rounding (±0.0005)
        for ratio, num, den in ((r1, every, bounded), (r2, every, full)):
            lo = (num - 5e-4) / (den + 5e-4) - 5e-3
            hi = (num + 5e-4) / max(den - 5e-4, 1e-9) + 5e-3
            assert lo <= ratio <= hi, (ratio, num, den)
    assert "step growth per doubling of E, 2k -> 4k" in out


def test_bad_arguments_are_refused(capsys):
    bench = load_script("benchmarks/bench_lgmrec_anchors.py", "_bench_lgmrec_anchors")
    for argv, message in [(["--anchors", "0"], "--anchors"), (["--sizes", "1x"], "--sizes"),
                          (["--fanout", "0,2"], "--fanout")]:
        with pytest.raises(SystemExit) as e:
            bench.main(argv)
        assert e.value.code == 2
        assert message in capsys.readouterr().err
