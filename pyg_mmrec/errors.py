r"""The errors a user can cause, as opposed to bugs.

Every exception the library raises because of its *input* — a configuration
value, a data file, an output folder, a checkpoint, a missing optional
package — derives from :class:`UserInputError`. The command line prints such
an error as one line (``error: <message>``) and exits with status 2; any other
exception is a bug and keeps its traceback. Each class also derives from the
built-in type that code catching errors would expect (``ValueError`` for bad
values, ``OSError`` for folders, ...), so ``except ValueError`` keeps working.

Messages name the file (and line) or the argument at fault and say what was
expected; :file:`docs/errors.md` lists every one with the command that
triggers it.

This module imports nothing heavy: the command line loads it at start-up.
"""
from __future__ import annotations

import os
import os.path as osp
from typing import Optional, Union


class UserInputError(Exception):
    """Base of every error caused by the user's input (printed as one line)."""


class ConfigError(UserInputError, ValueError):
    """A configuration value or key is invalid."""


class DataError(UserInputError, ValueError):
    """A data file is missing, malformed or inconsistent (the message names the
    file and, for the interaction file, the line)."""


class CheckpointError(UserInputError, RuntimeError):
    """A checkpoint cannot be used: truncated, corrupt, or of another version."""


class OutputError(UserInputError, OSError):
    """An output location cannot be written (not a folder, no permission)."""

    def __str__(self) -> str:  # OSError would format "[Errno ...]" around one argument
        return str(self.args[0]) if self.args else ""


class RunStateError(UserInputError, ValueError):
    """A run directory is not in the state a command needs (e.g. ``results``
    on a run that has not finished)."""


class MissingExtraError(UserInputError, ImportError):
    """An optional package needed by the requested feature is not installed."""


def require_extra(module: str, extra: str, feature: str) -> None:
    r"""Fail early when an optional package is not installed.

    Checks that ``module`` can be found (without importing it, so the check is
    cheap) and raises otherwise.

    Args:
        module (str): the importable name, e.g. ``"matplotlib"``.
        extra (str): the ``setup.py`` extra that installs it, e.g. ``"plot"``.
        feature (str): what needs it, e.g. ``"--plot"``.

    Raises:
        MissingExtraError: ``module`` is not installed.
    """
    import importlib.util
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise MissingExtraError(
            f"{feature} needs {module} (the optional extra '{extra}'), which is not installed; "
            f"install it with: pip install 'pyg_mmrec[{extra}]' (or pip install {module})")


def check_output_dir(path: Union[str, os.PathLike], what: str = "--out") -> None:
    r"""Check, before any work, that ``path`` is or can become a writable folder.

    The first existing ancestor of ``path`` decides: it must be a folder (not a
    file) that the current user may write into. Nothing is created.

    Args:
        path: the output folder.
        what (str): how the user named it, for the message (e.g. ``"--out"``).

    Raises:
        OutputError: ``path`` (or an ancestor) is a file, or is not writable.
    """
    path = osp.abspath(os.fspath(path))
    probe: Optional[str] = path
    while probe is not None and not osp.exists(probe):
        parent = osp.dirname(probe)
        probe = None if parent == probe else parent
    if probe is None:  # pragma: no cover - the file system root always exists
        raise OutputError(f"{what} {path}: no existing parent folder")
    if not osp.isdir(probe):
        where = "is a file" if probe == path else f"lies under {probe}, which is a file"
        raise OutputError(f"{what} {path}: {where}; expected a folder (give another {what})")
    # permission bits first: a folder marked read-only is respected even by
    # root, for whom os.access() always says yes (as the dataset cache does)
    if not os.stat(probe).st_mode & 0o222 or not os.access(probe, os.W_OK | os.X_OK):
        where = "" if probe == path else f" (its existing parent {probe})"
        raise OutputError(f"{what} {path}: the folder{where} is not writable by this user; "
                          f"give another {what} or change its permissions")


__all__ = ["UserInputError", "ConfigError", "DataError", "CheckpointError", "OutputError",
           "RunStateError", "MissingExtraError", "require_extra", "check_output_dir"]
