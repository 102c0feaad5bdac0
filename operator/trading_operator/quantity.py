"""Kubernetes resource quantities (`250m`, `1Gi`, `1e3`) parsed as the API server parses them (pure).

Used where a quantity the operator writes must be one a cluster accepts: `spec.serving.resources`
of a TradingModel, and the embedded stack's API when it admits Pods and Deployments.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

# k8s.io/apimachinery/pkg/api/resource: the message a real API server answers with (400 BadRequest).
QUANTITY_PATTERN = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
QUANTITY_ERROR = f"quantities must match the regular expression '{QUANTITY_PATTERN}'"
_NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)")
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_EXPONENT_RE = re.compile(r"^[eE][+-]?\d+$")


class InvalidQuantity(ValueError):
    """Not a Kubernetes quantity; str() is the API server's own message."""


def parse_quantity(text: object) -> Decimal:
    """The value of a quantity (an int, or a string such as `500m`, `2Gi`, `1e3`)."""
    if isinstance(text, bool):
        raise InvalidQuantity(QUANTITY_ERROR)
    if isinstance(text, int):
        return Decimal(text)
    raw = str(text)
    number = _NUMBER_RE.match(raw)
    if not isinstance(text, str) or number is None:
        raise InvalidQuantity(QUANTITY_ERROR)
    suffix = raw[number.end() :]
    try:
        value = Decimal(number.group(0))
    except InvalidOperation:
        raise InvalidQuantity(QUANTITY_ERROR) from None
    if suffix in _BINARY:
        return value * Decimal(1024) ** _BINARY[suffix]
    if suffix in _DECIMAL:
        return value.scaleb(_DECIMAL[suffix])
    if _EXPONENT_RE.match(suffix):
        return value.scaleb(int(suffix[1:]))
    raise InvalidQuantity(QUANTITY_ERROR)
