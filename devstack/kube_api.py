"""A local Kubernetes API server: kmock's KubernetesEmulator plus real API semantics, over HTTP.

``LocalKubeEmulator`` keeps kmock's discovery endpoints, request recording and DSL
(reactions added by tests, e.g. ``api.emulator['patch', kmock.resource(...)] << 500``, still
win), and serves every resource request itself from an ``ObjectStore`` (uids, real
resourceVersions, generation, status subresource, CRD schemas, garbage collection, watches
that resume), with Table responses and ``/openapi/v3`` for kubectl.

``LocalKubeAPI`` runs it on a real TCP port::

    async with LocalKubeAPI(port=0, crds=["crds/tradingmodel.yaml"]) as api:
        api.write_kubeconfig("kubeconfig")   # kubectl --kubeconfig kubeconfig get tm
        print(api.url)
"""

from __future__ import annotations

import asyncio
import collections
import copy
import functools
import gc
import json
import logging
import pathlib
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, TypeVar

import aiohttp.web
import attrs
import kmock
import orjson
import yaml
from kmock._internal import aiobus
from kmock._internal.apps import RawHandler
from kmock._internal.parsing import ParsedPath, guess_k8s

from crd_validation.structural import copy_json
from devstack import annotation_keys, api_paths, errors, openapi, patching, tables
from devstack.kinds import ResourceKey, ResourceType
from devstack.selectors import SelectorError, parse_field_selector, parse_label_selector
from devstack.store import CRD_KEY, ObjectStore, Selection, Watcher, WriteResult

log = logging.getLogger(__name__)

SERVER_VERSION = "v1.36.0+local-stack"
_DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
_INITIAL_EVENTS_END = "k8s.io/initial-events-end"
_WATCH_IDLE_SECONDS = 5.0
_INITIAL_BATCH = 100  # a watch's initial events go out this many to a write
REQUEST_COUNTS_PATH = "/local-stack/requests"  # GET: the requests served so far, by client, verb and resource
# GET: the objects sent so far in lists and watch events, by client, resource and namespace/name
SENT_COUNTS_PATH = "/local-stack/sent"
# GET: each distinct (client, API group, resource, verb, namespace) asked for so far, as RBAC names them (the
# namespace is null for a cluster-wide call); DELETE: forget them. What tests compare with manifests/rbac/.
ACCESS_PATH = "/local-stack/access"
T = TypeVar("T")
# The store converts nothing between versions, and kmock's discovery names an arbitrary version
# "preferred": with HPAs under both autoscaling/v1 and v2, `kubectl get hpa` would show either set
# at random. Only v2 is served (what kubectl prefers on a real cluster, and what the operator writes).
_UNSERVED = {("autoscaling", "v1", "horizontalpodautoscalers")}
# _loads looks for 19 digits in a row (an integer orjson may not hold) in the text with every digit
# made "0": a regular expression takes several times longer than orjson's parse
_DIGITS_TO_ZERO = bytes.maketrans(b"0123456789", b"0" * 10)
_LONG_NUMBER = b"0" * 19
# A full garbage collection (by default every 10th of the middle generation) walks the whole heap, and
# the API's heap holds each object's recent versions (the watch event log, kmock's history): in the
# operator benchmark at N=300, 15 of them at ~half a million objects took 5-7 of the API's 22-24 CPU
# seconds. What the API keeps is JSON, without reference cycles: one full collection in 100 is enough.
_FULL_COLLECTION_EVERY = 100


class _ServeNatively(Exception):
    """Raised by the DSL fallback: no test reaction took the request, so the store serves it."""


def _resource_types_from_kmock(resources: kmock.ResourcesArray) -> list[ResourceType]:
    result = []
    for resource in resources:
        info = resources[resource]
        if None in (resource.group, resource.version, resource.plural) or info.kind is None:
            continue
        result.append(
            ResourceType(
                group=resource.group,
                version=resource.version,
                plural=resource.plural,
                kind=info.kind,
                singular=info.singular or info.kind.lower(),
                namespaced=bool(info.namespaced),
                shortnames=tuple(sorted(info.shortnames)),
                categories=tuple(sorted(info.categories)),
                verbs=tuple(sorted(info.verbs)) or ResourceType.verbs,
                subresources=frozenset(info.subresources),
            )
        )
    return result


@attrs.define(kw_only=True)
class LocalKubeEmulator(kmock.KubernetesEmulator):
    """The emulator with the object semantics of a real API server (see the module docstring)."""

    store: ObjectStore = attrs.field(factory=ObjectStore)
    max_recorded_requests: int = 2000  # kmock records every request; keep a long session's memory bounded
    object_history: int = 10  # versions kept per object in the kmock ``objects`` mirror
    # (client, verb, resource) -> requests served: what a benchmark divides by the work done.
    request_counts: collections.Counter[tuple[str, str, str]] = attrs.field(factory=collections.Counter, init=False)
    # (client, resource, namespace/name) -> times sent in a list or a watch event: what a client
    # holds of the cluster (does a label selector really keep the rest away from it?).
    sent_counts: collections.Counter[tuple[str, str, str]] = attrs.field(factory=collections.Counter, init=False)
    access: set[tuple[str, str, str, str, str | None]] = attrs.field(factory=set, init=False)
    _builtin_payloads: int = attrs.field(default=0, init=False)
    _openapi_documents: dict[tuple[str, str], dict[str, Any]] | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        # kmock's own emulator fallbacks would serve kmock's object store; ours replace them.
        kmock.KubernetesScaffold.__attrs_post_init__(self)
        self.fallback[self._is_store_request] << self._defer_to_store
        self.fallback["get /version"] << self._serve_server_version
        self.resources.load_bundled()
        for rt in _resource_types_from_kmock(self.resources):
            if rt.key not in _UNSERVED:
                self.store.types[rt.key] = rt
        self.store.type_listeners.append(self._sync_discovery)
        self.store.listeners.append(self._mirror)
        namespaces = self.store.types[("", "v1", "namespaces")]
        for name in _DEFAULT_NAMESPACES:
            self.store.create(namespaces, None, {"metadata": {"name": name}})
        nodes = self.store.types.get(("", "v1", "nodes"))
        if nodes is not None:
            self.store.create(
                nodes,
                None,
                {
                    "metadata": {
                        "name": "local",
                        "labels": {"kubernetes.io/hostname": "local", "kubernetes.io/os": "linux"},
                    }
                },
            )
        self._builtin_payloads = len(self._payloads)

    # -- dispatching ----------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """Parse API paths ourselves: kmock's parser fails on ``/api/v1/namespaces``."""
        path = raw_request.path
        if path == REQUEST_COUNTS_PATH:
            return _json(
                [
                    {"client": c, "verb": v, "resource": r, "count": n}
                    for (c, v, r), n in sorted(self.request_counts.items())
                ]
            )
        if path == SENT_COUNTS_PATH:
            return _json(
                [
                    {"client": c, "resource": r, "object": o, "count": n}
                    for (c, r, o), n in sorted(self.sent_counts.items())
                ]
            )
        if path == ACCESS_PATH:
            if raw_request.method.upper() == "DELETE":
                self.access.clear()
            return _json([dict(zip(("client", "group", "resource", "verb", "namespace"), a, strict=True))
                          for a in sorted(self.access, key=str)])  # fmt: skip
        parsed = api_paths.parse_api_path(path)
        if parsed is None and not path.startswith("/openapi/"):
            return await super().__call__(raw_request)
        if parsed is not None:
            client, verb, resource = key = _count_key(raw_request, parsed)
            self.request_counts[key] += 1
            self.access.add((client, parsed.group, resource, verb, parsed.namespace))
        body = await raw_request.read()
        media_type = raw_request.headers.get("Content-Type", "").split(";")[0].strip()
        if body and not (media_type.endswith(("json", "yaml")) or media_type in ("", "text/plain")):
            error = errors.unsupported_media_type(
                f"the local Kubernetes API speaks JSON, not {media_type}; this kubectl command sends protobuf, "
                "use `kubectl create ... --dry-run=client -o yaml | kubectl apply -f -` instead"
            )
            return _json(error.status(), status=error.code)
        request = _kmock_request(raw_request, parsed, body, id=len(self._requests))
        self._requests.append(request)
        try:
            return await self._handle(request)
        except Exception as exc:  # a test reaction failed: report it the way kmock does
            if not self._errors:
                raise
            self._errors[-1].append(exc)
            return await self._render_error(exc)

    @staticmethod
    def _is_store_request(request: kmock.Request) -> bool:
        path = request.url.path
        return path.startswith("/openapi/") or api_paths.parse_api_path(path) is not None

    @staticmethod
    def _defer_to_store(request: kmock.Request) -> None:
        raise _ServeNatively()

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        self._forget_old_requests()
        if self._is_store_request(request) and len(self._payloads) == self._builtin_payloads:
            return await self._serve(request)
        try:
            return await RawHandler._handle(self, request)
        except _ServeNatively:
            return await self._serve(request)

    def _forget_old_requests(self) -> None:
        excess = len(self._requests) - self.max_recorded_requests
        if excess > 0:
            del self._requests[: excess + self.max_recorded_requests // 2]

    def _get_resources(self) -> list[kmock.resource]:
        return [kmock.resource(*key) for key in self.store.types]

    async def _serve_version(self, request: kmock.Request) -> dict[str, Any]:
        """APIResourceList of a group version; subresources carry no short names, as on a real server."""
        assert request.resource is not None
        group, version = request.resource.group, request.resource.version
        types = sorted(
            (rt for rt in self.store.types.values() if rt.group == group and rt.version == version),
            key=lambda rt: rt.plural,
        )
        if not types and group != "":
            raise kmock.KubernetesResourceNotFoundError()
        resources: list[dict[str, Any]] = []
        for rt in types:
            resources.append(
                {
                    "name": rt.plural,
                    "singularName": rt.singular,
                    "namespaced": rt.namespaced,
                    "kind": rt.kind,
                    "verbs": list(rt.verbs),
                    "shortNames": list(rt.shortnames),
                    "categories": list(rt.categories),
                }
            )
            for sub in sorted(rt.subresources):
                entry: dict[str, Any] = {
                    "name": f"{rt.plural}/{sub}",
                    "singularName": "",
                    "namespaced": rt.namespaced,
                    "kind": rt.kind,
                    "verbs": ["get"],
                }
                if sub in ("status", "scale"):
                    entry["verbs"] = ["get", "patch", "update"]
                if sub == "scale":
                    entry.update(group="autoscaling", version="v1", kind="Scale")
                resources.append(entry)
        return {
            "apiVersion": "v1",
            "kind": "APIResourceList",
            "groupVersion": f"{group}/{version}".lstrip("/"),
            "resources": resources,
        }

    async def _serve_server_version(self, request: kmock.Request) -> dict[str, str]:
        major, minor = SERVER_VERSION.lstrip("v").split(".")[:2]
        return {
            "major": major,
            "minor": minor,
            "gitVersion": SERVER_VERSION,
            "gitCommit": "local",
            "gitTreeState": "clean",
            "buildDate": "2025-01-01T00:00:00Z",
            "goVersion": "python",
            "compiler": "kmock",
            "platform": "linux/amd64",
        }

    async def _serve(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        try:
            path = request.url.path
            if path.startswith("/openapi/"):
                return self._serve_openapi(path)
            parsed = api_paths.parse_api_path(path)
            assert parsed is not None
            rt = self.store.resource_type(parsed.group, parsed.version, parsed.plural)
            if rt is None:
                raise errors.resource_not_found(path)
            return await self._serve_resource(request, rt, parsed)
        except errors.ApiError as exc:
            return _json(exc.status(), status=exc.code)
        except SelectorError as exc:
            return _json(errors.bad_request(str(exc)).status(), status=400)
        except Exception as exc:  # a bug here must reach the client as a Status, not a dropped connection
            log.exception("event=api_error method=%s path=%s", request.method, request.url.path)
            return _json(errors.ApiError(500, "InternalError", f"local API error: {exc!r}").status(), status=500)

    async def _serve_resource(
        self, request: kmock.Request, rt: ResourceType, path: api_paths.ApiPath
    ) -> aiohttp.web.StreamResponse:
        method = _method(request)
        params = request.params
        namespace = path.namespace if rt.namespaced else None
        sub = path.subresource
        if method == "GET" and path.name is None:
            if params.get("watch") in ("true", "1"):
                return await self._serve_watch(request, rt, namespace)
            return self._serve_list(request, rt, namespace)
        if method == "GET" and sub in (None, "status"):
            return self._render(request, rt, self.store.get(rt, namespace, path.name or ""))
        if method == "GET" and sub == "scale":
            return _json(self._scale_of(rt, self.store.get(rt, namespace, path.name or "")))
        if method == "GET" and sub == "log" and rt.key == ("", "v1", "pods"):
            return await self._serve_log(request, rt, namespace, path.name or "")
        if method == "POST" and path.name is None:
            result = self.store.create(
                rt,
                namespace,
                _body(request),
                dry_run=_dry_run(params),
                field_validation=params.get("fieldValidation", "Warn"),
            )
            return self._render(request, rt, result.object, status=201, warnings=result.warnings)
        if method in ("PUT", "PATCH") and path.name is not None and sub == "scale":
            return _json(self._write_scale(request, rt, namespace, path.name))
        if method == "PUT" and path.name is not None:
            result = self.store.replace(
                rt,
                namespace,
                path.name,
                _body(request),
                subresource=sub,
                dry_run=_dry_run(params),
                field_validation=params.get("fieldValidation", "Warn"),
            )
            return self._render(request, rt, result.object, warnings=result.warnings)
        if method == "PATCH" and path.name is not None:
            result = self._patch(request, rt, namespace, path.name, sub)
            return self._render(
                request, rt, result.object, status=201 if result.created else 200, warnings=result.warnings
            )
        if method == "DELETE" and path.name is not None and sub is None:
            options = _delete_options(request)
            deleted = self.store.delete(
                rt,
                namespace,
                path.name,
                propagation=options.get("propagationPolicy"),
                preconditions=options.get("preconditions"),
                dry_run=_dry_run(params),
            )
            return self._render(request, rt, deleted)
        if method == "DELETE" and path.name is None:
            options = _delete_options(request)
            for obj in self.store.list(rt, _selection(rt, namespace, params)):
                meta = obj["metadata"]
                if self.store.find(rt, meta.get("namespace"), meta["name"]) is not None:
                    self.store.delete(
                        rt,
                        meta.get("namespace"),
                        meta["name"],
                        propagation=options.get("propagationPolicy"),
                        dry_run=_dry_run(params),
                    )
            return _json({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})
        raise errors.method_not_allowed(f"{method} {request.url.path}")

    # -- reading --------------------------------------------------------------------------

    def _serve_list(self, request: kmock.Request, rt: ResourceType, namespace: str | None) -> aiohttp.web.Response:
        items = self.store.list(rt, _selection(rt, namespace, request.params))
        self._count_sent(request, rt, items)
        rv = self.store.resource_version
        accept = request.headers.get("Accept", "")
        table_version = tables.wants_table(accept)
        if table_version:
            return _json(
                tables.to_table(
                    items,
                    rt.columns,
                    resource_version=rv,
                    version=table_version,
                    include_object=request.params.get("includeObject", "Metadata"),
                )
            )
        if "as=PartialObjectMetadataList" in accept:
            return _json(
                {
                    "kind": "PartialObjectMetadataList",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": {"resourceVersion": rv},
                    "items": [_partial(obj) for obj in items],
                }
            )
        return _json(
            {
                "kind": f"{rt.kind}List",
                "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": rv},
                "items": items,
            }
        )

    def _count_sent(self, request: kmock.Request, rt: ResourceType, items: Iterable[Mapping[str, Any]]) -> None:
        client = _client(request.headers.get("User-Agent", ""))
        for obj in items:
            meta = obj.get("metadata") or {}
            self.sent_counts[client, rt.qualified_plural, f"{meta.get('namespace') or ''}/{meta.get('name')}"] += 1

    def _render(
        self,
        request: kmock.Request,
        rt: ResourceType,
        obj: Mapping[str, Any],
        *,
        status: int = 200,
        warnings: Iterable[str] = (),
    ) -> aiohttp.web.Response:
        accept = request.headers.get("Accept", "")
        table_version = tables.wants_table(accept)
        payload: Mapping[str, Any] = obj
        if table_version:
            payload = tables.to_table(
                [obj],
                rt.columns,
                resource_version=obj["metadata"]["resourceVersion"],
                version=table_version,
                include_object=request.params.get("includeObject", "Metadata"),
            )
        elif "as=PartialObjectMetadata" in accept:
            payload = _partial(obj)
        response = _json(payload, status=status)
        for warning in warnings:
            response.headers.add("Warning", f'299 - "{_escape(warning)}"')
        return response

    async def _serve_watch(
        self, request: kmock.Request, rt: ResourceType, namespace: str | None
    ) -> aiohttp.web.StreamResponse:
        params = request.params
        since_text = params.get("resourceVersion") or "0"
        if not since_text.isdigit():
            raise errors.bad_request(f"invalid resourceVersion {since_text!r}")
        send_initial = params.get("sendInitialEvents") == "true"
        initial, watcher = self.store.watch(
            rt, _selection(rt, namespace, params), since=0 if send_initial else int(since_text)
        )
        table_version = tables.wants_table(request.headers.get("Accept", ""))
        raw_request = request._raw_request
        assert raw_request is not None
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        try:
            await response.prepare(raw_request)
            async for events in self._watch_events(rt, watcher, initial, params, send_initial):
                objects = [event["object"] for event in events if event["type"] != "BOOKMARK"]
                self._count_sent(request, rt, objects)
                if table_version:
                    events = [self._table_event(rt, event, table_version, params) for event in events]
                # what is queued goes in one write: a mass change queues many events at once
                await response.write(b"".join(_dumps(event) + b"\n" for event in events))
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client went away
        finally:
            self.store.unwatch(watcher)
        return response

    @staticmethod
    def _table_event(
        rt: ResourceType, event: dict[str, Any], version: str, params: Mapping[str, str]
    ) -> dict[str, Any]:
        if event["type"] == "BOOKMARK":
            return event
        obj = event["object"]
        table = tables.to_table(
            [obj],
            rt.columns,
            version=version,
            resource_version=obj["metadata"]["resourceVersion"],
            include_object=params.get("includeObject", "Metadata"),
        )
        return {"type": event["type"], "object": table}

    async def _watch_events(
        self,
        rt: ResourceType,
        watcher: Watcher,
        initial: list[dict[str, Any]],
        params: Mapping[str, str],
        send_initial: bool,
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The watch's events in batches: the initial ones, then each time the queue wakes, all it holds."""
        for start in range(0, len(initial), _INITIAL_BATCH):
            yield initial[start : start + _INITIAL_BATCH]
        bookmarks = params.get("allowWatchBookmarks") == "true"
        if send_initial:
            yield [self._bookmark(rt, {_INITIAL_EVENTS_END: "true"})]
        timeout = float(params.get("timeoutSeconds") or 0) or None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        while True:
            wait = _WATCH_IDLE_SECONDS if deadline is None else min(_WATCH_IDLE_SECONDS, deadline - loop.time())
            if wait <= 0:
                return
            try:
                event = await asyncio.wait_for(watcher.queue.get(), wait)
            except TimeoutError:
                if bookmarks:
                    yield [self._bookmark(rt, None)]
                continue
            batch = []
            while event is not None:
                batch.append(event)
                if watcher.queue.empty():
                    break
                event = watcher.queue.get_nowait()
            if batch:
                yield batch
            if event is None:  # the server is stopping
                return

    def _bookmark(self, rt: ResourceType, annotations: dict[str, str] | None) -> dict[str, Any]:
        meta: dict[str, Any] = {"resourceVersion": self.store.resource_version}
        if annotations:
            meta["annotations"] = annotations
        return {"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta}}

    async def _serve_log(
        self, request: kmock.Request, rt: ResourceType, namespace: str | None, name: str
    ) -> aiohttp.web.StreamResponse:
        """Pod logs from the file the local kubelet names in an annotation (only ``*.log`` files)."""
        pod = self.store.get(rt, namespace, name)
        log_file = (pod["metadata"].get("annotations") or {}).get(annotation_keys.LOG_FILE) or ""
        path = pathlib.Path(log_file)
        if not log_file or path.suffix != ".log" or not path.is_file():
            raise errors.bad_request(f'container in pod "{name}" has no logs yet: the local kubelet has not started it')
        text = path.read_text(errors="replace")
        tail = request.params.get("tailLines")
        if tail and tail.isdigit():
            text = "".join(text.splitlines(keepends=True)[-int(tail) :]) if int(tail) else ""
        if request.params.get("follow") != "true":
            return aiohttp.web.Response(text=text, content_type="text/plain")
        raw_request = request._raw_request
        assert raw_request is not None
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(raw_request)
        offset = path.stat().st_size
        try:
            await response.write(text.encode())
            while self.store.find(rt, namespace, name) is not None:
                await asyncio.sleep(0.2)
                size = path.stat().st_size if path.exists() else 0
                if size > offset:
                    with path.open("rb") as handle:
                        handle.seek(offset)
                        await response.write(handle.read(size - offset))
                    offset = size
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass
        return response

    # -- writing --------------------------------------------------------------------------

    def _patch(
        self, request: kmock.Request, rt: ResourceType, namespace: str | None, name: str, sub: str | None
    ) -> WriteResult:
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        patch = _body(request, yaml_ok=content_type == patching.APPLY_PATCH)
        dry_run = _dry_run(request.params)
        field_validation = request.params.get("fieldValidation", "Warn")
        if content_type == patching.APPLY_PATCH and self.store.find(rt, namespace, name) is None:
            # Server-side apply of a new object creates it (field ownership is not tracked here).
            return self.store.create(rt, namespace, patch, dry_run=dry_run, field_validation=field_validation)

        def change(current: dict[str, Any]) -> dict[str, Any]:
            try:
                return patching.apply_patch(current, content_type, patch, strategic=not rt.is_custom)
            except patching.PatchError as exc:
                if "unsupported" in str(exc):
                    raise errors.unsupported_media_type(str(exc)) from exc
                raise errors.unprocessable(str(exc)) from exc

        return self.store.update_with(
            rt, namespace, name, change, subresource=sub, dry_run=dry_run, field_validation=field_validation
        )

    def _scale_of(self, rt: ResourceType, obj: Mapping[str, Any]) -> dict[str, Any]:
        paths = rt.replicas_paths()
        if paths is None:
            raise errors.resource_not_found(f"{rt.qualified_plural}/scale")
        spec_path, status_path, selector_path = paths
        meta = obj["metadata"]
        selector = _path_get(obj, selector_path) if selector_path else _selector_text(obj)
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp") if k in meta
            },
            "spec": {"replicas": _path_get(obj, spec_path) or 0},
            "status": {"replicas": _path_get(obj, status_path) or 0, "selector": selector or ""},
        }

    def _write_scale(
        self, request: kmock.Request, rt: ResourceType, namespace: str | None, name: str
    ) -> dict[str, Any]:
        current_scale = self._scale_of(rt, self.store.get(rt, namespace, name))
        body = _body(request)
        if _method(request) == "PUT":
            desired = body
        else:
            content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
            try:
                desired = patching.apply_patch(current_scale, content_type, body, strategic=True)
            except patching.PatchError as exc:
                raise errors.unprocessable(str(exc)) from exc
        replicas = (desired.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            raise errors.unprocessable(
                f'Scale.autoscaling "{name}" is invalid: spec.replicas: Invalid value: '
                f"{replicas!r}: must be greater than or equal to 0"
            )
        paths = rt.replicas_paths()
        assert paths is not None

        def change(obj: dict[str, Any]) -> dict[str, Any]:
            changed = copy_json(obj)  # obj is the stored object: update_with's change must not mutate it
            _path_set(changed, paths[0], replicas)
            return changed

        result = self.store.update_with(rt, namespace, name, change, dry_run=_dry_run(request.params))
        return self._scale_of(rt, result.object)

    # -- openapi and discovery ------------------------------------------------------------

    def _serve_openapi(self, path: str) -> aiohttp.web.Response:
        documents = self._documents()
        if path.rstrip("/") == "/openapi/v3":
            return _json(openapi.root_document({gv: openapi.document_hash(doc) for gv, doc in documents.items()}))
        match = re.fullmatch(r"/openapi/v3/(?:api/(?P<core>[^/]+)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))/?", path)
        if match:
            key = ("", match["core"]) if match["core"] else (match["group"], match["version"])
            if key in documents:
                return _json(documents[key])
        raise errors.resource_not_found(path)

    def _documents(self) -> dict[tuple[str, str], dict[str, Any]]:
        if self._openapi_documents is None:
            by_gv: dict[tuple[str, str], list[ResourceType]] = {}
            for rt in self.store.types.values():
                by_gv.setdefault((rt.group, rt.version), []).append(rt)
            self._openapi_documents = {
                gv: openapi.group_version_document(types, SERVER_VERSION) for gv, types in by_gv.items()
            }
        return self._openapi_documents

    def _sync_discovery(self) -> None:
        self._openapi_documents = None
        wanted = {kmock.resource(*rt.key): rt for rt in self.store.types.values()}
        for resource in list(self.resources):
            if resource not in wanted:
                del self.resources[resource]
        for resource, rt in wanted.items():
            self.resources[resource] = kmock.ResourceInfo(
                namespaced=rt.namespaced,
                kind=rt.kind,
                singular=rt.singular,
                verbs=set(rt.verbs),
                shortnames=set(rt.shortnames),
                categories=set(rt.categories),
                subresources=set(rt.subresources),
            )

    def _mirror(self, event_type: str, rt: ResourceType, obj: dict[str, Any]) -> None:
        """Keep kmock's ``objects`` (assertion helpers) in step with the store."""
        meta = obj["metadata"]
        key = (_kmock_resource(rt.key), meta.get("namespace"), meta["name"])
        if event_type == "DELETED":
            if key in self._objects:
                self._objects[key].delete()
            return
        if key not in self._objects:
            self._objects[key] = obj
            return
        history = self._objects[key].history
        history.append(obj)
        if len(history) > self.object_history:
            del history[: len(history) - self.object_history]


# -- request helpers ------------------------------------------------------------------------


def _kmock_request(
    raw_request: aiohttp.web.BaseRequest, parsed: api_paths.ApiPath | None, body: bytes, *, id: int
) -> kmock.Request:
    """A kmock Request (for its DSL and assertions) built from our own path parsing."""
    try:
        data = _loads(body) if body else None
    except ValueError:
        data = None
    method = _kmock_method(raw_request.method)
    resource = _kmock_resource((parsed.group, parsed.version, parsed.plural)) if parsed else None
    action = None
    if parsed is not None:
        kmock_path = ParsedPath(
            parsed.group, parsed.version, parsed.plural, parsed.namespace, parsed.name, parsed.subresource
        )
        action = guess_k8s(kmock_path, method, dict(raw_request.query))
    return _Request(
        id=id,
        raw_request=raw_request,
        url=raw_request.url,
        method=method,
        params=dict(raw_request.query),
        headers=dict(raw_request.headers),
        cookies=dict(raw_request.cookies),
        body=body,
        text=body.decode("utf-8", errors="replace"),
        data=data,
        action=action,
        resource=resource,
        namespace=parsed.namespace if parsed else None,
        name=parsed.name if parsed else None,
        subresource=parsed.subresource if parsed else None,
    )


class _LazyBus:
    """kmock's per-request stream bus (what a test feeds a live stream through, ``kmock[...] << ...``),
    made when first used: a Bus makes an asyncio.Condition and a WeakKeyDictionary, ~5% of the API's
    CPU when made for every request, and almost no request is ever streamed to."""

    __slots__ = ("_bus",)

    def __init__(self) -> None:
        self._bus: aiobus.Bus[Any] | None = None

    @property
    def bus(self) -> aiobus.Bus[Any]:
        if self._bus is None:
            self._bus = aiobus.Bus()
        return self._bus

    @property
    def consumer_count(self) -> int:  # asked of every recorded request when a test feeds a stream
        return 0 if self._bus is None else self._bus.consumer_count

    def __aiter__(self) -> AsyncIterator[Any]:
        return self.bus.__aiter__()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.bus, name)


@attrs.frozen(kw_only=True, eq=False)
class _Request(kmock.Request):
    """kmock's Request with its stream bus made on first use (see _LazyBus)."""

    _stream_bus: Any = attrs.field(factory=_LazyBus, repr=False, init=False)


@functools.cache
def _kmock_resource(key: ResourceKey) -> kmock.resource:
    """kmock's resource for a key, made once: its constructor tests its argument against a typing
    Protocol (isinstance on a runtime_checkable Protocol is slow), on every request and every write."""
    return kmock.resource(*key)


@functools.cache
def _kmock_method(name: str) -> kmock.method:
    """kmock's method for an HTTP method name, found once: its guess walks the whole enum."""
    return kmock.method.guess(name)


def _count_key(raw_request: aiohttp.web.BaseRequest, parsed: api_paths.ApiPath) -> tuple[str, str, str]:
    """(client, verb, resource) as an audit log would name them: the client is the User-Agent's
    first product token (kopf, tradingmodel-operator, local-kubelet, kubectl…)."""
    client = _client(raw_request.headers.get("User-Agent", ""))
    method = raw_request.method.upper()
    if method == "GET":
        verb = "get" if parsed.name else "watch" if raw_request.query.get("watch") in ("true", "1") else "list"
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())
        if method == "DELETE" and not parsed.name:
            verb = "deletecollection"
    resource = parsed.plural + (f"/{parsed.subresource}" if parsed.subresource else "")
    return client, verb, resource


def _client(user_agent: str) -> str:
    return user_agent.split("/", 1)[0].split(" ", 1)[0] or "unknown"


def _method(request: kmock.Request) -> str:
    method = request.method
    return str(method.value if isinstance(method, kmock.method) else method).upper()


def _json(payload: Any, *, status: int = 200) -> aiohttp.web.Response:
    return aiohttp.web.Response(body=_dumps(payload), status=status, content_type="application/json")


def _dumps(payload: Any) -> bytes:
    """Compact JSON; orjson (5-10x the standard library's speed: every response and watch event goes
    through here), and json for what orjson refuses (an integer beyond 64 bits a client stored)."""
    try:
        return orjson.dumps(payload)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(payload, separators=(",", ":")).encode()


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _partial(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata", {})}


def _loads(data: bytes) -> Any:
    """Parse JSON as json.loads does, with orjson where its answer is the same (several times faster:
    every request body is parsed, once, for kmock's request log and the store). orjson turns
    integers beyond 64 bits into floats, so text with 19 digits in a row goes to json; so does what
    orjson refuses and json may read (NaN, lone surrogates, UTF-16), and json then answers or raises."""
    if _LONG_NUMBER not in data.translate(_DIGITS_TO_ZERO):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


def _body(request: kmock.Request, *, yaml_ok: bool = False) -> Any:
    """The request's JSON body: the one _kmock_request parsed for kmock's log (the store never
    changes what it is given), parsed again only to say why it is no JSON or to try YAML."""
    if not request.body:
        return None
    if request.data is not None:
        return request.data
    try:
        return _loads(request.body)
    except ValueError as exc:
        if yaml_ok:
            try:
                return yaml.safe_load(request.body)
            except yaml.YAMLError:
                pass
        raise errors.bad_request(f"the request body is not valid JSON: {exc}") from exc


def _dry_run(params: Mapping[str, str]) -> bool:
    return params.get("dryRun") == "All"


def _delete_options(request: kmock.Request) -> dict[str, Any]:
    options: dict[str, Any] = {}
    body = _body(request) if request.body else None
    if isinstance(body, dict):
        options.update(body)
    if "propagationPolicy" in request.params:
        options["propagationPolicy"] = request.params["propagationPolicy"]
    if options.get("orphanDependents") is True:
        options["propagationPolicy"] = "Orphan"
    return options


def _selection(rt: ResourceType, namespace: str | None, params: Mapping[str, str]) -> Selection:
    fields = parse_field_selector(params.get("fieldSelector"))
    name = next((f.value for f in fields if f.path == ("metadata", "name") and f.equal), None)
    return Selection(
        namespace=namespace if rt.namespaced else None,
        name=name,
        labels=parse_label_selector(params.get("labelSelector")),
        fields=fields,
    )


def _path_get(obj: Mapping[str, Any], dotted: str | None) -> Any:
    node: Any = obj
    for part in (dotted or "").strip(".").split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _path_set(obj: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.strip(".").split(".")
    node = obj
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _selector_text(obj: Mapping[str, Any]) -> str:
    labels = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return ",".join(f"{k}={v}" for k, v in labels.items())


# -- CRDs and kubeconfig --------------------------------------------------------------------


def load_manifests(source: str | pathlib.Path | Mapping[str, Any]) -> list[dict[str, Any]]:
    """The objects in a YAML file (multi-document) or a dict."""
    if isinstance(source, Mapping):
        return [dict(source)]
    with open(source, encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


def register_crd(emulator: LocalKubeEmulator, crd: Mapping[str, Any] | str | pathlib.Path) -> list[ResourceType]:
    """Serve a CustomResourceDefinition: store it (create or replace) and register its resources.

    Discovery then lists its plural, kind and shortNames (``kubectl get tm``), its schema
    validates and defaults objects, its printer columns print. Call it from the thread of
    the emulator's event loop (or before the server starts).
    """
    store = emulator.store
    crd_type = store.types[CRD_KEY]
    for doc in load_manifests(crd):
        if doc.get("kind") != "CustomResourceDefinition":
            raise ValueError(f"not a CustomResourceDefinition: kind={doc.get('kind')!r}")
        name = (doc.get("metadata") or {}).get("name", "")
        if store.find(crd_type, None, name) is None:
            store.create(crd_type, None, copy.deepcopy(doc))
        else:
            body = copy.deepcopy(doc)
            body.setdefault("metadata", {}).pop("resourceVersion", None)
            store.replace(crd_type, None, name, body)
    return [rt for rt in store.types.values() if rt.is_custom]


def kubeconfig(url: str, *, namespace: str = "default", context: str = "local-stack") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": {"server": url}}],
        "users": [{"name": context, "user": {}}],
        "contexts": [{"name": context, "context": {"cluster": context, "user": context, "namespace": namespace}}],
        "current-context": context,
        "preferences": {},
    }


def write_kubeconfig(path: str | pathlib.Path, url: str, *, namespace: str = "default") -> pathlib.Path:
    """Write a kubeconfig for ``kubectl --kubeconfig PATH`` (plain HTTP, no credentials)."""
    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(kubeconfig(url, namespace=namespace), sort_keys=False), encoding="utf-8")
    return target


# -- the server -----------------------------------------------------------------------------


class LocalKubeAPI:
    """The emulator on a real TCP port (``port=0`` picks a free one), as an async context manager."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        crds: Iterable[Mapping[str, Any] | str | pathlib.Path] = (),
        emulator: LocalKubeEmulator | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.emulator = emulator or LocalKubeEmulator()
        for crd in crds:
            register_crd(self.emulator, crd)
        self._server: aiohttp.web.Server | None = None
        self._listener: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def store(self) -> ObjectStore:
        return self.emulator.store

    @property
    def url(self) -> str:
        if self._listener is None:
            raise RuntimeError("the local Kubernetes API is not started")
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        young, middle, full = gc.get_threshold()
        gc.set_threshold(young, middle, max(full, _FULL_COLLECTION_EVERY))  # for the whole process: see there
        self._loop = asyncio.get_running_loop()
        await self.emulator.__aenter__()
        self._server = aiohttp.web.Server(self.emulator, handler_cancellation=True, access_log=None)
        self._listener = await self._loop.create_server(self._server, self.host, self.port)
        self.port = self._listener.sockets[0].getsockname()[1]
        log.info("event=kube_api_started url=%s", self.url)

    async def stop(self) -> None:
        self.emulator.store.close_watchers()
        if self._listener is not None:
            self._listener.close()
        if self._server is not None:
            await self._server.shutdown(timeout=2.0)
        if self._listener is not None:
            await self._listener.wait_closed()
            self._listener = None
        await self.emulator.__aexit__(None, None, None)
        log.info("event=kube_api_stopped")

    async def __aenter__(self) -> LocalKubeAPI:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def register_crd(self, crd: Mapping[str, Any] | str | pathlib.Path) -> list[ResourceType]:
        return self.call(lambda: register_crd(self.emulator, crd))

    def write_kubeconfig(self, path: str | pathlib.Path, *, namespace: str = "default") -> pathlib.Path:
        return write_kubeconfig(path, self.url, namespace=namespace)

    def call(self, fn: Callable[[], T]) -> T:
        """Run fn in the server's event loop thread (the store is single-threaded) and return its result."""
        loop = self._loop
        if loop is None or not loop.is_running() or _in_loop_thread(loop):
            return fn()

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), loop).result()


def _in_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


class BackgroundLoop:
    """An event loop in a daemon thread, for running async services next to blocking code.

    ``with BackgroundLoop() as bg: api = bg.run(start_api())``. Used by tests and by the
    embedded stack to keep the API serving while kubectl or kopf run elsewhere.
    """

    def __init__(self, name: str = "local-stack-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)

    def __enter__(self) -> BackgroundLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self.loop.is_running():
            self.loop.close()

    def run(self, coro: Any, timeout: float | None = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)
