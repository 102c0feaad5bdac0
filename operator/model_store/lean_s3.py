"""The S3 requests the model store repeats, sent without botocore's per-request pipeline.

botocore spends 2-3 ms of CPU on every request on this machine (parameter validation, some twenty
event handlers, a modeled serializer and parser): in the operator scale benchmark, 40% of the
operator's CPU for 13 requests per promotion. `LeanS3` sends the five operations the store
repeats (GetObject, PutObject, DeleteObject, CopyObject, ListObjectsV2) with the boto3 client's
own parts: its credentials (the usual chain, refreshed as botocore refreshes them), its SigV4
signer for S3, its HTTP session (pool, TLS, proxies, timeouts), its retry rules and its modeled
exceptions. It answers as boto3 does (the same keys; ClientError with the same codes), and sends
botocore's `before-send`, `after-call` and `after-call-error` events, so hooks on
`client.meta.events` (metrics, tests) see these requests as they see the others.

Anything else goes to the boto3 client: other operations, parameters not listed below, and a
request S3 answers with a redirect (another region: botocore follows it).
"""

from __future__ import annotations

import io
import random
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote, unquote_plus

import botocore
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.exceptions import HTTPClientError, NoCredentialsError
from botocore.response import StreamingBody

Parsed = dict[str, Any]

# Parameters sent here; a call with any other goes to boto3 as it is.
_PARAMETERS = {
    "GetObject": {"Bucket", "Key", "IfNoneMatch", "IfMatch"},
    "PutObject": {"Bucket", "Key", "Body", "ContentType", "IfMatch", "IfNoneMatch", "Metadata"},
    "DeleteObject": {"Bucket", "Key", "IfMatch"},
    "CopyObject": {"Bucket", "Key", "CopySource", "MetadataDirective", "Metadata", "ContentType"},
    "ListObjectsV2": {"Bucket", "Prefix", "Delimiter", "ContinuationToken", "MaxKeys", "StartAfter"},
}
_HEADERS = {
    "IfNoneMatch": "If-None-Match",
    "IfMatch": "If-Match",
    "ContentType": "Content-Type",
    "MetadataDirective": "x-amz-metadata-directive",
}
_SAFE = "-_.~"  # botocore's unreserved characters: a key is quoted as botocore quotes it
# botocore's standard retry mode: transient and throttling answers, and failed connections.
_TRANSIENT_STATUS = frozenset({500, 502, 503, 504})
_THROTTLING_STATUS = frozenset({429})
_RETRIED_CODES = frozenset({
    "RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete", "InternalError",
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException", "SlowDown",
    "TooManyRequestsException", "RequestLimitExceeded", "BandwidthLimitExceeded", "RequestThrottled",
})  # fmt: skip
_THROTTLING_CODES = _RETRIED_CODES - {"RequestTimeout", "RequestTimeoutException", "InternalError"}
_UNANSWERED = (BotoConnectionError, HTTPClientError, ConnectionError)  # botocore's, urllib3's, the socket's
_MAX_BACKOFF = 20.0
_REDIRECTS = frozenset({301, 302, 307, 308})
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


class LeanS3:
    """A boto3 S3 client whose five repeated operations skip botocore's pipeline (see the module)."""

    def __init__(self, client: Any, timestamps: Callable[[str], Any]) -> None:
        self._client = client
        self._endpoint = client.meta.endpoint_url.rstrip("/")
        self._region = client.meta.region_name
        # botocore's own parts; private names, checked by lean() before this is built
        self._credentials = client._request_signer._credentials
        self._http = client._endpoint.http_session
        # botocore's count: its "max_attempts" are retries, resolved to total_max_attempts at creation
        self._attempts = int((client.meta.config.retries or {}).get("total_max_attempts") or 3)
        self._events = client.meta.events
        self._parse_time = timestamps
        self._user_agent = f"tradingmodel-store botocore/{botocore.__version__}"

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    # -- the five operations -----------------------------------------------------------------

    def get_object(self, **params: Any) -> Parsed:
        response = self._call("GetObject", params, "GET", headers=_conditions(params))
        if response is None:
            return self._boto("get_object", params)
        parsed = self._object_headers(response)
        content = response.content
        parsed["Body"] = StreamingBody(io.BytesIO(content), len(content))
        return parsed

    def put_object(self, **params: Any) -> Parsed:
        body = params.get("Body", b"")
        if _lean(params, "PutObject") and not isinstance(body, bytes):  # read once: the fallback gets the bytes
            params = {**params, "Body": _payload(body)}
        headers = {**_conditions(params), **_metadata(params)}
        response = self._call("PutObject", params, "PUT", headers=headers, body=params.get("Body", b""))
        if response is None:
            return self._boto("put_object", params)
        return {"ETag": response.headers.get("ETag"), "ResponseMetadata": _metadata_of(response)}

    def delete_object(self, **params: Any) -> Parsed:
        response = self._call("DeleteObject", params, "DELETE", headers=_conditions(params))
        if response is None:
            return self._boto("delete_object", params)
        return {"ResponseMetadata": _metadata_of(response)}

    def copy_object(self, **params: Any) -> Parsed:
        source = params.get("CopySource")
        response = None
        if isinstance(source, dict) and set(source) == {"Bucket", "Key"}:  # not a version, not a string
            copied_from = quote(f"{source['Bucket']}/{source['Key']}", safe=_SAFE + "/")
            headers = {"x-amz-copy-source": copied_from, **_metadata(params)}
            response = self._call("CopyObject", params, "PUT", headers=headers)
        if response is None:
            return self._boto("copy_object", params)
        result = _xml(response.content)  # a 200 whose body is an <Error> was raised by _call
        copied = {"ETag": _text(result, "ETag"), "LastModified": self._time(_text(result, "LastModified"))}
        return {"CopyObjectResult": copied, "ResponseMetadata": _metadata_of(response)}

    def list_objects_v2(self, **params: Any) -> Parsed:
        query = {"list-type": "2", "encoding-type": "url"}
        for name, field in (("Prefix", "prefix"), ("Delimiter", "delimiter"), ("StartAfter", "start-after"),
                            ("ContinuationToken", "continuation-token"), ("MaxKeys", "max-keys")):  # fmt: skip
            if params.get(name) is not None:
                query[field] = str(params[name])
        response = self._call("ListObjectsV2", params, "GET", query=query)
        if response is None:
            return self._boto("list_objects_v2", params)
        return self._listing(_xml(response.content), response)

    def _boto(self, method: str, params: dict[str, Any]) -> Parsed:
        parsed: Parsed = getattr(self._client, method)(**params)
        return parsed

    def get_paginator(self, operation: str) -> Any:
        if operation == "list_objects_v2":
            return _ListPaginator(self)
        return self._client.get_paginator(operation)

    # -- one request ---------------------------------------------------------------------------

    def _call(
        self,
        operation: str,
        params: dict[str, Any],
        method: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        query: dict[str, str] | None = None,
    ) -> AWSResponse | None:
        """The successful answer; ClientError as boto3 raises it; None for a call this does not
        send (parameters it does not know) or a redirect: boto3 then sends it (and follows that)."""
        if not _lean(params, operation):
            return None
        url = f"{self._endpoint}/{quote(params['Bucket'], safe=_SAFE)}"
        if "Key" in params:
            url += "/" + quote(params["Key"], safe=_SAFE + "/")
        if query:
            url += "?" + "&".join(f"{quote(k, safe=_SAFE)}={quote(v, safe=_SAFE)}" for k, v in sorted(query.items()))
        context: dict[str, Any] = {"lean": True}
        throttled = False
        for attempt in range(self._attempts):
            if attempt:
                time.sleep(_backoff(attempt, throttled))
            last = attempt + 1 == self._attempts
            try:
                response = self._send(operation, method, url, headers or {}, body)
            except _UNANSWERED as exc:  # no answer: retried, as botocore does
                if last:
                    self._events.emit(f"after-call-error.s3.{operation}", exception=exc, context=context)
                    raise
                throttled = False
                continue
            status = response.status_code
            if status in _REDIRECTS:
                return None
            error = _error(response) if status >= 300 or operation == "CopyObject" else None
            code = (error or {}).get("Code", "")
            if error is not None and code in ("PermanentRedirect", "AuthorizationHeaderMalformed"):
                return None  # another region: boto3 finds it
            retried = status in _TRANSIENT_STATUS or status in _THROTTLING_STATUS or code in _RETRIED_CODES
            if error is not None and retried and not last:
                throttled = status in _THROTTLING_STATUS or code in _THROTTLING_CODES
                continue
            parsed = {"Error": error, "ResponseMetadata": _metadata_of(response, attempt)} if error else {}
            self._events.emit(f"after-call.s3.{operation}", http_response=response, parsed=parsed, model=None,
                              context=context)  # fmt: skip
            if error is not None:
                raise self._client.exceptions.from_code(code)(parsed, operation)
            return response
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _send(self, operation: str, method: str, url: str, headers: dict[str, str], body: bytes) -> AWSResponse:
        credentials = self._credentials.get_frozen_credentials() if self._credentials is not None else None
        if credentials is None:
            raise NoCredentialsError()
        request = AWSRequest(method=method, url=url, headers={"User-Agent": self._user_agent, **headers}, data=body)
        S3SigV4Auth(credentials, "s3", self._region).add_auth(request)
        prepared = request.prepare()
        answered = [r for _, r in self._events.emit(f"before-send.s3.{operation}", request=prepared) if r is not None]
        response: AWSResponse = answered[0] if answered else self._http.send(prepared)
        return response

    # -- answers ---------------------------------------------------------------------------------

    def _time(self, value: str | None) -> Any:
        return self._parse_time(value) if value else None

    def _object_headers(self, response: AWSResponse) -> Parsed:
        headers = response.headers
        parsed: Parsed = {
            "ETag": headers.get("ETag"),
            "ContentLength": int(headers.get("Content-Length") or len(response.content)),
            "ContentType": headers.get("Content-Type"),
            "LastModified": self._time(headers.get("Last-Modified")),
            "Metadata": {k[11:]: v for k, v in headers.items() if k.lower().startswith("x-amz-meta-")},
            "ResponseMetadata": _metadata_of(response),
        }
        return {k: v for k, v in parsed.items() if v is not None}

    def _listing(self, root: ElementTree.Element, response: AWSResponse) -> Parsed:
        parsed: Parsed = {"IsTruncated": _text(root, "IsTruncated") == "true"}
        contents = [
            {
                "Key": unquote_plus(_text(item, "Key") or ""),
                "LastModified": self._time(_text(item, "LastModified")),
                "ETag": _text(item, "ETag"),
                "Size": int(_text(item, "Size") or 0),
                "StorageClass": _text(item, "StorageClass"),
            }
            for item in root.iter(_NS + "Contents")
        ]
        if contents:
            parsed["Contents"] = [{k: v for k, v in item.items() if v is not None} for item in contents]
        for name in ("Name", "Prefix", "Delimiter", "StartAfter", "ContinuationToken", "NextContinuationToken"):
            value = _text(root, name)
            if value is not None:
                parsed[name] = unquote_plus(value) if name in ("Prefix", "Delimiter", "StartAfter") else value
        for name in ("MaxKeys", "KeyCount"):
            if (value := _text(root, name)) is not None:
                parsed[name] = int(value)
        prefixes = [{"Prefix": unquote_plus(_text(p, "Prefix") or "")} for p in root.iter(_NS + "CommonPrefixes")]
        if prefixes:
            parsed["CommonPrefixes"] = prefixes
        parsed["EncodingType"] = "url"
        parsed["ResponseMetadata"] = _metadata_of(response)
        return parsed


class _ListPaginator:
    """`get_paginator("list_objects_v2")`: pages follow NextContinuationToken."""

    def __init__(self, client: LeanS3) -> None:
        self._client = client

    def paginate(self, **params: Any) -> Iterator[Parsed]:
        while True:
            page = self._client.list_objects_v2(**params)
            yield page
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            params = {**params, "ContinuationToken": token}


def lean(client: Any, timestamps: Callable[[str], Any]) -> Any:
    """`client` with its repeated S3 operations sent by LeanS3, reading timestamps with
    `timestamps` (as the client's parser does); the client itself where this botocore does not
    have the parts LeanS3 borrows (its requests then cost what they cost)."""
    try:
        client._request_signer._credentials  # noqa: B018 - the parts LeanS3 takes
        client._endpoint.http_session  # noqa: B018
    except AttributeError:
        return client
    return LeanS3(client, timestamps)


def _lean(params: dict[str, Any], operation: str) -> bool:
    required = {"Bucket"} if operation == "ListObjectsV2" else {"Bucket", "Key"}
    return required <= params.keys() <= _PARAMETERS[operation] and all(isinstance(params[k], str) for k in required)


def _payload(body: Any) -> bytes:
    """A PutObject Body as boto3 takes it (bytes, str, a buffer or a file) as bytes."""
    if isinstance(body, str):
        return body.encode()
    if isinstance(body, bytearray | memoryview):
        return bytes(body)
    return bytes(body.read())


def _conditions(params: dict[str, Any]) -> dict[str, str]:
    return {_HEADERS[name]: str(params[name]) for name in ("IfNoneMatch", "IfMatch") if params.get(name)}


def _metadata(params: dict[str, Any]) -> dict[str, str]:
    headers = {_HEADERS[name]: str(params[name]) for name in ("ContentType", "MetadataDirective") if name in params}
    for name, value in (params.get("Metadata") or {}).items():
        headers[f"x-amz-meta-{name}"] = value
    return headers


def _metadata_of(response: AWSResponse, attempts: int = 0) -> dict[str, Any]:
    headers = response.headers
    return {
        "RequestId": headers.get("x-amz-request-id", ""),
        "HostId": headers.get("x-amz-id-2", ""),
        "HTTPStatusCode": response.status_code,
        "HTTPHeaders": {k.lower(): v for k, v in headers.items()},
        "RetryAttempts": attempts,
    }


def _error(response: AWSResponse) -> dict[str, str] | None:
    """S3's error, as botocore reads it: the XML <Error>, else the status code (a HEAD, a 304)."""
    content = response.content
    if content and b"<Error" in content[:512]:
        try:
            root = _xml(content)
        except ElementTree.ParseError:  # not S3 speaking (a proxy's page): the status says it
            root = ElementTree.Element("none")
        if root.tag.endswith("Error"):
            return {"Code": _text(root, "Code") or str(response.status_code), "Message": _text(root, "Message") or ""}
    if response.status_code < 300:
        return None
    return {"Code": str(response.status_code), "Message": _REASONS.get(response.status_code, "")}


_REASONS = {304: "Not Modified", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 412: "Precondition Failed"}


def _xml(content: bytes) -> ElementTree.Element:
    return ElementTree.fromstring(content)


def _text(element: ElementTree.Element, name: str) -> str | None:
    found = element.find(_NS + name)
    if found is None:
        found = element.find(name)  # an <Error> carries no namespace
    return None if found is None else (found.text or "")


def _backoff(attempt: int, throttled: bool) -> float:
    """botocore's standard backoff: truncated binary exponential with full jitter."""
    return random.random() * min((1.0 if throttled else 0.05) * (1 << attempt), _MAX_BACKOFF)
