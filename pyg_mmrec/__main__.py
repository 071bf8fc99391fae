"""``python -m pyg_mmrec``: the command line lives in :mod:`pyg_mmrec.cli`."""
import sys

from pyg_mmrec.cli import main

if __name__ == "__main__":
    sys.exit(main())
