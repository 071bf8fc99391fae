r"""Atomic files and training checkpoints.

Every file the trainer writes (checkpoint, ``config.yaml``, ``result.json``) is
written *atomically*: the bytes go to a temporary file in the same directory,
are flushed and ``fsync``-ed, and the temporary file is then ``os.replace``-d
over the target (an atomic rename on POSIX and Windows). A crash or a
``SIGINT`` therefore leaves either the previous complete file or the new
complete file, never a truncated one.

A checkpoint holds everything needed to continue a run *bit-for-bit* on CPU:
model and optimiser states, the RNG states of ``torch``, ``numpy`` and
``random``, the position in the run (epoch and batch), the early-stopping
state, the best model state seen so far, and the configuration.
"""
from __future__ import annotations

import copy
import io
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Union

import numpy as np
import torch

from pyg_mmrec.errors import CheckpointError

PathLike = Union[str, os.PathLike]

#: file name of the checkpoint inside a run directory
CHECKPOINT_NAME = "checkpoint.pt"
#: format version stored in every checkpoint (bumped on incompatible changes)
CHECKPOINT_VERSION = 1


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _fsync_dir(directory: Path) -> None:
    # Persist the rename itself; not supported on every platform/filesystem.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Call ``write(f)`` on a temporary binary file next to ``path``, then
    flush, ``fsync`` and atomically rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp uses 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON to ``path``."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"
    return atomic_write_text(path, text)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, torch.Tensor) and o.numel() == 1:
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"object of type {type(o).__name__} is not JSON serialisable")


def get_rng_state() -> Dict[str, Any]:
    """RNG states of python ``random``, ``numpy`` and ``torch`` (CPU and CUDA)."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`get_rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: PathLike, state: Dict[str, Any]) -> Path:
    """Atomically save a checkpoint dictionary with :func:`torch.save`."""
    state = dict(state)
    state.setdefault("version", CHECKPOINT_VERSION)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    return atomic_write(path, lambda f: f.write(data))


def load_checkpoint(path: PathLike,
                    map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        CheckpointError: if the file is truncated, corrupt, or not a checkpoint
            of a known version (the message names the file and what to do).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    what_to_do = ("delete it to start that run again from its first epoch (or choose "
                  "another --out), then run the same command again")
    # The checkpoint holds numpy RNG state and python objects, hence weights_only=False;
    # only load checkpoints you wrote yourself.
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated zip, garbage bytes, unpickling errors, ...
        # the first sentence of torch's reason; the advice below replaces the rest
        reason = str(e).strip().splitlines()[0].split(". ")[0].rstrip(".") \
            if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot be read as a checkpoint, it is truncated or "
                              f"corrupt ({reason}); {what_to_do}") from e
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        found = state.get("version") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not a pyg_mmrec checkpoint of version "
                              f"{CHECKPOINT_VERSION} (found {found!r}); {what_to_do}")
    return state


def _cpu_copy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _cpu_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu_copy(v) for v in value)
    return copy.deepcopy(value)


def clone_state_dict(module: torch.nn.Module) -> Dict[str, Any]:
    """A detached CPU copy of ``module.state_dict()`` (for keeping the best state),
    including modules' extra state (``get_extra_state``), tensors inside it too."""
    return {k: _cpu_copy(v) for k, v in module.state_dict().items()}


__all__ = [
    "CHECKPOINT_NAME", "atomic_write", "atomic_write_text", "atomic_write_json",
    "get_rng_state", "set_rng_state", "save_checkpoint", "load_checkpoint", "clone_state_dict",
]
