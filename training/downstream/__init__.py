"""Downstream evaluation: linear evaluation, fine-tuning, metrics, reports and experiments."""
