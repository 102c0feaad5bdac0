"""S3 clients for TradingModels: the bucket and endpoint of the spec, keys from its Secret."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from model_store.s3 import S3Settings, make_client
from trading_operator import metrics
from trading_operator.decide import SecretNotFound
from trading_operator.kube import KubeApi
from trading_operator.spec import TradingModelSpec

KEY_ID, SECRET_KEY = "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"
S3Factory = Callable[[TradingModelSpec, str], Any]  # (spec, namespace) -> boto3 client
# Connections a client keeps per pass thread: a pass, the registry update it runs beside it, and its
# share of the promotions' file-request pool (model_store.promotion) may each hold one at once.
CONNECTIONS_PER_PASS = 4


def s3_factory(kube: KubeApi, workers: int = 8, secret_ttl: float = 10.0, lean: bool = True) -> S3Factory:
    """Clients shared by every pass: one per endpoint, region and keys, with CONNECTIONS_PER_PASS
    connections kept for each of the `workers` pass threads.

    A Secret read is kept `secret_ttl` seconds (a thousand TradingModels usually share one Secret:
    not a GET per pass); a rotated key is used, a missing Secret reported, that much later at most.
    `lean`: see make_client."""
    clients: dict[tuple[Any, ...], Any] = {}
    secrets: dict[tuple[str, str], tuple[float, dict[str, str]]] = {}
    guard = threading.Lock()

    def secret_data(namespace: str, name: str) -> dict[str, str] | None:
        now = time.monotonic()
        kept = secrets.get((namespace, name))
        if kept is not None and now - kept[0] < secret_ttl:
            return kept[1]
        data = kube.secret_data(namespace, name)
        if data is None:
            secrets.pop((namespace, name), None)
        else:
            secrets[(namespace, name)] = (now, data)
        return data

    def s3_for(model: TradingModelSpec, namespace: str) -> Any:
        keys: tuple[str | None, str | None] = (None, None)
        if model.secret_name:
            data = secret_data(namespace, model.secret_name)
            if data is None:
                raise SecretNotFound(
                    f"Secret {namespace}/{model.secret_name} (spec.storage.secretRef) does not exist: "
                    f"create it with {KEY_ID} and {SECRET_KEY}"
                )
            missing = [k for k in (KEY_ID, SECRET_KEY) if not data.get(k)]
            if missing:
                raise SecretNotFound(f"Secret {namespace}/{model.secret_name} has no {' or '.join(missing)}")
            keys = (data[KEY_ID], data[SECRET_KEY])
        cache_key = (model.endpoint, model.region, *keys)
        with guard:
            if cache_key not in clients:
                settings = S3Settings(bucket=model.bucket, endpoint_url=model.endpoint, region=model.region)
                client = make_client(settings, *keys, pool=workers * CONNECTIONS_PER_PASS, lean=lean)
                clients[cache_key] = metrics.count_s3_requests(client)
            return clients[cache_key]

    return s3_for
