"""The 14 CheXpert labels, in the order MIMIC-CXR's CheXpert file uses them.

This tuple is the only definition of the label order in the project: datasets,
model heads, checkpoints, exported models and the HTTP API all follow it.
"""

LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "Pleural Effusion",
    "Pneumonia",
    "Pneumothorax",
    "Pleural Other",
    "Support Devices",
    "No Finding",
)

NUM_LABELS = len(LABELS)


def check_labels(labels: list[str] | tuple[str, ...], *, source: str) -> None:
    """Raise ValueError unless ``labels`` are exactly LABELS in LABELS' order."""
    if tuple(labels) != LABELS:
        raise ValueError(
            f"{source} has labels {list(labels)}; this version of cxr-msn expects "
            f"the 14 CheXpert labels in this order: {list(LABELS)}"
        )
