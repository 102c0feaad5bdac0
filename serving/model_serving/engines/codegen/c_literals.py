"""C literals for generated code: doubles that read back bit for bit, LightGBM's constants."""

from __future__ import annotations

import math

# LightGBM: `const double kZeroThreshold = 1e-35f;` -- a float literal widened to double,
# so the edge is float32(1e-35), a hair above the double 1e-35.
K_ZERO_THRESHOLD = "1.0000000180025095e-35"


def c_double(value: float) -> str:
    """A C literal that reads back as exactly `value` (repr is the shortest round-trip form)."""
    if math.isinf(value):
        return "(1.0/0.0)" if value > 0 else "(-1.0/0.0)"
    if math.isnan(value):
        raise ValueError("NaN threshold or leaf value cannot be compiled")
    text = repr(float(value))
    return text if any(c in text for c in ".en") else text + ".0"
