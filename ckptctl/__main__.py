"""``python -m ckptctl``."""

import os
import sys

# `python -m` puts the current folder first on sys.path, and a downloaded checkpoint tree may
# hold a numpy.py or keras.py: never let one shadow the real package. (The ckptctl package
# itself is already imported; --keras-model searches the current folder last.)
sys.path[:] = [entry for entry in sys.path if entry not in ("", ".", os.getcwd())]

from ckptctl.cli import main  # noqa: E402 - after the sys.path cleanup above

if __name__ == "__main__":
    main()
