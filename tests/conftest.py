"""Shared test settings: hypothesis profiles and small helpers."""

import os
from pathlib import Path

from hypothesis import settings

settings.register_profile("default", deadline=None, max_examples=25)
settings.register_profile("ci", deadline=None, max_examples=25, derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")

ROOT = Path(__file__).resolve().parents[1]
