"""Data: the manifest format, its builders (MIMIC, CheXpert, NIH, ../shared/data), the image cache."""
