"""The object semantics of the Kubernetes API server, in memory and without I/O.

What kopf, kubectl and an operator's status logic rely on and a bare emulator lacks:
uids, creation timestamps, one global monotonically increasing resourceVersion,
``metadata.generation`` that moves only with the spec, the status subresource, optimistic
concurrency, finalizers, garbage collection of owned objects, CRD schemas (pruning,
defaults, validation), and watch streams that resume from a resourceVersion.

All methods are synchronous and must be called from one event loop thread: each
operation is atomic because it never awaits. Stored objects are never mutated in
place (every write stores a new dict), so events and readers can share them.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import datetime
import logging
import random
import string
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from crd_validation import cel as cel_rules
from crd_validation import structural as schemas
from crd_validation.structural import copy_json
from devstack import builtin_validation, defaults, errors
from devstack.kinds import CRDError, ResourceKey, ResourceType, resource_types_from_crd, valid_name
from devstack.selectors import FieldRequirement, Requirement, fields_match, labels_match

log = logging.getLogger(__name__)

CRD_KEY: ResourceKey = ("apiextensions.k8s.io", "v1", "customresourcedefinitions")
NAMESPACE_KEY: ResourceKey = ("", "v1", "namespaces")
POD_KEY: ResourceKey = ("", "v1", "pods")
SERVICE_ACCOUNT_KEY: ResourceKey = ("", "v1", "serviceaccounts")
SECRET_KEY: ResourceKey = ("", "v1", "secrets")
_SERVER_OWNED_METADATA = (
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
    "resourceVersion",
    "managedFields",
    "selfLink",
)
_NAME_ALPHABET = string.ascii_lowercase + string.digits  # of generateName's suffix
ObjectAddress = tuple[str | None, str]  # (namespace, name)
# A label (key, value) in the label index, or None for labels that are not a mapping (see _label_pairs)
LabelPair = tuple[str, str] | None


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class WatchEvent:
    resource_version: int
    type: str  # ADDED | MODIFIED | DELETED
    key: ResourceKey
    object: dict[str, Any]
    previous: dict[str, Any] | None = None


@dataclass(frozen=True)
class Selection:
    """Which objects a list or watch request selects."""

    namespace: str | None = None
    name: str | None = None
    labels: tuple[Requirement, ...] = ()
    fields: tuple[FieldRequirement, ...] = ()

    def selects(self, obj: Mapping[str, Any] | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata") or {}
        return (
            (self.namespace is None or meta.get("namespace") == self.namespace)
            and (self.name is None or meta.get("name") == self.name)
            # most watches select by namespace alone, and test every event of their kind
            and (not self.labels or labels_match(self.labels, meta.get("labels")))
            and (not self.fields or fields_match(self.fields, obj))
        )


@dataclass(eq=False)
class Watcher:
    """One watch stream's selection and queue; ``None`` in the queue means the server is stopping."""

    key: ResourceKey
    selection: Selection
    queue: asyncio.Queue[dict[str, Any] | None] = field(default_factory=asyncio.Queue)

    def translate(self, event: WatchEvent) -> dict[str, Any] | None:
        """The event as this watcher sees it: objects entering or leaving its selection are added or deleted."""
        now_selected = self.selection.selects(event.object)
        if event.type != "MODIFIED":
            return {"type": event.type, "object": event.object} if now_selected else None
        was_selected = self.selection.selects(event.previous)
        if now_selected and was_selected:
            return {"type": "MODIFIED", "object": event.object}
        if now_selected:
            return {"type": "ADDED", "object": event.object}
        if was_selected:
            return {"type": "DELETED", "object": event.object}
        return None


@dataclass
class WriteResult:
    object: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    created: bool = False


Listener = Callable[[str, ResourceType, dict[str, Any]], None]


class ObjectStore:
    def __init__(self, *, event_log_size: int = 20000) -> None:
        self.types: dict[ResourceKey, ResourceType] = {}
        self._objects: dict[ResourceKey, dict[ObjectAddress, dict[str, Any]]] = collections.defaultdict(dict)
        self._uids: dict[str, tuple[ResourceKey, ObjectAddress]] = {}
        # owner uid -> the objects whose ownerReferences name it: garbage collection looks there
        # instead of walking every object (events included) on every delete
        self._dependents: dict[str, set[tuple[ResourceKey, ObjectAddress]]] = collections.defaultdict(set)
        # kind -> label -> the objects that carry it: a list by label selector (the pods of one
        # model) tests those instead of every object of the kind
        self._labelled: dict[ResourceKey, dict[LabelPair, set[ObjectAddress]]] = collections.defaultdict(dict)
        self._rv = 0
        self._log: collections.deque[WatchEvent] = collections.deque(maxlen=event_log_size)
        self._watchers: set[Watcher] = set()
        self.listeners: list[Listener] = []
        self.type_listeners: list[Callable[[], None]] = []

    # -- resource types -------------------------------------------------------------------

    def register(self, rt: ResourceType) -> None:
        self.types[rt.key] = rt
        for listener in self.type_listeners:
            listener()

    def unregister(self, key: ResourceKey) -> None:
        self.types.pop(key, None)
        for listener in self.type_listeners:
            listener()

    def resource_type(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self.types.get((group, version, plural))

    @property
    def resource_version(self) -> str:
        return str(self._rv)

    # -- reading --------------------------------------------------------------------------

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self._objects[rt.key].get((self._scope(rt, namespace), name))
        if obj is None:
            raise errors.not_found(rt, name)
        return obj

    def find(self, rt: ResourceType, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self._objects[rt.key].get((self._scope(rt, namespace), name))

    def list(self, rt: ResourceType, selection: Selection = Selection()) -> list[dict[str, Any]]:
        objects = self._objects[rt.key]
        candidates = self._candidates(rt, selection)
        pool = objects.values() if candidates is None else (objects[a] for a in candidates if a in objects)
        found = [obj for obj in pool if selection.selects(obj)]
        return sorted(found, key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]))

    def _candidates(self, rt: ResourceType, selection: Selection) -> set[ObjectAddress] | None:
        """Addresses that hold every object the selection may select (None: any object may); the
        selection still tests each of them."""
        if selection.name is not None and (selection.namespace is not None or not rt.namespaced):
            return {(selection.namespace, selection.name)}
        index = self._labelled.get(rt.key, {})
        narrowest: set[ObjectAddress] | None = None
        for requirement in selection.labels:
            if requirement.operator in ("=", "in"):  # only objects with one of its values can match
                having = set().union(*(index.get((requirement.key, value), ()) for value in requirement.values))
                if narrowest is None or len(having) < len(narrowest):
                    narrowest = having
        return None if narrowest is None else narrowest | index.get(None, set())

    def all_objects(self) -> Iterator[tuple[ResourceType, dict[str, Any]]]:
        for key, objects in list(self._objects.items()):
            rt = self.types.get(key)
            if rt is not None:
                for obj in list(objects.values()):
                    yield rt, obj

    # -- watching -------------------------------------------------------------------------

    def watch(
        self, rt: ResourceType, selection: Selection, *, since: int | None = None
    ) -> tuple[list[dict[str, Any]], Watcher]:
        """Start a watch: the events to send first, and the watcher whose queue gets the rest.

        ``since`` None or 0 starts with synthetic ADDED events for the current objects;
        a resourceVersion replays what happened after it, or raises 410 Expired when
        the event log no longer reaches back that far (clients then re-list).
        """
        watcher = Watcher(rt.key, selection)
        if not since:
            initial = [{"type": "ADDED", "object": obj} for obj in self.list(rt, selection)]
        else:
            oldest = self._log[0].resource_version if self._log else self._rv + 1
            if since < oldest - 1 and since < self._rv:
                raise errors.expired(since)
            initial = [
                translated
                for event in self._log
                if event.resource_version > since and event.key == rt.key
                for translated in [watcher.translate(event)]
                if translated is not None
            ]
        self._watchers.add(watcher)
        return initial, watcher

    def unwatch(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    def close_watchers(self) -> None:
        for watcher in list(self._watchers):
            watcher.queue.put_nowait(None)
        self._watchers.clear()

    # -- writing --------------------------------------------------------------------------

    def create(
        self,
        rt: ResourceType,
        namespace: str | None,
        body: Any,
        *,
        dry_run: bool = False,
        field_validation: str = "",
    ) -> WriteResult:
        if not isinstance(body, dict):
            raise errors.bad_request("the request body must be a JSON object")
        obj = copy_json(body)
        self._check_type_meta(rt, obj)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata must be an object")
        if rt.namespaced:
            if namespace is None:
                raise errors.bad_request(f"{rt.kind} is namespaced: create it under /namespaces/<namespace>/")
            if meta.get("namespace") not in (None, "", namespace):
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise errors.invalid(
                    rt,
                    "",
                    [
                        schemas.FieldError(
                            "metadata.name", "FieldValueRequired", "Required value: name or generateName is required"
                        )
                    ],
                )
            meta["name"] = self._generate_name(rt, namespace, meta["generateName"])
        name = meta["name"]
        if not valid_name(name):
            raise errors.invalid(
                rt,
                name,
                [
                    schemas.FieldError(
                        "metadata.name",
                        "FieldValueInvalid",
                        f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower case '
                        "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
                    )
                ],
            )
        if self.find(rt, namespace, name) is not None:
            raise errors.already_exists(rt, name)
        for key in _SERVER_OWNED_METADATA:
            meta.pop(key, None)
        if rt.has_status:
            obj.pop("status", None)
        warnings = self._admit(rt, obj, field_validation)
        if rt.key == POD_KEY:
            self._admit_service_account(obj)
        meta = obj["metadata"]  # admission may have rebuilt the object
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta["generation"] = 1
        if dry_run:
            meta["resourceVersion"] = self.resource_version
            return WriteResult(obj, warnings, created=True)
        self._commit(rt, "ADDED", obj, None)
        return WriteResult(obj, warnings, created=True)

    def replace(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
        field_validation: str = "",
    ) -> WriteResult:
        """PUT: the body replaces the object (or only its status, for the status subresource)."""
        if not isinstance(body, dict):
            raise errors.bad_request("the request body must be a JSON object")
        current = self.get(rt, namespace, name)
        body_meta = body.get("metadata") or {}
        if body_meta.get("name") not in (None, name):
            raise errors.bad_request(
                f"the name of the object ({body_meta.get('name')}) does not match the name on the URL ({name})"
            )
        expected_rv = body_meta.get("resourceVersion")
        if expected_rv and expected_rv != current["metadata"]["resourceVersion"]:
            raise errors.stale(rt, name)
        return self._update(
            rt, current, body, subresource=subresource, dry_run=dry_run, field_validation=field_validation
        )

    def update_with(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        change: Callable[[dict[str, Any]], dict[str, Any]],
        *,
        subresource: str | None = None,
        dry_run: bool = False,
        field_validation: str = "",
    ) -> WriteResult:
        """PATCH: ``change`` maps the current object to the desired one, without changing it (it is
        the stored object: the patch functions return new dicts and may share the parts they leave).

        A resourceVersion the patch put into metadata is a precondition, as on the real server.
        """
        current = self.get(rt, namespace, name)
        desired = change(current)
        expected_rv = (desired.get("metadata") or {}).get("resourceVersion")
        if expected_rv and expected_rv != current["metadata"]["resourceVersion"]:
            raise errors.stale(rt, name)
        return self._update(
            rt, current, desired, subresource=subresource, dry_run=dry_run, field_validation=field_validation
        )

    def delete(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        *,
        propagation: str | None = None,
        preconditions: Mapping[str, Any] | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Delete now, or mark for deletion while finalizers remain; owned objects follow."""
        current = self.get(rt, namespace, name)
        meta = current["metadata"]
        preconditions = preconditions or {}
        if preconditions.get("uid") not in (None, meta["uid"]):
            raise errors.conflict(
                rt,
                name,
                f"Precondition failed: UID in precondition: {preconditions['uid']}, UID in object meta: {meta['uid']}",
            )
        if preconditions.get("resourceVersion") not in (None, meta["resourceVersion"]):
            raise errors.stale(rt, name)
        if dry_run:
            return current
        if propagation == "Foreground":
            self._collect_dependents(meta["uid"], propagation, force=True)
        if meta.get("finalizers"):
            if meta.get("deletionTimestamp"):
                return current
            marked = _restamped(current)
            marked["metadata"]["deletionTimestamp"] = now_rfc3339()
            marked["metadata"]["deletionGracePeriodSeconds"] = 0
            self._commit(rt, "MODIFIED", marked, current)
            return marked
        return self._remove(rt, current, propagation)

    # -- internals ------------------------------------------------------------------------

    def _update(
        self,
        rt: ResourceType,
        current: dict[str, Any],
        desired: dict[str, Any],
        *,
        subresource: str | None,
        dry_run: bool,
        field_validation: str,
    ) -> WriteResult:
        # desired may share parts with the stored object (a patch) or the caller (a PUT body): the
        # write is composed shallowly from both, then copied once, and admission changes that copy.
        if subresource == "status":
            if not rt.has_status:
                raise errors.resource_not_found(f"{rt.qualified_plural}/status")
            composed = dict(current)
            status_source = desired
        elif subresource is None:
            composed = dict(desired)
            self._check_type_meta(rt, composed)
            status_source = current
        else:
            raise errors.method_not_allowed(f"{rt.qualified_plural}/{subresource}")
        if subresource == "status" or rt.has_status:
            if status_source.get("status") is None:
                composed.pop("status", None)
            else:
                composed["status"] = status_source["status"]
        result = copy_json(composed)

        meta = result.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata must be an object")
        old_meta = current["metadata"]
        for key in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds"):
            if key in old_meta:
                meta[key] = old_meta[key]
            else:
                meta.pop(key, None)
        meta.pop("managedFields", None)
        meta["resourceVersion"] = old_meta["resourceVersion"]
        meta["generation"] = old_meta.get("generation", 1)
        if old_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise errors.invalid(
                    rt,
                    meta["name"],
                    [
                        schemas.FieldError(
                            "metadata.finalizers",
                            "FieldValueForbidden",
                            f"Forbidden: no new finalizers can be added if the object is being deleted, found new "
                            f"finalizers {sorted(added)!r}",
                        )
                    ],
                )
        if not meta.get("finalizers"):
            meta.pop("finalizers", None)
        warnings = self._admit(rt, result, field_validation, current)
        meta = result["metadata"]  # admission may have rebuilt the object
        if result == current:
            return WriteResult(current, warnings)  # a no-op write changes nothing, not even the resourceVersion
        if _spec_part(rt, result) != _spec_part(rt, current):
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        if dry_run:
            return WriteResult(result, warnings)
        self._commit(rt, "MODIFIED", result, current)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return WriteResult(self._remove(rt, result, None), warnings)
        return WriteResult(result, warnings)

    def _admit(
        self, rt: ResourceType, obj: dict[str, Any], field_validation: str, old: dict[str, Any] | None = None
    ) -> list[str]:
        """Kind-specific preparation, then the CRD schema: prune, default, validate, CEL rules."""
        if not rt.is_custom:
            defaults.apply(rt.group, rt.kind, obj)
            builtin_validation.check(rt, obj, old)
        if rt.key == SECRET_KEY:
            _fold_string_data(obj)
        if rt.key == NAMESPACE_KEY:
            obj.setdefault("status", {}).setdefault("phase", "Active")
        if rt.key == CRD_KEY:
            self._admit_crd(rt, obj)
        warnings: list[str] = []
        if rt.schema:
            # obj is the write's own copy (see create and _update): no need to prune and default another
            _, dropped = schemas.prune(rt.schema, obj, in_place=True)
            if dropped:
                if field_validation == "Strict":
                    listed = ", ".join(f'unknown field "{path}"' for path in dropped)
                    raise errors.bad_request(
                        f'{rt.kind} in version "{rt.version}" cannot be handled as a '
                        f"{rt.kind}: strict decoding error: {listed}"
                    )
                if field_validation == "Warn":
                    warnings.extend(f'unknown field "{path}"' for path in dropped)
            schemas.apply_defaults(rt.schema, obj, in_place=True)
            assert rt.validator is not None
            field_errors = schemas.validate(rt.validator, obj) or cel_rules.violations(rt.schema, obj, old)
            if field_errors:
                raise errors.invalid(rt, obj["metadata"].get("name", ""), field_errors)
        return warnings

    def _admit_service_account(self, pod: dict[str, Any]) -> None:
        """The ServiceAccount admission plugin: a pod naming an account that does not exist is
        refused (the ReplicaSet controller then reports FailedCreate and creates no pod)."""
        account = (pod.get("spec") or {}).get("serviceAccountName")
        meta = pod["metadata"]
        accounts = self.types.get(SERVICE_ACCOUNT_KEY)
        if not account or account == "default" or accounts is None:
            return  # every namespace has its default account
        if self.find(accounts, meta.get("namespace"), account) is None:
            raise errors.ApiError(
                403,
                "Forbidden",
                f'pods "{meta["name"]}" is forbidden: error looking up service account '
                f'{meta.get("namespace")}/{account}: serviceaccount "{account}" not found',
            )

    def _admit_crd(self, rt: ResourceType, crd: dict[str, Any]) -> None:
        try:
            served = resource_types_from_crd(crd)
        except CRDError as exc:
            name = (crd.get("metadata") or {}).get("name", "")
            raise errors.invalid(rt, name, [schemas.FieldError("spec", "FieldValueInvalid", str(exc))]) from exc
        names = dict((crd.get("spec") or {}).get("names") or {})
        names.setdefault("singular", served[0].singular)
        names.setdefault("listKind", f"{served[0].kind}List")
        now = now_rfc3339()
        crd["status"] = {
            "acceptedNames": names,
            "storedVersions": [v["name"] for v in crd["spec"]["versions"] if v.get("storage")],
            "conditions": [
                {
                    "type": "NamesAccepted",
                    "status": "True",
                    "reason": "NoConflicts",
                    "message": "no conflicts found",
                    "lastTransitionTime": now,
                },
                {
                    "type": "Established",
                    "status": "True",
                    "reason": "InitialNamesAccepted",
                    "message": "the initial names have been accepted",
                    "lastTransitionTime": now,
                },
            ],
        }

    def _sync_crd_types(self, event_type: str, crd: dict[str, Any]) -> None:
        name = crd["metadata"]["name"]
        old_keys = {key for key, rt in self.types.items() if rt.crd_name == name}
        new_types = [] if event_type == "DELETED" else resource_types_from_crd(crd)
        for key in old_keys - {rt.key for rt in new_types}:
            for obj in list(self._objects.get(key, {}).values()):
                self._remove(self.types[key], obj, None)
            self.unregister(key)
        for new_rt in new_types:
            self.register(new_rt)

    def _commit(self, rt: ResourceType, event_type: str, obj: dict[str, Any], previous: dict[str, Any] | None) -> None:
        self._rv += 1
        meta = obj["metadata"]
        meta["resourceVersion"] = str(self._rv)
        obj["apiVersion"] = rt.api_version
        obj["kind"] = rt.kind
        address = (meta.get("namespace"), meta["name"])
        for ref in ((previous or {}).get("metadata") or {}).get("ownerReferences") or []:
            self._dependents.get(ref.get("uid", ""), set()).discard((rt.key, address))
        self._index_labels(
            rt.key, address, _label_pairs(previous), _label_pairs(None if event_type == "DELETED" else obj)
        )
        if event_type == "DELETED":
            self._objects[rt.key].pop(address, None)
            self._uids.pop(meta["uid"], None)
        else:
            self._objects[rt.key][address] = obj
            self._uids[meta["uid"]] = (rt.key, address)
            for ref in meta.get("ownerReferences") or []:
                self._dependents[ref.get("uid", "")].add((rt.key, address))
        event = WatchEvent(self._rv, event_type, rt.key, obj, previous)
        self._log.append(event)
        for watcher in list(self._watchers):
            if watcher.key == rt.key:
                translated = watcher.translate(event)
                if translated is not None:
                    watcher.queue.put_nowait(translated)
        if rt.key == CRD_KEY:
            self._sync_crd_types(event_type, obj)
        for listener in self.listeners:
            try:
                listener(event_type, rt, obj)
            except Exception:  # a listener must not break the API
                log.exception("event=listener_failed kind=%s name=%s", rt.kind, meta["name"])

    def _index_labels(
        self, key: ResourceKey, address: ObjectAddress, before: frozenset[LabelPair], after: frozenset[LabelPair]
    ) -> None:
        if before == after:
            return
        index = self._labelled[key]
        for pair in before - after:
            holders = index.get(pair, set())
            holders.discard(address)
            if not holders:
                index.pop(pair, None)
        for pair in after - before:
            index.setdefault(pair, set()).add(address)

    def _remove(self, rt: ResourceType, current: dict[str, Any], propagation: str | None) -> dict[str, Any]:
        removed = _restamped(current)
        self._commit(rt, "DELETED", removed, current)
        self._collect_dependents(removed["metadata"]["uid"], propagation)
        if not self._dependents.get(removed["metadata"]["uid"]):
            self._dependents.pop(removed["metadata"]["uid"], None)
        if rt.key == NAMESPACE_KEY:
            namespace = removed["metadata"]["name"]
            for other_rt, obj in list(self.all_objects()):
                if other_rt.namespaced and obj["metadata"].get("namespace") == namespace:
                    self._delete_quietly(other_rt, obj, None)
        return removed

    def _collect_dependents(self, owner_uid: str, propagation: str | None, *, force: bool = False) -> None:
        """Garbage collection: dependents whose owners are all gone are deleted (or orphaned)."""
        for key, address in sorted(self._dependents.get(owner_uid, ()), key=repr):
            rt, obj = self.types.get(key), self._objects[key].get(address)
            if rt is None or obj is None:
                continue
            refs = obj["metadata"].get("ownerReferences") or []
            if not any(ref.get("uid") == owner_uid for ref in refs):
                continue
            if propagation == "Orphan":
                orphaned = _restamped(obj)
                orphaned["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != owner_uid]
                if not orphaned["metadata"]["ownerReferences"]:
                    del orphaned["metadata"]["ownerReferences"]
                self._commit(rt, "MODIFIED", orphaned, obj)
            elif force or not any(ref.get("uid") in self._uids for ref in refs if ref.get("uid") != owner_uid):
                self._delete_quietly(rt, obj, "Background" if propagation != "Foreground" else propagation)

    def _delete_quietly(self, rt: ResourceType, obj: dict[str, Any], propagation: str | None) -> None:
        meta = obj["metadata"]
        if self.find(rt, meta.get("namespace"), meta["name"]) is None:
            return  # already gone through another owner
        try:
            self.delete(rt, meta.get("namespace"), meta["name"], propagation=propagation)
        except errors.ApiError as exc:
            log.warning("event=gc_failed kind=%s name=%s error=%s", rt.kind, meta["name"], exc.message)

    def _check_type_meta(self, rt: ResourceType, obj: dict[str, Any]) -> None:
        api_version = obj.get("apiVersion")
        kind = obj.get("kind")
        if api_version not in (None, "", rt.api_version):
            raise errors.bad_request(
                f"the API version in the data ({api_version}) does not match the expected API "
                f"version ({rt.api_version})"
            )
        if kind not in (None, "", rt.kind):
            raise errors.bad_request(f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})")
        obj["apiVersion"] = rt.api_version
        obj["kind"] = rt.kind

    def _scope(self, rt: ResourceType, namespace: str | None) -> str | None:
        return namespace if rt.namespaced else None

    def _generate_name(self, rt: ResourceType, namespace: str | None, prefix: str) -> str:
        while True:
            # the names need not be secret, only distinct: one call for five characters, not five to the OS
            name = prefix + "".join(random.choices(_NAME_ALPHABET, k=5))
            if self.find(rt, namespace, name) is None:
                return name


def _label_pairs(obj: Mapping[str, Any] | None) -> frozenset[LabelPair]:
    """Where the label index files an object: under each (key, value) of its labels whose value is a
    string (no other value meets a selector's = or in), or under None if its labels are not a mapping
    (a selector tests those as it did before there was an index: a list then fails as it did)."""
    labels = ((obj or {}).get("metadata") or {}).get("labels")
    if not labels:
        return frozenset()
    if not isinstance(labels, Mapping):
        return frozenset({None})
    return frozenset((key, value) for key, value in labels.items() if isinstance(value, str))


def _restamped(obj: dict[str, Any]) -> dict[str, Any]:
    """A version of a stored object for _commit to stamp (it sets metadata.resourceVersion,
    apiVersion and kind) or for a caller to change metadata of: the rest is shared, never mutated."""
    return {**obj, "metadata": dict(obj["metadata"])}


def _spec_part(rt: ResourceType, obj: Mapping[str, Any]) -> dict[str, Any]:
    """What metadata.generation tracks: everything but metadata (and status, if it is a subresource)."""
    skipped = {"metadata", "apiVersion", "kind"} | ({"status"} if rt.has_status else set())
    return {k: v for k, v in obj.items() if k not in skipped}


def _fold_string_data(secret: dict[str, Any]) -> None:
    """Secrets store stringData base64-encoded under data, as the real API server does."""
    string_data = secret.pop("stringData", None) or {}
    if string_data:
        data = dict(secret.get("data") or {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        secret["data"] = data
