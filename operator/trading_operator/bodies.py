"""The newest TradingModel bodies this process knows, so that a pass starts without reading one.

A controller's cache, as informers keep: the watch shows every TradingModel (`seen`), and every
status this process writes comes back as the whole object (`wrote`). Watch events come in the
order of the writes, so until the watch shows our write (its resourceVersion) what it shows is
older, and after that, newer; resourceVersions themselves are never compared (they are opaque).
A newer generation is newer whatever the order (a relisted watch may skip our write).

The status a pass writes is fenced with the resourceVersion of the body it started from: a pass
that started from a body someone changed since is refused (409 Conflict; `reconcile` reads the
object and passes again), so no status is computed from an older one and written.
"""

from __future__ import annotations

import collections
import copy
import threading
from typing import Any

Key = tuple[str, str]  # (namespace, name)
RECENT = 16  # a TradingModel's versions remembered from the watch (a pass writes one or two)


class Bodies:
    def __init__(self) -> None:
        self._seen: dict[Key, dict[str, Any]] = {}
        self._wrote: dict[Key, dict[str, Any]] = {}  # until the watch shows it
        # The last versions the watch showed: it may show our write before the writer hears back.
        self._recent: dict[Key, collections.deque[str | None]] = {}
        self._lock = threading.Lock()  # written from the pass threads, seen from the event loop

    def seen(self, key: Key, body: dict[str, Any], listed: bool = False) -> None:
        """The watch showed it (kopf's dict: never changed here, copied when handed out); `listed`:
        in a listing (at startup, or a watch started again), which holds every write before it."""
        with self._lock:
            self._seen[key] = body
            self._recent.setdefault(key, collections.deque(maxlen=RECENT)).append(_version(body))
            wrote = self._wrote.get(key)
            if wrote is not None and (listed or _version(wrote) == _version(body) or _uid(wrote) != _uid(body)):
                del self._wrote[key]  # the watch has caught up with our write: what it shows next is newer

    def wrote(self, key: Key, body: dict[str, Any]) -> None:
        """This process wrote its status; `body` is what the API server answered."""
        with self._lock:
            if _version(body) in self._recent.get(key, ()):
                self._wrote.pop(key, None)  # the watch showed it already (and maybe newer ones)
            else:
                self._wrote[key] = body

    def stale(self, key: Key) -> None:
        """A write fenced with what `newest` gave was refused: read the object next time."""
        with self._lock:
            self._seen.pop(key, None)
            self._wrote.pop(key, None)
            self._recent.pop(key, None)

    forget = stale  # deleted: nothing to keep

    def newest(self, key: Key) -> dict[str, Any] | None:
        """A copy of the newest body known (None: read it)."""
        with self._lock:
            seen, wrote = self._seen.get(key), self._wrote.get(key)
        changed = wrote is None or (
            seen is not None and (_generation(seen) > _generation(wrote) or _uid(seen) != _uid(wrote))
        )  # a spec change, or another TradingModel of that name
        newest = seen if changed else wrote
        return copy.deepcopy(newest) if newest is not None else None


def _version(body: dict[str, Any]) -> str | None:
    return (body.get("metadata") or {}).get("resourceVersion")


def _uid(body: dict[str, Any]) -> str | None:
    return (body.get("metadata") or {}).get("uid")


def _generation(body: dict[str, Any]) -> int:
    return int((body.get("metadata") or {}).get("generation") or 0)
