"""What can go wrong in the model store, in words an on-call person understands."""

from __future__ import annotations


class StoreError(Exception):
    """Base class; `retryable` says whether waiting may fix it."""

    retryable = False


class VersionNotFound(StoreError):
    """No complete version at archive/<version>/ (maybe not uploaded yet)."""

    retryable = True


class CorruptVersion(StoreError):
    """A version whose files do not match its manifest: never served."""


class PublishConflict(StoreError):
    """A version that exists already with other content."""


class InvalidArtifacts(StoreError):
    """Files that do not make a servable model version."""


class RegistryError(StoreError):
    """A metadata/*.json document that cannot be read or updated; the stage itself is fine."""

    retryable = True


class PromotionInProgress(StoreError):
    """Another writer started a move of the same stage at the same instant."""

    retryable = True
