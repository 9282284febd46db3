"""The pixel baseline (``training.downstream.pixels``) on one manifest, as a script.

python -m recipes.baseline MANIFEST --out baseline.json [--run-dir DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cxrmsn.fileio import atomic_write_text


def fit_and_score(
    manifest: Path, *, components: int = 32, seed: int = 0, out: Path | None = None
) -> dict[str, Any]:
    from training.downstream.pixels import pixel_baseline

    return pixel_baseline(manifest, out, components=components, seed=seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipes.baseline", description=__doc__.split("\n")[0])
    parser.add_argument("manifest", type=Path, help="a manifest CSV with train/valid/test splits")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--run-dir", type=Path, help="also write metrics.json and predictions/ here")
    parser.add_argument("--components", type=int, default=32, help="PCA components")
    args = parser.parse_args(argv)
    result = fit_and_score(args.manifest, components=args.components, out=args.run_dir)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    macro = result["test"]["macro"]
    print(f"baseline test macro AUROC: {json.dumps(macro.get('auroc'))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
