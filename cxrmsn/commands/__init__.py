"""Subcommands of ``cxr-msn`` that live in the core."""
