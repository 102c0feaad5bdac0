"""What the local API knows about each resource: names, scope, subresources, schema, columns.

Built-in kinds come from kmock's bundled discovery data; custom resources from their
CustomResourceDefinition (``resource_types_from_crd``). Pure data and pure functions.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from crd_validation import structural as schemas
from devstack import tables

ResourceKey = tuple[str, str, str]  # (group, version, plural)

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN_RE = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    singular: str = ""
    namespaced: bool = True
    shortnames: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
    subresources: frozenset[str] = frozenset()
    schema: Mapping[str, Any] | None = field(default=None, compare=False)  # openAPIV3Schema of a CRD version
    printer_columns: tuple[Mapping[str, Any], ...] = field(default=(), compare=False)
    scale: Mapping[str, Any] | None = field(default=None, compare=False)  # CRD subresources.scale
    crd_name: str | None = None  # set for custom resources

    @property
    def key(self) -> ResourceKey:
        return (self.group, self.version, self.plural)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified_plural(self) -> str:
        """How error messages name the resource: ``pods``, ``deployments.apps``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        """How validation errors name the kind: ``Pod``, ``TradingModel.trading.io``."""
        return f"{self.kind}.{self.group}" if self.group else self.kind

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    @property
    def is_custom(self) -> bool:
        return self.crd_name is not None

    @functools.cached_property
    def validator(self) -> jsonschema.Draft4Validator | None:
        return schemas.validator_for(self.schema) if self.schema else None

    @functools.cached_property
    def columns(self) -> list[tables.Column]:
        return tables.crd_columns(self.printer_columns) if self.is_custom else tables.builtin_columns(self.kind)

    def replicas_paths(self) -> tuple[str, str, str | None] | None:
        """(spec replicas, status replicas, label selector) JSON paths of the scale subresource."""
        if self.scale:
            return (
                self.scale["specReplicasPath"],
                self.scale["statusReplicasPath"],
                self.scale.get("labelSelectorPath"),
            )
        if "scale" in self.subresources:
            return (".spec.replicas", ".status.replicas", None)
        return None


class CRDError(ValueError):
    """A CustomResourceDefinition the local API cannot serve; the message names the field."""


def valid_name(name: str) -> bool:
    return len(name) <= 253 and bool(_DNS_SUBDOMAIN_RE.match(name))


def resource_types_from_crd(crd: Mapping[str, Any]) -> list[ResourceType]:
    """One ResourceType per served version of an apiextensions.k8s.io/v1 CRD."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group = spec.get("group")
    plural = names.get("plural")
    kind = names.get("kind")
    for field_name, value in (("spec.group", group), ("spec.names.plural", plural), ("spec.names.kind", kind)):
        if not value:
            raise CRDError(f"{field_name}: Required value")
    expected_name = f"{plural}.{group}"
    actual_name = (crd.get("metadata") or {}).get("name")
    if actual_name != expected_name:
        raise CRDError(
            f'metadata.name: Invalid value: "{actual_name}": must be spec.names.plural+"."+spec.group '
            f'("{expected_name}")'
        )
    scope = spec.get("scope", "Namespaced")
    if scope not in ("Namespaced", "Cluster"):
        raise CRDError(f'spec.scope: Unsupported value: "{scope}": supported values: "Cluster", "Namespaced"')
    versions = [v for v in spec.get("versions") or [] if v.get("served", True)]
    if not versions:
        raise CRDError("spec.versions: Invalid value: must have at least one served version")
    result = []
    for version in versions:
        subresources = version.get("subresources") or {}
        result.append(
            ResourceType(
                group=group,
                version=version["name"],
                plural=plural,
                kind=kind,
                singular=names.get("singular") or kind.lower(),
                namespaced=scope == "Namespaced",
                shortnames=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                subresources=frozenset(subresources),
                schema=(version.get("schema") or {}).get("openAPIV3Schema"),
                printer_columns=tuple(version.get("additionalPrinterColumns") or ()),
                scale=subresources.get("scale"),
                crd_name=expected_name,
            )
        )
    return result
