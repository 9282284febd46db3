"""Recipes: end-to-end pipelines built from the project's own commands (make bundled-model)."""
