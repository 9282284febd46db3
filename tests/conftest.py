"""Fixtures shared across the test packages."""

from tests.browser import chromium

__all__ = ["chromium"]  # a real headless Chromium (skips, with the reason, without one)
