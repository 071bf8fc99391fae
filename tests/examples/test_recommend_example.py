"""examples/recommend.py on a tiny stand-in for ml100k_mm: hold a movie out, train,
recommend with titles, add the movie back from its content, reuse the run."""
import numpy as np

from conftest import load_script, write_tiny_mmrec


def _fake_ml100k(tmp_path):
    root = write_tiny_mmrec(tmp_path / "data", name="ml100k_mm", num_users=30, num_items=40,
                            per_user=10)
    (root / "ml100k_mm" / "items.tsv").write_text("itemID\tml100k_id\ttext\n" + "".join(
        f"{j}\t{j + 1}\tFilm {j} ({1950 + j}). Genres: Drama. Plot.\n" for j in range(40)))
    return root


def test_recommend_example_holds_out_and_adds_back(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PYG_MMREC_CACHE", str(tmp_path / "cache"))
    root = _fake_ml100k(tmp_path)
    example = load_script("examples/recommend.py", "recommend_example")
    args = ["--root", str(root), "--movie", "Film 7 (1957)", "--epochs", "2",
            "--run", str(tmp_path / "demo"), "--users", "0,1"]
    assert example.main(args) == 0
    out = capsys.readouterr().out
    assert "user 0: top-10" in out and "Film " in out
    assert "'Film 7 (1957)' added as item 39" in out and "median rank" in out
    # the model never saw the movie: the copy has one item less, none of its interactions
    copy = tmp_path / "demo" / "data" / "ml100k_holdout"
    assert np.load(copy / "text_feat.npy").shape[0] == 39
    assert "Film 7 (1957)" not in (copy / "items.tsv").read_text()
    assert example.main(args) == 0  # the finished run is reused
    assert "reusing the finished run" in capsys.readouterr().out


def test_recommend_example_bad_arguments(tmp_path, capsys):
    example = load_script("examples/recommend.py", "recommend_example")
    assert example.main(["--root", str(tmp_path)]) == 2
    assert "--root" in capsys.readouterr().err
    root = _fake_ml100k(tmp_path)
    assert example.main(["--root", str(root), "--movie", "Nope"]) == 2
    assert "--movie" in capsys.readouterr().err
