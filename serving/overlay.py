"""Attention heatmap over the model's view of the image, as PNG bytes (numpy + Pillow).

The model's view is its input pixels: the repository's resize and centre crop of the decoded
image (``crop`` x ``crop``, before normalisation), enlarged to ``OVERLAY_SIDE`` x
``OVERLAY_SIDE`` with nearest neighbour, so each pixel the model saw is one visible block
(7 x 7 display pixels at 64 px, 2 x 2 at 224 px) and no detail it did not see is drawn.
The attention map ([gh, gw], the model's patch grid: 8 x 8 at 64 px with 8 px patches,
14 x 14 at 224 px with 16 px patches) covers the same square and is upsampled onto it.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from cxrmsn.preprocess import Extent, PreprocessConfig, resize_and_crop

# Anchor colours of a perceptually ordered dark-red-yellow-white map (like "inferno").
_ANCHORS = np.array(
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float32
)
#: Side of the ``image=true`` and ``overlay=true`` PNGs and the Secondary Capture, whatever the
#: model's input size (the /ui page shows them at this size).
OVERLAY_SIDE = 448


def colour_map(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB float32 in [0, 255], shape (..., 3)."""
    position = np.clip(values, 0.0, 1.0) * (len(_ANCHORS) - 1)
    low = np.floor(position).astype(np.intp).clip(0, len(_ANCHORS) - 2)
    fraction = (position - low)[..., None]
    return _ANCHORS[low] * (1 - fraction) + _ANCHORS[low + 1] * fraction


def model_view(grey: np.ndarray, preprocessing: PreprocessConfig, extent: Extent | None = None) -> np.ndarray:
    """The model's input pixels (its resize and centre crop) at ``OVERLAY_SIDE`` pixels, in [0, 1].

    Enlarged with nearest neighbour (a crop larger than ``OVERLAY_SIDE`` is shrunk with a box
    filter), so what is shown is what the model saw, not a sharper rendering of the source.
    ``extent``: ``DecodedImage.extent`` of a reduced decode.
    """
    seen = resize_and_crop(grey, preprocessing, extent=extent)
    if seen.shape == (OVERLAY_SIDE, OVERLAY_SIDE):
        return seen
    resample = Image.Resampling.NEAREST if preprocessing.crop < OVERLAY_SIDE else Image.Resampling.BOX
    shown = Image.fromarray(np.ascontiguousarray(seen, dtype=np.float32), mode="F").resize(
        (OVERLAY_SIDE, OVERLAY_SIDE), resample
    )
    return np.asarray(shown, dtype=np.float32)


def overlay_rgb(
    grey: np.ndarray, attention: np.ndarray, preprocessing: PreprocessConfig, extent: Extent | None = None
) -> np.ndarray:
    """The model's view with attention blended over it: uint8 [side, side, 3].

    ``grey`` is the decoded image in [0, 1]; ``attention`` the [gh, gw] map on the model's
    patch grid, upsampled (bicubic) over the whole view: cell (i, j) covers the view's rows
    ``[i, i + 1) * side / gh`` and columns ``[j, j + 1) * side / gw``.
    """
    background = model_view(grey, preprocessing, extent)
    peak = float(attention.max())
    heat = attention / peak if peak > 0 else attention
    heat_image = Image.fromarray(heat.astype(np.float32), mode="F").resize(
        (OVERLAY_SIDE, OVERLAY_SIDE), Image.Resampling.BICUBIC
    )
    heat_up = np.clip(np.asarray(heat_image), 0.0, 1.0)
    alpha = (0.15 + 0.5 * heat_up)[..., None]
    rgb = background[..., None] * 255.0 * (1 - alpha) + colour_map(heat_up) * alpha
    return np.clip(rgb, 0, 255).astype(np.uint8)


def png_bytes(pixels: np.ndarray) -> bytes:
    """uint8 grey [h, w] or RGB [h, w, 3], or float grey in [0, 1], as PNG bytes."""
    if pixels.dtype != np.uint8:
        pixels = np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def overlay_png(
    grey: np.ndarray, attention: np.ndarray, preprocessing: PreprocessConfig, extent: Extent | None = None
) -> bytes:
    return png_bytes(overlay_rgb(grey, attention, preprocessing, extent))
