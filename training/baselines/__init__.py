"""Image-only pretraining baselines of the paper's Table 3: DINO and MAE on the same ViTs and data."""
