"""The S3 requests the model store repeats, sent without botocore's per-request pipeline.

botocore spends 2-3 ms of CPU on every request on this machine (parameter validation, some twenty
event handlers, a modeled serializer and parser): in the operator scale benchmark, 40% of the
operator's CPU for 13 requests per promotion. `LeanS3` sends the five operations the store
repeats (GetObject, PutObject, DeleteObject, CopyObject, ListObjectsV2) with the boto3 client's
own parts: its credentials (the usual chain, refreshed as botocore refreshes them), its SigV4
signer for S3, its HTTP session (pool, TLS, proxies, timeouts), its retry rules and its modeled
exceptions, and its checks of an answer (an error in a 200, a body cut short, a stored checksum).
It answers as boto3 does (the same keys; ClientError with the same codes), and sends botocore's
`before-send`, `after-call` and `after-call-error` events, so hooks on `client.meta.events`
(metrics, tests) see these requests as they see the others.

Anything else goes to the boto3 client: other operations, parameters not listed below, non-ASCII
metadata, bucket names boto3 refuses or signs its own way, AWS endpoints botocore resolves per
request (see lean()), and a request S3 answers with a redirect (another region: botocore follows
it). tests/model_store/test_lean_s3.py holds both clients side by side.
"""

from __future__ import annotations

import http.client
import io
import random
import re
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote, unquote_plus

import botocore
import botocore.httpchecksum as checksums
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.exceptions import HTTPClientError, NoCredentialsError, PaginationError
from botocore.response import StreamingBody
from botocore.retries.quota import RetryQuota

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
_UNANSWERED = (BotoConnectionError, HTTPClientError)  # what botocore retries when no answer came
_MAX_BACKOFF = 20.0
_RETRY_AFTER_MAX_ADDITIONAL = 5.0
_RETRY_COST, _THROTTLING_RETRY_COST, _NO_RETRY_INCREMENT = 14, 5, 1  # botocore's retry quota
_REDIRECTS = frozenset({301, 302, 307, 308})
_BUCKET = re.compile(r"[a-zA-Z0-9.\-_]{1,255}")  # botocore's check; anything else is boto3's to refuse
# The endpoints boto3 resolves to one URL for every plain bucket; others (FIPS, dualstack, a
# global endpoint) are resolved per request by botocore's rules, so their calls stay boto3's.
_PLAIN_AWS = re.compile(r"https://s3(\.[a-z0-9-]+)?\.amazonaws\.com(\.cn)?")


class LeanS3:
    """A boto3 S3 client whose five repeated operations skip botocore's pipeline (see the module)."""

    def __init__(self, client: Any, timestamps: Callable[[str], Any]) -> None:
        self._client = client
        self._quota = RetryQuota()  # as botocore keeps one per client
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
        # GetObject's answer checked against the checksum S3 stored, as boto3 checks it ("when_supported")
        self._checksums: list[str] = []
        if getattr(client.meta.config, "response_checksum_validation", None) != "when_required":
            model = client.meta.service_model.operation_model("GetObject").http_checksum
            offered = {a.lower() for a in model.get("responseAlgorithms", [])}
            self._checksums = [a for a in checksums._ALGORITHMS_PRIORITY_LIST
                               if a in offered and a in checksums._SUPPORTED_CHECKSUM_ALGORITHMS]  # fmt: skip

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    # -- the five operations -----------------------------------------------------------------

    def get_object(self, **params: Any) -> Parsed:
        headers = {**_conditions(params), **({"x-amz-checksum-mode": "ENABLED"} if self._checksums else {})}
        answer = self._call("GetObject", params, "GET", headers=headers)
        if answer is None:
            return self._boto("get_object", params)
        response = answer[0]
        parsed = self._object_headers(response)
        length = response.headers.get("Content-Length")
        # the length S3 announced, so that a body cut short is an error, as in boto3
        parsed["Body"] = StreamingBody(io.BytesIO(response.content), int(length) if length else None)
        return parsed

    def put_object(self, **params: Any) -> Parsed:
        body = params.get("Body", b"")
        if self._sendable(params, "PutObject") and not isinstance(body, bytes):  # read once: a fallback gets the bytes
            params = {**params, "Body": _payload(body)}
        headers = {**_conditions(params), **_metadata(params)}
        answer = self._call("PutObject", params, "PUT", headers=headers, body=params.get("Body", b""))
        if answer is None:
            return self._boto("put_object", params)
        return {"ETag": answer[0].headers.get("ETag"), "ResponseMetadata": _metadata_of(answer[0])}

    def delete_object(self, **params: Any) -> Parsed:
        answer = self._call("DeleteObject", params, "DELETE", headers=_conditions(params))
        if answer is None:
            return self._boto("delete_object", params)
        return {"ResponseMetadata": _metadata_of(answer[0])}

    def copy_object(self, **params: Any) -> Parsed:
        source = params.get("CopySource")
        answer = None
        if isinstance(source, dict) and set(source) == {"Bucket", "Key"} and _plain_bucket(source["Bucket"]):
            copied_from = quote(f"{source['Bucket']}/{source['Key']}", safe=_SAFE + "/")
            headers = {"x-amz-copy-source": copied_from, **_metadata(params)}
            answer = self._call("CopyObject", params, "PUT", headers=headers)
        if answer is None:
            return self._boto("copy_object", params)
        response, result = answer
        assert result is not None  # _answer gives CopyObject its XML or an error
        copied = {"ETag": _text(result, "ETag"), "LastModified": self._time(_text(result, "LastModified"))}
        return {"CopyObjectResult": copied, "ResponseMetadata": _metadata_of(response)}

    def list_objects_v2(self, **params: Any) -> Parsed:
        query = {"list-type": "2", "encoding-type": "url"}
        for name, field in (("Prefix", "prefix"), ("Delimiter", "delimiter"), ("StartAfter", "start-after"),
                            ("ContinuationToken", "continuation-token"), ("MaxKeys", "max-keys")):  # fmt: skip
            if params.get(name) is not None:
                query[field] = str(params[name])
        answer = self._call("ListObjectsV2", params, "GET", query=query)
        if answer is None:
            return self._boto("list_objects_v2", params)
        return self._listing(answer[1], answer[0])

    def get_paginator(self, operation: str) -> Any:
        if operation == "list_objects_v2":
            return _ListPaginator(self)
        return self._client.get_paginator(operation)

    def _boto(self, method: str, params: dict[str, Any]) -> Parsed:
        parsed: Parsed = getattr(self._client, method)(**params)
        return parsed

    def _sendable(self, params: dict[str, Any], operation: str) -> bool:
        """Only what the store sends: plain buckets, str keys, ASCII metadata, a body; anything else
        (and so any mistake boto3 would refuse with a clear error) is boto3's."""
        required = {"Bucket"} if operation == "ListObjectsV2" else {"Bucket", "Key"}
        if not required <= params.keys() <= _PARAMETERS[operation] or not _plain_bucket(params["Bucket"]):
            return False
        if not all(isinstance(params.get(k, ""), str) for k in ("Key", "ContentType", "MetadataDirective")):
            return False
        metadata = params.get("Metadata", {})
        if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and k.isascii() and v.isascii() for k, v in metadata.items()
        ):
            return False
        return operation != "PutObject" or params.get("Body", b"") is not None

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
    ) -> tuple[AWSResponse, ElementTree.Element | None] | None:
        """The successful answer and its XML (ListObjectsV2, CopyObject); ClientError as boto3 raises
        it; None for a call this does not send or a redirect: boto3 then sends it (and follows that).
        Events as boto3 sends them: before-send per attempt, then after-call, or after-call-error
        for a call that ends without an answer to parse."""
        if not self._sendable(params, operation):
            return None
        url = f"{self._endpoint}/{quote(params['Bucket'], safe=_SAFE)}"
        if "Key" in params:
            url += "/" + quote(params["Key"], safe=_SAFE + "/")
        if query:
            url += "?" + "&".join(f"{quote(k, safe=_SAFE)}={quote(v, safe=_SAFE)}" for k, v in sorted(query.items()))
        context: dict[str, Any] = {"lean": True}
        try:
            answered = self._send_with_retries(operation, method, url, headers or {}, body)
        except Exception as exc:
            self._events.emit(f"after-call-error.s3.{operation}", exception=exc, context=context)
            raise
        if answered is None:
            return None
        response, root, error, attempts = answered
        parsed: Parsed = {}
        if error is not None:
            parsed = {"Error": error, "ResponseMetadata": _metadata_of(response, attempts)}
            parsed["ResponseMetadata"]["HTTPStatusCode"] = _status(response, error)
        self._events.emit(f"after-call.s3.{operation}", http_response=response, parsed=parsed, model=None,
                          context=context)  # fmt: skip
        if error is not None:
            raise self._client.exceptions.from_code(error["Code"])(parsed, operation)
        return response, root

    def _send_with_retries(
        self, operation: str, method: str, url: str, headers: dict[str, str], body: bytes
    ) -> tuple[AWSResponse, ElementTree.Element | None, dict[str, str] | None, int] | None:
        """botocore's standard retry mode: transient and throttling answers and lost connections are
        tried again after a jittered exponential backoff, while the client's retry quota lasts."""
        acquired = 0
        for attempt in range(self._attempts):
            last = attempt + 1 == self._attempts
            try:
                response = self._send(operation, method, url, headers, body)
            except _UNANSWERED:
                if last or not (acquired := self._retry_quota(False)):
                    raise
                time.sleep(_backoff(attempt + 1, False, None))
                continue
            if response.status_code in _REDIRECTS:
                return None
            root, error = self._answer(operation, response)
            code = (error or {}).get("Code", "")
            if error is not None and code in ("PermanentRedirect", "AuthorizationHeaderMalformed"):
                return None  # another region: boto3 finds it
            status = _status(response, error)
            throttled = status in _THROTTLING_STATUS or code in _THROTTLING_CODES
            retried = error is not None and (status in _TRANSIENT_STATUS or throttled or code in _RETRIED_CODES)
            if retried and not last and (acquired := self._retry_quota(throttled)):
                time.sleep(_backoff(attempt + 1, throttled, response.headers.get("x-amz-retry-after")))
                continue
            if error is None:
                self._quota.release(acquired or _NO_RETRY_INCREMENT)
                if operation == "GetObject":
                    self._check_sum(response)
            return response, root, error, attempt
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _retry_quota(self, throttled: bool) -> int:
        cost = _THROTTLING_RETRY_COST if throttled else _RETRY_COST
        return cost if self._quota.acquire(cost) else 0

    def _answer(
        self, operation: str, response: AWSResponse
    ) -> tuple[ElementTree.Element | None, dict[str, str] | None]:
        """The answer's XML and S3's error, as botocore reads them: an <Error>, or the status for an
        error without one (a 304); a 200 whose body is an <Error> or cut short is a 500 (retried)."""
        content = response.content
        status = response.status_code
        if operation == "GetObject" and status < 300:
            return None, None  # the body is the object
        root = None
        if content:
            try:
                root = _xml(content)
            except ElementTree.ParseError:
                if status < 300:
                    return None, {"Code": "500", "Message": "the answer was cut short or is not XML"}
        if root is not None and root.tag == "Error":
            return None, {"Code": _text(root, "Code") or ("500" if status < 300 else str(status)),
                          "Message": _text(root, "Message") or ""}  # fmt: skip
        if status >= 300:
            return None, {"Code": str(status), "Message": http.client.responses.get(status, "")}  # as botocore
        if operation in ("ListObjectsV2", "CopyObject") and root is None:
            return None, {"Code": "500", "Message": "an empty answer"}
        return root, None

    def _check_sum(self, response: AWSResponse) -> None:
        """The first stored checksum S3 sent with the object, checked as boto3 checks it (a multipart
        object's composite checksum, "...-N", cannot be, and is skipped as boto3 skips it)."""
        for algorithm in self._checksums:
            value = response.headers.get(f"x-amz-checksum-{algorithm}")
            if value is not None and "-" not in value:
                checksums._handle_bytes_response(response, {"headers": response.headers}, algorithm)
                return

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

    def _listing(self, root: ElementTree.Element | None, response: AWSResponse) -> Parsed:
        assert root is not None  # _answer gives ListObjectsV2 its XML or an error
        # Names come URL-encoded only when the store says so: one that ignores encoding-type sends them as they are.
        decode = unquote_plus if _text(root, "EncodingType") == "url" else str
        parsed: Parsed = {"IsTruncated": _text(root, "IsTruncated") == "true"}
        contents = [
            {
                "Key": decode(_text(item, "Key") or ""),
                "LastModified": self._time(_text(item, "LastModified")),
                "ETag": _text(item, "ETag"),
                "Size": int(_text(item, "Size") or 0),
                "StorageClass": _text(item, "StorageClass"),
            }
            for item in root.iter("Contents")
        ]
        if contents:
            parsed["Contents"] = [{k: v for k, v in item.items() if v is not None} for item in contents]
        for name in ("Name", "Prefix", "Delimiter", "StartAfter", "ContinuationToken", "NextContinuationToken",
                     "EncodingType"):  # fmt: skip
            value = _text(root, name)
            if value is not None:
                parsed[name] = decode(value) if name in ("Prefix", "Delimiter", "StartAfter") else value
        for name in ("MaxKeys", "KeyCount"):
            if (value := _text(root, name)) is not None:
                parsed[name] = int(value)
        prefixes = [{"Prefix": decode(_text(p, "Prefix") or "")} for p in root.iter("CommonPrefixes")]
        if prefixes:
            parsed["CommonPrefixes"] = prefixes
        parsed["ResponseMetadata"] = _metadata_of(response)
        return parsed


class _ListPaginator:
    """`get_paginator("list_objects_v2")`: pages follow NextContinuationToken."""

    def __init__(self, client: LeanS3) -> None:
        self._client = client

    def paginate(self, **params: Any) -> Iterator[Parsed]:
        seen: set[str] = set()
        while True:
            page = self._client.list_objects_v2(**params)
            yield page
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            if token in seen:  # as botocore's paginator: a store that loops would list for ever
                raise PaginationError(message=f"The same next token was received twice: {token}")
            seen.add(token)
            params = {**params, "ContinuationToken": token}


def lean(client: Any, timestamps: Callable[[str], Any], endpoint_given: bool) -> Any:
    """`client` with its repeated S3 operations sent by LeanS3, reading timestamps with
    `timestamps` (as the client's parser does). The client itself for an AWS endpoint botocore
    resolves per request (FIPS, dualstack: `endpoint_given` False and not a plain regional URL),
    or where this botocore does not have the parts LeanS3 borrows."""
    if not endpoint_given and not _PLAIN_AWS.fullmatch(client.meta.endpoint_url or ""):
        return client
    try:
        client._request_signer._credentials  # noqa: B018 - the parts LeanS3 takes
        client._endpoint.http_session  # noqa: B018
        checksums._ALGORITHMS_PRIORITY_LIST  # noqa: B018
        checksums._SUPPORTED_CHECKSUM_ALGORITHMS  # noqa: B018
        checksums._handle_bytes_response  # noqa: B018
    except AttributeError:
        return client
    return LeanS3(client, timestamps)


def _plain_bucket(name: Any) -> bool:
    """A bucket named as boto3 accepts one, and not a directory bucket (S3 Express signs otherwise)."""
    return isinstance(name, str) and bool(_BUCKET.fullmatch(name)) and not name.endswith("--x-s3")


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


def _status(response: AWSResponse, error: dict[str, str] | None) -> int:
    """The status that decides a retry: a 200 carrying an error counts as a 500, as in botocore."""
    return 500 if error is not None and response.status_code < 300 else int(response.status_code)


def _xml(content: bytes) -> ElementTree.Element:
    """The XML with its namespaces dropped, as botocore's parser reads it (stores differ in them)."""
    root = ElementTree.fromstring(content)
    for element in root.iter():
        element.tag = element.tag.rpartition("}")[2]
    return root


def _text(element: ElementTree.Element, name: str) -> str | None:
    found = element.find(name)
    return None if found is None else (found.text or "")


def _backoff(attempt: int, throttled: bool, retry_after: str | None) -> float:
    """botocore's standard backoff after the `attempt`-th attempt (1-based): truncated binary
    exponential with full jitter, raised to x-amz-retry-after (ms) by at most 5 s."""
    delay = random.random() * min((1.0 if throttled else 0.05) * (1 << (attempt - 1)), _MAX_BACKOFF)
    try:
        asked = int(retry_after) / 1000.0 if retry_after is not None else None
    except ValueError:
        asked = None
    if asked is not None and asked >= 0:
        return max(delay, min(asked, delay + _RETRY_AFTER_MAX_ADDITIONAL))
    return delay
