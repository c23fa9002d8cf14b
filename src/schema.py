"""Declarative ranges for constructor arguments that configs may set.

A layer states its hyper-parameters in its constructor signature, e.g.
`n_heads: PositiveInt` or `dropout: Annotated[float, Range(0, 1)]`; `src.config` reads the
signature to validate YAML (unknown, missing, wrong-typed and out-of-range keys), so the schema of
a block is exactly the arguments of the module it builds, written once.
"""

from dataclasses import dataclass
from typing import Annotated, Literal


@dataclass(frozen=True)
class Range:
    """Closed or half-open interval a numeric argument must lie in (None: unbounded)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def violation(self, value: float) -> str | None:
        """Return a description of how `value` falls outside the range, or None."""
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return f"must be {'>' if self.low_open else '>='} {self.low}, got {value}"
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return f"must be {'<' if self.high_open else '<='} {self.high}, got {value}"
        return None


PositiveInt = Annotated[int, Range(low=1)]
NonNegativeInt = Annotated[int, Range(low=0)]
PositiveFloat = Annotated[float, Range(low=0, low_open=True)]
NonNegativeFloat = Annotated[float, Range(low=0)]
UnitFloat = Annotated[float, Range(low=0, high=1)]
BelowOneFloat = Annotated[float, Range(low=0, high=1, high_open=True)]  # e.g. Adam's betas
Seed = Annotated[int, Range(low=0, high=2**32 - 1)]  # kept small: seeds are combined as seed * 1_000_003 + step
Device = Literal["auto", "cpu", "cuda", "mps"]  # auto: CUDA, else Apple's MPS, else the CPU (src.runs.select_device)
