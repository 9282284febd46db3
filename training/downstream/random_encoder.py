"""The random-init control's encoder: the weights MSN pretraining starts from, saved as a checkpoint."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path


def write_random_encoder(pretrain_dir: Path, out: Path, *, seed: int) -> Path:
    """The architecture of ``pretrain_dir``'s encoder, randomly initialised as pretraining starts.

    ``MSNAnchor`` builds its encoder first after ``torch.manual_seed(train.seed)``, so with
    the same seed these are exactly the weights the MSN run started from. The metadata keeps
    the pretraining manifest (so linear evaluation reads the same splits) and says what it is.
    """
    import torch

    from cxrmsn.checkpoint import read_metadata, save_checkpoint
    from cxrmsn.model import create_encoder

    source = read_metadata(pretrain_dir / "checkpoints" / "encoder.safetensors")
    with torch.random.fork_rng():  # leave the caller's random state as it was
        torch.manual_seed(seed)
        encoder = create_encoder(source.architecture, dynamic_img_size=True)
    training_data = {
        **source.training_data,
        "summary": f"random initialisation (seed {seed}), no pretraining: a control",
    }
    metadata = replace(
        source,
        training_data=training_data,
        metrics={},
        extra={"method": "random-init", "seed": seed, "control_for": str(pretrain_dir)},
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, encoder.state_dict(), metadata)
    return out
