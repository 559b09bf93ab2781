"""The singular-value map of Singular-Value Reweighting as settings (readable without torch: the settings hold it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reweighting:
    """The singular-value map ``sigma -> beta * sigma * exp(-alpha * sigma)``."""

    alpha: float
    beta: float
