"""``python -m pyg_mmrec``: the command line lives in :mod:`pyg_mmrec.cli`."""
import os
import sys

from pyg_mmrec.cli import main


def _leave(rc: int) -> None:
    """Exit with ``rc``. A rank started by ``torchrun`` still holds its process
    group here: it waits for the other ranks (after a clean run), leaves the
    group and exits without the interpreter's teardown, where gloo's threads can
    abort a finished process (signal 6), as the ranks of ``--nproc`` do."""
    dist = sys.modules.get("torch.distributed")  # imported only by a training command
    if dist is not None and dist.is_available() and dist.is_initialized():
        if rc == 0:
            dist.barrier()
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)


if __name__ == "__main__":
    _leave(main())
