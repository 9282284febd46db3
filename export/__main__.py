"""``python -m export CHECKPOINT --out DIR``: the same program as ``cxr-msn export``."""

import sys

from export import _standalone, command

sys.exit(_standalone.main(command, "python -m export"))
