"""Import ViT weights from another codebase into the core checkpoint format.

Formats: 'lightning' (the paper's PyTorch Lightning checkpoint: the EMA target encoder
under backbone.*, a torchvision ViT wrapped by lightly), 'msn' (facebookresearch/msn:
target_encoder, DeiT naming) and 'timm' (a plain timm ViT state dict, .safetensors or
torch file). Every key is either mapped explicitly or named as dropped (projection
heads, prototypes, EHR layers, ImageNet heads); anything else is an error, and the
result is loaded strictly. --kind encoder (default) writes an encoder checkpoint for
linear evaluation; --kind classifier adds an untrained all-zero head so that the
model can be exported and served for testing (it reports no findings).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "import ViT weights (paper's Lightning, facebookresearch/msn, timm) into a core checkpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source", type=Path, help="the foreign checkpoint (.ckpt, .pth, .pth.tar, .safetensors)"
    )
    parser.add_argument("out", type=Path, help="core checkpoint to write (.safetensors)")
    parser.add_argument("--format", required=True, choices=("lightning", "msn", "timm"), help="source layout")
    parser.add_argument(
        "--arch",
        required=True,
        help="architecture of the weights; heads cannot be read from weights: the paper's "
        "ViT-Tiny is vit_tiny_h6_patch16_224, timm's and DeiT's vit_tiny_patch16_224",
    )
    parser.add_argument(
        "--kind",
        choices=("encoder", "classifier"),
        default="encoder",
        help="encoder only, or a classifier with an untrained (zero) head",
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load torch files with full unpickling (runs code from the file: trusted files only)",
    )


def run(args: argparse.Namespace) -> int:
    """Exit status 0 on success, 2 for input that cannot be imported (message on stderr)."""
    from export.importers import import_weights

    try:
        metadata = import_weights(
            args.source,
            args.out,
            source_format=args.format,
            architecture=args.arch,
            kind=args.kind,
            allow_pickle=args.allow_pickle,
        )
    except ValueError as exc:  # including CheckpointError from the strict load
        print(f"cxr-msn import-weights: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({metadata.architecture} {metadata.kind}; {metadata.training_data['summary']})")
    return 0


if __name__ == "__main__":
    from export import _standalone

    sys.exit(_standalone.main(sys.modules[__name__], "python -m export.import_command"))
