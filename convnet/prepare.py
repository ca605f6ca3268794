"""`python -m convnet.prepare SRC DST` / `convnet-prepare`: see convnet/data/prepare.py."""
import sys

from .data.prepare import main, prepare  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
