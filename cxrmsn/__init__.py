"""cxr-msn core: labels, image decoding, preprocessing, model and checkpoint format.

Training, export and serving all import this package; it is the single place where
an image becomes a model input. Importing it does not import torch: the model and
checkpoint modules (``cxrmsn.model``, ``cxrmsn.checkpoint``) need the ``train`` extra.
"""

from cxrmsn.labels import LABELS, NUM_LABELS

__all__ = ["LABELS", "NUM_LABELS", "__version__"]

__version__ = "0.1.0"
