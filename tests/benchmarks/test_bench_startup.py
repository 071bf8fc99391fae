"""bench_startup.py: its error cases fail as intended (exit 2, one line), checked by the script."""
from conftest import load_script


def test_startup_error_cases_exit_2_with_one_line(capsys):
    bench = load_script("benchmarks/bench_startup.py", "_bench_startup")
    assert bench.main(["--runs", "1", "--only", "error"]) == 0  # 1 if a case misbehaved
    out = capsys.readouterr().out
    assert "data error: itemID out of range" in out and "check failed" not in out
