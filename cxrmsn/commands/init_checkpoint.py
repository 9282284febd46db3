"""Write a randomly initialised classifier in the core checkpoint format.

For integration tests and for trying export and serving before a model is trained.
Its metadata says it is untrained, and no label is marked as having training signal,
so a service running it reports no positive findings.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "write a randomly initialised (untrained) classifier checkpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="checkpoint file to write (.safetensors)")
    parser.add_argument(
        "--arch",
        default="vit_tiny_patch16_224",
        help="encoder architecture: vit_tiny_patch16_224 (timm, 3 heads), "
        "vit_tiny_h6_patch16_224 (the paper's 6 heads), vit_small_patch16_224, "
        "vit_tiny_h6_patch8_64 (64 px, 8 px patches: the small recipes), "
        "vit_nano_patch16_224 and vit_nano_patch8_64 (2 blocks, tests only); the checkpoint's "
        "preprocessing resizes and crops to the architecture's input size",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed for the weights")


def run(args: argparse.Namespace) -> int:
    import torch

    from cxrmsn.checkpoint import CheckpointMetadata, save_checkpoint
    from cxrmsn.model import CXRClassifier, architecture_spec
    from cxrmsn.preprocess import PreprocessConfig

    torch.manual_seed(args.seed)
    model = CXRClassifier(args.arch)
    size = architecture_spec(args.arch).img_size
    metadata = CheckpointMetadata(
        architecture=args.arch,
        preprocessing=PreprocessConfig(resize=size, crop=size).to_dict(),
        extra={"seed": args.seed},
    )
    save_checkpoint(args.out, model.state_dict(), metadata)
    print(f"wrote {args.out} ({args.arch}, untrained)")
    return 0
