"""The pretraining data set: cached images -> MSN views, plus each image's EHR vector."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from training.msn.views import MultiViewTransform


class PretrainDataset(Dataset[dict[str, torch.Tensor]]):
    """Item ``i``: views of ``images[indices[i]]`` and ``ehr[i]`` (an empty vector without EHR).

    ``images`` is the (memory-mapped) uint8 [N, S, S] cache; ``indices`` picks its rows.
    ``boxes`` (int [N, 4]: top, left, height, width; the cache's ``whole`` layout) cuts each
    film out of its padded square before the views are drawn, so random crops see the whole
    film and never the padding; None: the whole square is the image.

    With ``MultiViewTransform(..., uint8=True)`` (pretraining's) the views are uint8 grey
    [.., 1, S, S]; ``training.train_step`` normalises them on the device.
    """

    def __init__(
        self,
        images: np.ndarray,
        indices: np.ndarray,
        transform: MultiViewTransform,
        ehr: np.ndarray | None = None,
        *,
        boxes: np.ndarray | None = None,
    ) -> None:
        if ehr is not None and (ehr.ndim != 2 or len(ehr) != len(indices)):
            raise ValueError(f"ehr must be [{len(indices)}, n], got {None if ehr is None else ehr.shape}")
        if len(indices) and (indices.min() < 0 or indices.max() >= len(images)):
            raise ValueError(f"indices must lie in [0, {len(images)}), got {indices.min()}..{indices.max()}")
        if boxes is not None and boxes.shape != (len(images), 4):
            raise ValueError(f"boxes must be [{len(images)}, 4], got {boxes.shape}")
        self.images = images
        self.indices = indices
        self.transform = transform
        self.ehr = None if ehr is None else np.ascontiguousarray(ehr, dtype=np.float32)
        self.boxes = boxes

    @property
    def ehr_dim(self) -> int:
        return 0 if self.ehr is None else self.ehr.shape[1]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        index = self.indices[item]
        image = np.asarray(self.images[index])
        if self.boxes is not None:
            top, left, height, width = (int(v) for v in self.boxes[index])
            image = image[top : top + height, left : left + width]
        views = self.transform(image)
        ehr = torch.zeros(0) if self.ehr is None else torch.from_numpy(self.ehr[item])
        return {"target": views.target, "rand": views.rand, "focal": views.focal, "ehr": ehr}
