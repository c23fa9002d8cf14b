"""Equation functions, one module per mechanism, and the layers built only from them.

Importing the package imports every mechanism module, so each mixer has joined `MIXERS` (the
registry of `src.layers.mixer`) before a config names it.
"""

from src.layers import (  # noqa: F401  (imported to register their mixers)
    attention,
    compressive_memory,
    memory_bank,
    neural_memory,
    product_keys,
    selective_ssm,
    titans,
)
from src.layers.mixer import MIXERS, Mixer

__all__ = ["MIXERS", "Mixer"]
