"""The pretraining data set: cached images -> MSN views, plus each image's EHR vector."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from training.msn.views import MultiViewTransform


class PretrainDataset(Dataset[dict[str, torch.Tensor]]):
    """Item ``i``: views of ``images[indices[i]]`` and ``ehr[i]`` (an empty vector without EHR).

    ``images`` is the (memory-mapped) uint8 [N, S, S] cache; ``indices`` picks its rows.
    """

    def __init__(
        self,
        images: np.ndarray,
        indices: np.ndarray,
        transform: MultiViewTransform,
        ehr: np.ndarray | None = None,
    ) -> None:
        if ehr is not None and (ehr.ndim != 2 or len(ehr) != len(indices)):
            raise ValueError(f"ehr must be [{len(indices)}, n], got {None if ehr is None else ehr.shape}")
        if len(indices) and (indices.min() < 0 or indices.max() >= len(images)):
            raise ValueError(f"indices must lie in [0, {len(images)}), got {indices.min()}..{indices.max()}")
        self.images = images
        self.indices = indices
        self.transform = transform
        self.ehr = None if ehr is None else np.ascontiguousarray(ehr, dtype=np.float32)

    @property
    def ehr_dim(self) -> int:
        return 0 if self.ehr is None else self.ehr.shape[1]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        views = self.transform(np.asarray(self.images[self.indices[item]]))
        ehr = torch.zeros(0) if self.ehr is None else torch.from_numpy(self.ehr[item])
        return {"target": views.target, "rand": views.rand, "focal": views.focal, "ehr": ehr}
