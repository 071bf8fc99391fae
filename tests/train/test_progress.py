"""The line printed after every epoch: epoch i/N, elapsed, ETA, best validation so far."""
import re

from pyg_mmrec.cli import main
from pyg_mmrec.train.trainer import progress_line


def test_progress_line_content():
    record = {"epoch": 2, "loss": 0.61234, "seconds": 1.5,
              "valid": {"recall@20": 0.0712, "ndcg@20": 0.05}}
    line = progress_line(record, epochs=50, elapsed=30.0, metric="recall@20",
                         best_epoch=1, best_value=0.08)
    # 3 epochs in 30 s: 10 s each, 47 epochs left
    assert line == ("epoch 3/50  loss 0.6123  1.50s  elapsed 0:30  ETA <= 7:50  "
                    "valid recall@20 0.0712  best 0.0800 (epoch 2)")


def test_progress_line_without_validation_and_at_the_end():
    line = progress_line({"epoch": 0, "loss": 1.0, "seconds": 2.0}, epochs=3, elapsed=4000.0,
                         metric="recall@20")
    assert line == "epoch 1/3  loss 1.0000  2.00s  elapsed 1:06:40  ETA <= 2:13:20"
    last = progress_line({"epoch": 2, "loss": 1.0, "seconds": 2.0, "valid": {"recall@20": 0.1}},
                         epochs=3, elapsed=6.0, metric="recall@20", best_epoch=2, best_value=0.1)
    assert "ETA" not in last and last.endswith("best 0.1000 (epoch 3)")


def test_training_prints_a_progress_line_per_epoch(tiny_root, tmp_path, capsys):
    args = ["train", "--model", "LightGCN", "--dataset", "tiny", "--root", str(tiny_root),
            "--out", str(tmp_path / "runs"), "--epochs", "3", "--topk", "5,10",
            "--metric", "recall@10", "--batch-size", "64"]
    assert main(args) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    pattern = (r"epoch \d/3  loss \d+\.\d{4}  \d+\.\d\ds  elapsed \d+:\d\d(  ETA <= \d+:\d\d)?"
               r"  valid recall@10 \d\.\d{4}  best \d\.\d{4} \(epoch [1-3]\)")
    assert all(re.fullmatch(pattern, line) for line in lines), lines
    assert "ETA" in lines[0] and "ETA" not in lines[-1]
    # --quiet: none of it
    assert main(args + ["--out", str(tmp_path / "quiet"), "--quiet"]) == 0  # the last --out wins
    assert "epoch " not in capsys.readouterr().err
