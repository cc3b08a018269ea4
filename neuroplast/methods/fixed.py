"""``fixed``: plain training at the starting widths, the reference every method is compared to."""

from __future__ import annotations

from dataclasses import dataclass

from ..policy import Method


@dataclass
class FixedWidth(Method):
    """Train the network as built; never resize."""

    name = "fixed"
    description = "plain training at fixed widths (the reference)"
    resizes = False
