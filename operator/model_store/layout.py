"""Where things live in the bucket (the seeds' layout, kept).

etfs/<TICKER>/{archive/<version>,staging,production}/   one model per ETF
stocks/universal/{archive/<version>,staging,production}/ one model for all stocks
metadata/{asset_registry,model_registry,deployment_history}.json
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

TICKER_PATTERN = r"^[A-Z][A-Z0-9.]{0,9}$"
VERSION_PATTERN = r"^v\d+(\.\d+){0,2}(-[a-z0-9]+(\.[a-z0-9]+)*)?$"
_TICKER_RE = re.compile(TICKER_PATTERN)
_VERSION_RE = re.compile(VERSION_PATTERN)

MANIFEST_NAME = "manifest.json"
MODEL_NATIVE = "lightgbm_model.txt"
MODEL_PICKLE = "lightgbm_model.pkl"
LABEL_ENCODER = "label_encoder.pkl"
FEATURE_NAMES = "feature_names.json"
METADATA = "metadata.json"

ASSET_REGISTRY_KEY = "metadata/asset_registry.json"
MODEL_REGISTRY_KEY = "metadata/model_registry.json"
DEPLOYMENT_HISTORY_KEY = "metadata/deployment_history.json"
INTENTS_PREFIX = "metadata/intents/"


class AssetClass(StrEnum):
    ETF = "etf"
    STOCK = "stock"


class Stage(StrEnum):
    STAGING = "staging"
    PRODUCTION = "production"

    @classmethod
    def parse(cls, value: str) -> Stage:
        """Accept the CRD spelling (`Production`) as well as the prefix (`production`)."""
        try:
            return cls(value.lower())
        except ValueError:
            raise ValueError(f"stage must be Staging or Production, got {value!r}") from None


class InvalidName(ValueError):
    """A ticker or version that does not fit the bucket layout."""


def check_ticker(ticker: str) -> str:
    if not _TICKER_RE.match(ticker):
        raise InvalidName(
            f"ticker {ticker!r} is not valid: use 1-10 upper-case letters, digits or dots, "
            "starting with a letter (e.g. SPY, BRK.B)"
        )
    return ticker


def check_version(version: str) -> str:
    if not _VERSION_RE.match(version):
        raise InvalidName(
            f"version {version!r} is not valid: use v<major>[.<minor>[.<patch>]] with an optional "
            "lower-case suffix (e.g. v1.2, v2.0.1, v1.3-rc1)"
        )
    return version


@dataclass(frozen=True)
class ModelLocation:
    """The model family of one ticker: each ETF has its own, all stocks share one."""

    asset_class: AssetClass
    ticker: str

    @classmethod
    def of(cls, ticker: str, asset_class: AssetClass | str) -> ModelLocation:
        return cls(AssetClass(asset_class), check_ticker(ticker))

    @property
    def root(self) -> str:
        if self.asset_class is AssetClass.STOCK:
            return "stocks/universal"
        return f"etfs/{self.ticker}"

    @property
    def model_key(self) -> str:
        """The name the registry and history use for this model family."""
        return self.root

    def archive_prefix(self, version: str) -> str:
        return f"{self.root}/archive/{check_version(version)}/"

    def archive_root(self) -> str:
        return f"{self.root}/archive/"

    def stage_prefix(self, stage: Stage) -> str:
        return f"{self.root}/{stage.value}/"

    def intent_key(self, stage: Stage) -> str:
        """Where a move into `stage` is written down before the stage is touched (see promotion)."""
        return f"{INTENTS_PREFIX}{self.root}/{stage.value}.json"
