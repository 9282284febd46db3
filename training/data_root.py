"""Where the shared data folder (``nih1000/`` and ``covid/``, for ``data.source=shared``) is.

In order: a value given on the command line (``--shared-root``, ``--set data.shared_root=DIR``),
the environment variable ``CXR_MSN_DATA_ROOT``, else ``../shared/data`` beside a source
checkout (computed from this file, so it exists only when running from the checkout; an
installed wheel needs one of the first two).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "CXR_MSN_DATA_ROOT"
CHECKOUT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data_root(explicit: str | Path | None = None, *, check: bool = False, flag: str = "") -> Path:
    """The shared data folder: ``explicit``, else ``$CXR_MSN_DATA_ROOT``, else ``CHECKOUT_DATA``.

    With ``check``, a folder that does not exist is a ValueError naming both ways to give it
    (``flag``, the command-line option of the caller, and the environment variable).
    """
    if explicit:
        root = Path(explicit).expanduser()
    elif os.environ.get(ENV_VAR):
        root = Path(os.environ[ENV_VAR]).expanduser()
    else:
        root = CHECKOUT_DATA
    if check and not root.is_dir():
        option = flag or "--set data.shared_root=DIR"
        raise ValueError(
            f"the shared data folder {root} does not exist: pass it with {option} or set {ENV_VAR}=DIR "
            "(the default, ../shared/data, is there only beside a source checkout)"
        )
    return root
