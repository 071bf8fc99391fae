"""Every bad input of docs/errors.md: one row here per row there.

Each row runs the command line in-process on a small dataset with one thing
wrong, and checks exit status 2, exactly one line on stderr, ``error: `` and
the documented message, and no traceback. The message templates below are the
ones printed in docs/errors.md (a test checks that each appears there verbatim),
with ``<data>`` for the dataset folder, ``<out>`` for the output folder and
``<run>`` for a run directory.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pyg_mmrec.cli import main

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "errors.md"

HEADER = "userID\titemID\trating\ttimestamp\tx_label\n"
# 3 users, 4 items; line 2 is the first interaction
ROWS = [(0, 0, 0), (0, 1, 0), (0, 2, 1), (0, 3, 2),
        (1, 1, 0), (1, 2, 0), (1, 0, 1), (1, 3, 2),
        (2, 3, 0), (2, 2, 0), (2, 1, 1), (2, 0, 2)]


def write_toy(root: Path, rows=ROWS, extra_lines=(), header=HEADER) -> Path:
    """``<root>/toy``: 12 interactions, text (4x3) and image (4x5) features, an image mask."""
    folder = root / "toy"
    folder.mkdir(parents=True, exist_ok=True)
    lines = [header] + [f"{u}\t{i}\t1\t0\t{x}\n" for u, i, x in rows] + list(extra_lines)
    (folder / "toy.inter").write_text("".join(lines))
    rng = np.random.default_rng(0)
    np.save(folder / "text_feat.npy", rng.normal(size=(4, 3)).astype(np.float32))
    np.save(folder / "image_feat.npy", rng.normal(size=(4, 5)).astype(np.float32))
    np.save(folder / "image_mask.npy", np.array([True, False, True, True]))
    return folder


def train_args(ctx, *extra):
    return ["train", "--model", "LightGCN", "--dataset", "toy", "--root", str(ctx["root"]),
            "--out", str(ctx["out"]), "--epochs", "1", "--topk", "1,2", "--metric", "recall@2",
            "--quiet", *extra]


def _append(*lines):
    def setup(ctx):
        with open(ctx["data"] / "toy.inter", "a") as f:
            f.writelines(lines)
    return setup


def _save(name, array):
    def setup(ctx):
        np.save(ctx["data"] / name, array)
    return setup


def _rewrite(rows=ROWS, header=HEADER):
    def setup(ctx):
        write_toy(ctx["root"], rows=rows, header=header)
    return setup


def _run_dir(ctx):
    """The run directory ``train_args`` writes (experiment / setting / seed)."""
    return ctx["out"] / "lightgcn-toy-natural" / "epochs=1,metric=recall_2,topk=_1,_2" / "seed0"


def _more_patient_run(ctx):
    """A finished run with patience 60, copied to where the default (50) resumes."""
    import shutil
    assert main(train_args(ctx, "--patience", "60")) == 0
    patient = _run_dir(ctx).parent.parent / "epochs=1,metric=recall_2,patience=60,topk=_1,_2"
    shutil.copytree(patient / "seed0", _run_dir(ctx))


def _checkpoint(content: bytes):
    def setup(ctx):
        run = _run_dir(ctx)
        run.mkdir(parents=True)
        (run / "checkpoint.pt").write_bytes(content)
    return setup


def _truncated_checkpoint(ctx):
    import io

    import torch
    buf = io.BytesIO()
    torch.save({"version": 1, "epoch": 3, "weights": torch.zeros(1000)}, buf)
    _checkpoint(buf.getvalue()[: len(buf.getvalue()) // 2])(ctx)


def _out_is_file(ctx):
    ctx["out"].write_text("not a folder")


def _out_read_only(ctx):
    ctx["out"].mkdir()
    os.chmod(ctx["out"], 0o555)


def _unfinished(ctx):
    _checkpoint(b"x")(ctx)


def _no_matplotlib(ctx):
    ctx["monkeypatch"].setitem(sys.modules, "matplotlib", None)  # find_spec -> None


def _bad_result_json(ctx):
    run = _run_dir(ctx)
    run.mkdir(parents=True)
    (run / "result.json").write_text("{\"valid\": ")


#: (id, setup, arguments, message template) -- the rows of docs/errors.md
CASES = [
    # ---- configuration
    ("unknown-model", None, lambda c: train_args(c)[:2] + ["Nope"] + train_args(c)[3:],
     "error: model: unknown model 'Nope'; expected one of ['bpr', 'freedom', 'i3mrec', "
     "'lattice', 'lgmrec', 'lightgcn', 'mgcn', 'mmgcn', 'vbpr']"),
    ("unknown-key", None, lambda c: train_args(c, "--set", "n_layer=3"),
     "error: unknown configuration key 'n_layer' for model 'lightgcn'; expected one of"),
    ("wrong-type", None, lambda c: train_args(c, "--set", "n_layers=two"),
     "error: 'model.n_layers': expected a value of type int (like the default 2), got 'two' "
     "(str)"),
    ("bad-metric", None, lambda c: train_args(c)[:-2] + ["recall@x", "--quiet"],
     "error: train.metric: expected [cold/]<name>@<K> with name in ['recall', 'ndcg', 'precision', "
     "'map', 'hit'] and K >= 1, got 'recall@x'"),
    ("bad-missing", None, lambda c: train_args(c, "--missing", "i3mrec:xx:0.3"),
     "error: --missing: missing spec 'i3mrec:xx:0.3': unknown i3mrec mode 'xx'; expected one "
     "of ['ff', 'fm', 'mm']"),
    ("config-not-found", None, lambda c: train_args(c, "--config", "nope.yaml"),
     "error: --config: file not found: nope.yaml"),
    ("k-above-items", None,
     lambda c: train_args(c)[:train_args(c).index("--topk")] + ["--quiet"],
     "error: train.topk/metric: K=50 is larger than the number of items (4)"),
    # ---- data files
    ("no-dataset-folder", None, lambda c: train_args(c)[:4] + ["nope"] + train_args(c)[5:],
     "error: dataset folder not found: '<root>/nope' (expected nope/nope.inter under --root; "
     "check --root and --dataset)"),
    ("no-inter-file", lambda c: (c["data"] / "toy.inter").unlink(), train_args,
     "error: interaction file not found: '<data>/toy.inter' (expected a tab-separated MMRec "
     ".inter file)"),
    ("wrong-header", _rewrite(header="user\titem\tx_label\n"), train_args,
     "error: <data>/toy.inter: line 1: wrong header ['user', 'item', 'x_label']; expected "
     "tab-separated columns 'userID itemID rating timestamp x_label' (missing ['userID', "
     "'itemID'])"),
    ("non-integer", _append("2\tabc\t1\t0\t0\n"), train_args,
     "error: <data>/toy.inter: line 14: column 'itemID' must be an integer, got 'abc'"),
    ("ragged-line", _append("2\t1\t0\n"), train_args,
     "error: <data>/toy.inter: line 14: expected 5 tab-separated columns, got 3: '2\\t1\\t0'"),
    ("bad-x-label", _append("2\t1\t1\t0\t7\n"), train_args,
     "error: <data>/toy.inter: line 14: x_label=7; expected 0 (train), 1 (valid) or 2 "
     "(test) (1 bad rows)"),
    ("negative-id", _append("-1\t1\t1\t0\t0\n"), train_args,
     "error: <data>/toy.inter: line 14: negative userID -1; expected ids contiguous from 0"),
    ("item-out-of-range", _append("2\t9\t1\t0\t0\n"), train_args,
     "error: <data>/toy.inter: line 14: itemID 9 is out of range: image_feat.npy has 4 rows "
     "(items 0..3); expected one feature row per item"),
    ("ids-not-contiguous", _rewrite(rows=[(u if u < 2 else 3, i, x) for u, i, x in ROWS]),
     train_args,
     "error: <data>/toy.inter: userID ids are not contiguous from 0: 1 of 0..3 never occur "
     "(first missing: [2]); re-index the ids to 0..N-1"),
    ("duplicate", _append("0\t1\t1\t0\t2\n"), train_args,
     "error: <data>/toy.inter: lines 3 and 14: duplicate interaction (user 0, item 1); 1 "
     "duplicates in total: each (user, item) pair may occur once across all splits"),
    ("empty-split", _rewrite(rows=[(u, i, 0 if x == 1 else x) for u, i, x in ROWS]),
     train_args,
     "error: <data>/toy.inter: the valid split (x_label=1) is empty"),
    ("feature-not-2d", _save("text_feat.npy", np.zeros(4, np.float32)), train_args,
     "error: <data>/text_feat.npy: expected a 2-D array [num_items, F], got shape (4,)"),
    ("feature-extra-rows", _save("text_feat.npy", np.zeros((5, 3), np.float32)), train_args,
     "error: <data>/text_feat.npy: has 5 rows but the interaction file has 4 items; expected "
     "one feature row per item"),
    ("feature-dtype", _save("text_feat.npy", np.zeros((4, 3), np.int64)), train_args,
     "error: <data>/text_feat.npy: expected a floating-point array, got dtype int64"),
    ("feature-nan", _save("text_feat.npy", np.array([[0, 0, 0], [0, np.nan, 0], [0, 0, 0],
                                                     [0, 0, 0]], np.float32)), train_args,
     "error: <data>/text_feat.npy: 1 rows contain NaN/Inf (first rows: [1]); store any finite "
     "placeholder for missing items and flag them in text_mask.npy instead"),
    ("feature-unreadable", lambda c: (c["data"] / "text_feat.npy").write_bytes(b"garbage"),
     train_args,
     "error: <data>/text_feat.npy: not a .npy file (no NumPy header); expected an array "
     "written by numpy.save"),
    ("mask-shape", _save("image_mask.npy", np.ones(3, bool)), train_args,
     "error: <data>/image_mask.npy: expected shape (4,) (one flag per item), got (3,)"),
    ("mask-dtype", _save("image_mask.npy", np.ones(4, np.float32)), train_args,
     "error: <data>/image_mask.npy: expected a bool array (True = present), got dtype float32"),
    ("mask-without-feature", _save("audio_mask.npy", np.ones(4, bool)), train_args,
     "error: <data>/audio_mask.npy: mask file without a matching 'audio_feat.npy'"),
    # ---- output folders
    ("out-is-a-file", _out_is_file, train_args,
     "error: --out <out>: is a file; expected a folder (give another --out)"),
    ("out-read-only", _out_read_only, train_args,
     "error: --out <out>: the folder is not writable by this user; give another --out or "
     "change its permissions"),
    ("run-exists", lambda c: (_run_dir(c).mkdir(parents=True),
                              (_run_dir(c) / "result.json").write_text("{}")), train_args,
     "error: <run> already holds a run (result.json); pass resume=True (--resume) to continue "
     "it or choose another output directory"),
    # ---- checkpoints
    ("checkpoint-garbage", _checkpoint(b"not a checkpoint"),
     lambda c: train_args(c, "--resume"),
     "error: <run>/checkpoint.pt: cannot be read as a checkpoint, it is truncated or corrupt ("),
    ("checkpoint-truncated", _truncated_checkpoint, lambda c: train_args(c, "--resume"),
     "error: <run>/checkpoint.pt: cannot be read as a checkpoint, it is truncated or corrupt "
     "(PytorchStreamReader failed reading zip archive: failed finding central directory); "
     "delete it to start that run again from its first epoch (or choose another --out), then "
     "run the same command again"),
    ("resume-less-patience", _more_patient_run, lambda c: train_args(c, "--resume"),
     "error: patience: <run>/checkpoint.pt was trained with patience 60; a resumed run cannot "
     "be given less (50). Give at least 60, or choose another --out"),
    # ---- results, evaluate, optional extras
    ("results-unfinished", _unfinished, lambda c: ["results", str(c["out"])],
     "error: no finished run under <out>: 1 run(s) have not finished (a checkpoint.pt but no "
     "result.json), e.g. <run>; finish them with the same train command plus --resume"),
    ("results-nothing", lambda c: c["out"].mkdir(), lambda c: ["results", str(c["out"])],
     "error: no result.json under <out> (expected run directories written by `train`)"),
    ("results-bad-json", _bad_result_json, lambda c: ["results", str(c["out"])],
     "error: <run>/result.json: not valid JSON ("),
    ("evaluate-unfinished", _unfinished,
     lambda c: ["evaluate", str(_run_dir(c)), "--root", str(c["root"])],
     "error: evaluate: no finished run under <run>: <run> has not finished (a checkpoint.pt "
     "but no result.json); finish it with the same train command plus --resume"),
    ("plot-without-matplotlib", _no_matplotlib,
     lambda c: ["results", str(c["out"]), "--plot", str(c["tmp"] / "p.png")],
     "error: --plot needs matplotlib (the optional extra 'plot'), which is not installed; "
     "install it with: pip install 'pyg_mmrec[plot]' (or pip install matplotlib)"),
    ("plot-is-a-folder", lambda c: c["out"].mkdir(),
     lambda c: ["results", str(c["out"]), "--plot", str(c["out"])],
     "error: --plot <out>: is a folder; expected a file name such as plot.png"),
]


def _fill(template: str, ctx) -> str:
    return (template.replace("<data>", str(ctx["data"])).replace("<root>", str(ctx["root"]))
            .replace("<run>", str(_run_dir(ctx))).replace("<out>", str(ctx["out"])))


@pytest.fixture
def ctx(tmp_path, monkeypatch):
    monkeypatch.setenv("PYG_MMREC_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data"
    data = write_toy(root)
    yield {"root": root, "data": data, "out": tmp_path / "runs", "tmp": tmp_path,
           "monkeypatch": monkeypatch}
    if (tmp_path / "runs").is_dir():
        os.chmod(tmp_path / "runs", 0o755)


@pytest.mark.parametrize("case_id,setup,args,template", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(ctx, capsys, case_id, setup, args, template):
    if setup is not None:
        setup(ctx)
    logs = {f: f.read_bytes() for f in ctx["tmp"].rglob("metrics.jsonl")}  # a setup's own run
    argv = args(ctx)
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ")
    assert _fill(template, ctx) in lines[0]
    assert "Traceback" not in captured.err + captured.out
    # nothing was trained
    assert {f: f.read_bytes() for f in ctx["tmp"].rglob("metrics.jsonl")} == logs


def test_every_case_is_documented():
    text = DOC.read_text(encoding="utf-8")
    for case_id, _, _, template in CASES:
        assert f"`{case_id}`" in text, case_id
        assert template.replace("|", "\\|") in text, case_id


def test_debug_shows_the_traceback(ctx):
    from pyg_mmrec.errors import DataError
    _append("2\t1\t1\t0\t7\n")(ctx)
    with pytest.raises(DataError, match="line 14: x_label=7"):
        main(["--debug"] + train_args(ctx))
    with pytest.raises(DataError, match="line 14: x_label=7"):
        main(train_args(ctx, "--debug"))  # also after the subcommand


def test_a_bug_is_not_hidden(ctx, monkeypatch):
    import pyg_mmrec.data.raw as raw

    def broken(*a, **k):
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(raw, "check_dataset", broken)
    with pytest.raises(ZeroDivisionError):
        main(train_args(ctx))


def _run_cli(args, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    code = ("import sys\nfrom pyg_mmrec.cli import main\nrc = main(sys.argv[1:])\n"
            "heavy = sorted(m for m in ('torch', 'torch_geometric', 'matplotlib') "
            "if m in sys.modules)\nprint('heavy:', ','.join(heavy), file=sys.stderr)\n"
            "sys.exit(rc)\n")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_errors_before_any_heavy_import(ctx):
    """In a fresh process, configuration and data errors are reported without
    importing PyTorch, PyG or matplotlib (what keeps them fast)."""
    _append("2\t9\t1\t0\t0\n")(ctx)
    for args, message in [
            (train_args(ctx, "--set", "n_layer=3"), "unknown configuration key 'n_layer'"),
            (train_args(ctx, "--missing", "nope"), "--missing"),
            (train_args(ctx), "line 14: itemID 9 is out of range")]:
        proc = _run_cli(args, ctx["tmp"])
        assert proc.returncode == 2, proc.stderr
        error, heavy = proc.stderr.splitlines()
        assert error.startswith("error: ") and message in error
        assert heavy == "heavy: ", heavy


def test_help_imports_nothing_heavy(tmp_path):
    for args in (["--help"], ["train", "--help"]):
        proc = _run_cli(args, tmp_path)
        # argparse exits 0 from inside main(): the line is not printed, so look for torch
        assert proc.returncode == 0 and "usage:" in proc.stdout
    env = dict(os.environ, PYTHONPATH=str(REPO))
    code = ("import sys\nfrom pyg_mmrec.cli import main\n"
            "try:\n    main(['train', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'torch_geometric' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300).stdout.splitlines()[-1]
    assert out == "False False"


def test_resume_says_where_it_resumes(ctx, capsys):
    args = train_args(ctx)[:-1] + ["--epochs", "3"]  # not --quiet
    import pyg_mmrec.train.trainer as trainer_mod
    real_loop = trainer_mod.Trainer._loop

    def stop_at_once(self, resume_rng):
        self.request_stop()  # as SIGINT does: checkpoint after the current batch, then stop
        real_loop(self, resume_rng)
    ctx["monkeypatch"].setattr(trainer_mod.Trainer, "_loop", stop_at_once)
    assert main(args) == 130  # interrupted, checkpoint written
    err = capsys.readouterr().err
    assert "Continue with the same command plus --resume" in err
    ctx["monkeypatch"].setattr(trainer_mod.Trainer, "_loop", real_loop)
    assert main(args + ["--resume"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"resume: \S+checkpoint\.pt: continuing at epoch \d+/3", err), err
    assert main(args + ["--resume"]) == 0  # finished: reused, nothing trained
    err = capsys.readouterr().err
    assert "holds a finished run (3 epochs" in err and "nothing is trained" in err


def test_more_epochs_for_a_run_that_reached_its_cap(ctx, capsys):
    # the README's recipe: copy the run's folder to the new budget's name, resume with it
    import shutil
    assert main(train_args(ctx)) == 0  # 1 epoch, its cap
    capsys.readouterr()
    short = _run_dir(ctx)
    longer = Path(str(short.parent).replace("epochs=1", "epochs=2")) / short.name
    shutil.copytree(short, longer)
    args = train_args(ctx)[:-1]  # not --quiet
    args[args.index("--epochs") + 1] = "2"
    assert main(args + ["--resume"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"resume: \S+checkpoint\.pt: continuing at epoch 2/2", err), err
    assert len((longer / "metrics.jsonl").read_text().splitlines()) == 2
    assert len((short / "metrics.jsonl").read_text().splitlines()) == 1  # the short run is kept
