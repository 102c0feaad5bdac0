"""The one reader of settings from environment variables: every error names the variable and what to set."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_LEVELS = tuple(n for n in logging.getLevelNamesMapping() if n not in ("NOTSET", "WARN", "FATAL"))


class ConfigError(ValueError):
    """A setting that cannot work; the message names the variable and what to set."""


class Env:
    """Typed reads over a mapping (the process environment by default); blank counts as unset."""

    def __init__(self, source: Mapping[str, str] | None = None) -> None:
        self._source = os.environ if source is None else source

    def text(self, name: str, default: str = "") -> str:
        return self._source.get(name, "").strip() or default

    def optional(self, name: str) -> str | None:
        return self.text(name) or None

    def flag(self, name: str, default: bool) -> bool:
        raw = self.text(name).lower()
        if not raw:
            return default
        if raw in _TRUE:
            return True
        if raw in _FALSE:
            return False
        raise ConfigError(f"{name} must be 1/0, true/false, yes/no or on/off, got {self._source[name]!r}")

    def log_level(self, name: str = "LOG_LEVEL", default: str = "INFO") -> str:
        """A logging level name (DEBUG, INFO, WARNING, ERROR, CRITICAL), any case."""
        raw = self.text(name, default).upper()
        if raw not in _LEVELS:
            raise ConfigError(f"{name} must be one of {', '.join(_LEVELS)}, got {self._source[name]!r}")
        return raw

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        return int(self._number(name, default, int, low, high, "a whole number"))

    def seconds(self, name: str, default: float, low: float = 0, high: float = 1e6) -> float:
        return self._number(name, default, float, low, high, "a number of seconds")

    def number(self, name: str, default: float, low: float, high: float) -> float:
        return self._number(name, default, float, low, high, "a number")

    def _number(self, name: str, default: float, kind: type, low: float, high: float, what: str) -> float:
        raw = self.text(name)
        if not raw:
            return default
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigError(f"{name} must be {what}, got {raw!r}") from None
        if not low <= value <= high:
            raise ConfigError(f"{name} must be between {low:g} and {high:g}, got {raw!r}")
        return float(value) if kind is float else int(value)
