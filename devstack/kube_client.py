"""A small async client for the Kubernetes REST API (JSON over plain HTTP), for the local kubelet."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import orjson
import yarl

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"


def _headers(content_type: str) -> dict[str, str]:
    return {"Content-Type": content_type, "Accept": "application/json"}


_HEADERS = {kind: _headers(kind) for kind in ("application/json", MERGE_PATCH)}  # built once, not per request


class KubeApiError(Exception):
    def __init__(self, status: int, body: Mapping[str, Any] | str) -> None:
        message = body.get("message", "") if isinstance(body, Mapping) else str(body)
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.reason = body.get("reason", "") if isinstance(body, Mapping) else ""


def resource_path(
    api_version: str, plural: str, namespace: str | None = None, name: str | None = None, subresource: str | None = None
) -> str:
    prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    parts = [prefix]
    if namespace:
        parts.append(f"namespaces/{namespace}")
    parts.append(plural)
    if name:
        parts.append(name)
    if subresource:
        parts.append(subresource)
    return "/".join(parts)


class KubeClient:
    def __init__(self, base_url: str, *, timeout: float = 30.0, user_agent: str = "local-kubelet") -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._request_timeout = aiohttp.ClientTimeout(total=timeout)  # a watch has none: it is per request
        self._user_agent = user_agent  # names this client in the local API's request counts
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> KubeClient:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, connect=self._timeout), headers={"User-Agent": self._user_agent}
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("KubeClient is used outside of `async with`")
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> Any:
        data = None if body is None else orjson.dumps(body)
        async with self.session.request(
            method,
            # Paths are ours (names are DNS labels): already encoded, yarl need not look at them again.
            yarl.URL(self.base_url + path, encoded=True),
            data=data,
            headers=_HEADERS[content_type] if content_type in _HEADERS else _headers(content_type),
            params=params,
            timeout=self._request_timeout,
        ) as response:
            raw = await response.read()
            if raw and response.content_type == "application/json":
                payload: Any = orjson.loads(raw)  # from the bytes: no decoding to str first
            else:
                payload = await response.text()  # the body read above, decoded
            if response.status >= 400:
                raise KubeApiError(response.status, payload)
            return payload

    async def get(self, path: str, **params: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", path, params=params or None)
        return result

    async def find(self, path: str) -> dict[str, Any] | None:
        try:
            return await self.get(path)
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(self, path: str, **params: str) -> list[dict[str, Any]]:
        result = await self.get(path, **params)
        items: list[dict[str, Any]] = result.get("items") or []
        return items

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("POST", path, body=body)
        return result

    async def patch(self, path: str, patch: Mapping[str, Any]) -> dict[str, Any] | None:
        """Merge-patch; None when the object is gone (it may be deleted concurrently)."""
        try:
            result: dict[str, Any] = await self.request("PATCH", path, body=patch, content_type=MERGE_PATCH)
            return result
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def delete(self, path: str) -> dict[str, Any] | None:
        """The object as the API returned it (marked for deletion, or as it was when removed); None when
        it was gone already."""
        try:
            result = await self.request("DELETE", path)
        except KubeApiError as exc:
            if exc.status != 404:
                raise
            return None
        return result if isinstance(result, dict) else None

    async def watch(self, path: str) -> AsyncIterator[dict[str, Any]]:
        """Watch events of a collection from now on; ends when the server closes the stream."""
        listing = await self.get(path)
        params = {
            "watch": "true",
            "resourceVersion": listing["metadata"]["resourceVersion"],
            "allowWatchBookmarks": "true",
        }
        async with self.session.get(self.base_url + path, params=params) as response:
            if response.status >= 400:
                raise KubeApiError(response.status, await response.text())
            async for line in response.content:
                if line.strip():
                    yield orjson.loads(line)


async def retry_forever(name: str, body: Any, *, delay: float = 1.0) -> None:
    """Run a coroutine function again whenever it ends or fails, until cancelled (for watch loops)."""
    while True:
        try:
            await body()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the API may restart or drop streams; try again shortly
            log.debug("event=retry name=%s error=%r", name, exc)
        await asyncio.sleep(delay)
