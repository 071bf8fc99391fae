"""The demo script (``make demo``) on a tiny dataset: flags, config file, kept runs."""
from pathlib import Path

from conftest import load_script

REPO = Path(__file__).resolve().parents[2]


def load_example():
    return load_script("examples/train_i3mrec.py", "train_i3mrec")


def test_demo_table_with_tuned_config_and_kept_runs(tiny_root, tmp_path, capsys):
    example = load_example()
    args = ["--root", str(tiny_root), "--dataset", "tiny", "--modes", "ff,fm", "--quick",
            "--config", str(REPO / "examples" / "configs" / "i3mrec_ml100k.yaml"),
            "--set", "embedding_size=8", "--set", "batch_size=64", "--set", "topk=[10,20]", "--out", str(tmp_path / "runs")]
    assert example.main(args) == 0
    out = capsys.readouterr().out
    assert "mode" in out and "recall@20" in out
    rows = [line for line in out.splitlines() if line.startswith(("ff ", "fm "))]
    # the table is printed as each mode finishes: ff alone, then ff and fm
    assert len(rows) == 3 and all(" ± " in r for r in rows) and rows[0] == rows[1]
    assert out.index("== mode ff (1/2)") < out.index("1 of 2 modes done") \
        < out.index("== mode fm (2/2)")
    kept = sorted((tmp_path / "runs").rglob("result.json"))
    assert [p.parent.relative_to(tmp_path / "runs").as_posix() for p in kept] == \
        ["ff/seed1", "fm/seed1"]
    assert "id_branch: lightgcn" in (kept[0].parent / "config.yaml").read_text()
    # a second call reuses the finished runs: same table
    assert example.main(args) == 0
    again = capsys.readouterr().out
    assert [r for r in again.splitlines() if r.startswith(("ff ", "fm "))] == rows


def test_demo_bad_arguments(tiny_root, tmp_path, capsys):
    example = load_example()
    assert example.main(["--root", str(tmp_path / "nowhere")]) == 2
    assert "--root" in capsys.readouterr().err
    assert example.main(["--root", str(tiny_root), "--dataset", "tiny", "--modes", "xx"]) == 2
    assert "--modes" in capsys.readouterr().err
    assert example.main(["--root", str(tiny_root), "--dataset", "tiny",
                         "--config", str(tmp_path / "no.yaml")]) == 2
    assert "--config" in capsys.readouterr().err
    assert example.main(["--root", str(tiny_root), "--dataset", "tiny", "--quick"]) == 2
    assert "larger than the number of items" in capsys.readouterr().err  # K=50 > 30 items
