"""The lean S3 requests (model_store.lean_s3) answer as boto3 answers the same call.

Each check sends the same calls through make_client's client (lean) and through a plain boto3
client with the same settings, on moto and on SeaweedFS, and compares what comes back: fields,
exception classes and error codes. A scripted HTTP stand-in plays the answers a store gives
rarely (throttling, 5xx, a redirect) and counts the requests each client sends for them.
"""

from __future__ import annotations

import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from devstack.pod_runtime import free_port
from devstack.s3_servers import S3Server
from model_store.lean_s3 import LeanS3
from model_store.s3 import _CLIENT_CONFIG, S3Settings, make_client
from pod_contract.env import ConfigError
from trading_operator.config import OperatorConfig

KEYS = ["plain.json", "with space+plus/ü-é.json", "dir/a.bin", "dir/b.bin", "dir/sub/c.bin", "other/d.bin"]


def plain_client(endpoint: str, access_key: str = "testing", secret_key: str = "testing") -> Any:
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key, config=_CLIENT_CONFIG)  # fmt: skip


def _raised(call: Any) -> ClientError:
    with pytest.raises(ClientError) as caught:
        call()
    return caught.value


def test_make_client_sends_the_repeated_operations_lean() -> None:
    """If a botocore upgrade took away a part LeanS3 borrows, this says so (not a silent slowdown)."""
    client = make_client(S3Settings("models", "http://127.0.0.1:9"), "k", "s")
    assert isinstance(client, LeanS3)
    assert client.meta.region_name == "us-east-1"  # everything else is the boto3 client's


def test_the_way_back_is_the_plain_boto3_client() -> None:
    """S3_LEAN_REQUESTS=false (the operator's setting) gives every request to boto3."""
    assert OperatorConfig.from_env({}).lean_s3 is True
    assert OperatorConfig.from_env({"S3_LEAN_REQUESTS": "false"}).lean_s3 is False
    with pytest.raises(ConfigError, match="S3_LEAN_REQUESTS must be"):
        OperatorConfig.from_env({"S3_LEAN_REQUESTS": "maybe"})
    client = make_client(S3Settings("models", "http://127.0.0.1:9"), "k", "s", lean=False)
    assert not isinstance(client, LeanS3) and client.get_object.__self__ is client  # boto3's own method


@pytest.mark.parametrize(("setting", "lean_on_aws"), [(None, True), ("AWS_USE_FIPS_ENDPOINT", False),
                                                    ("AWS_USE_DUALSTACK_ENDPOINT", False)])  # fmt: skip
def test_aws_endpoints_resolved_per_request_stay_boto3s(
    setting: str | None, lean_on_aws: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No endpoint given (AWS): lean on the plain regional endpoints only; FIPS and dualstack are
    botocore's to resolve for each request."""
    if setting:
        monkeypatch.setenv(setting, "true")
    for region in ("us-east-1", "eu-west-1", "cn-north-1"):
        client = make_client(S3Settings("models", None, region), "k", "s")
        assert isinstance(client, LeanS3) is lean_on_aws, (region, client.meta.endpoint_url)
    assert isinstance(make_client(S3Settings("models", "http://127.0.0.1:9"), "k", "s"), LeanS3)  # given: lean


@pytest.mark.s3_stores
def test_each_operation_answers_as_boto3_does(s3_server: S3Server, s3: Any, bucket: str) -> None:
    plain = plain_client(s3_server.endpoint, s3_server.access_key, s3_server.secret_key)
    assert isinstance(s3, LeanS3)
    for i, key in enumerate(KEYS):
        put = s3.put_object(Bucket=bucket, Key=key, Body=f"body {i}", ContentType="application/json",
                            Metadata={"sha256": f"{i:064d}"})  # fmt: skip
        assert put["ETag"] == plain.head_object(Bucket=bucket, Key=key)["ETag"]

    s3.put_object(Bucket=bucket, Key="from-a-file.bin", Body=io.BytesIO(b"read from a file"))
    assert plain.get_object(Bucket=bucket, Key="from-a-file.bin")["Body"].read() == b"read from a file"
    s3.delete_object(Bucket=bucket, Key="from-a-file.bin")

    def got(client: Any, key: str) -> dict[str, Any]:
        answer = client.get_object(Bucket=bucket, Key=key)
        fields = {k: answer.get(k) for k in ("ETag", "ContentLength", "ContentType", "Metadata", "LastModified")}
        return {**fields, "Body": answer["Body"].read()}

    for key in KEYS:
        assert got(s3, key) == got(plain, key)
        assert got(s3, key)["Body"].startswith(b"body ")

    copied = s3.copy_object(Bucket=bucket, Key="copy.json", CopySource={"Bucket": bucket, "Key": KEYS[1]},
                            MetadataDirective="REPLACE", Metadata={"sha256": "f" * 64},
                            ContentType="text/plain")  # fmt: skip
    assert copied["CopyObjectResult"]["ETag"].strip('"') == plain.head_object(Bucket=bucket, Key="copy.json")[
        "ETag"].strip('"')  # fmt: skip
    assert got(s3, "copy.json") == got(plain, "copy.json")
    assert got(s3, "copy.json")["Metadata"] == {"sha256": "f" * 64}

    def listed(client: Any, **params: Any) -> list[dict[str, Any]]:
        fields = ("Contents", "CommonPrefixes", "IsTruncated", "KeyCount", "Prefix", "Delimiter", "MaxKeys")
        return [{k: page.get(k) for k in fields}
                for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, **params)]  # fmt: skip

    for params in ({}, {"Prefix": "dir/"}, {"Delimiter": "/"}, {"Prefix": "dir/", "Delimiter": "/"},
                   {"MaxKeys": 2}, {"Prefix": "with space+plus/"}, {"Prefix": "none/"}):  # fmt: skip
        assert listed(s3, **params) == listed(plain, **params), params
    assert len(listed(s3, MaxKeys=2)) == 4  # seven keys, two a page: the pages follow their token
    assert [o["Key"] for o in listed(s3, Prefix="with space+plus/")[0]["Contents"]] == [KEYS[1]]

    s3.delete_object(Bucket=bucket, Key="copy.json", IfMatch=copied["CopyObjectResult"]["ETag"])
    assert "copy.json" not in [o["Key"] for page in listed(plain) for o in page["Contents"] or []]


@pytest.mark.s3_stores
def test_errors_are_the_exceptions_boto3_raises(s3_server: S3Server, s3: Any, bucket: str) -> None:
    plain = plain_client(s3_server.endpoint, s3_server.access_key, s3_server.secret_key)
    etag = s3.put_object(Bucket=bucket, Key="doc.json", Body=b"{}")["ETag"]
    calls = {
        "missing key": lambda c: c.get_object(Bucket=bucket, Key="nothing.json"),
        "unchanged (304)": lambda c: c.get_object(Bucket=bucket, Key="doc.json", IfNoneMatch=etag),
        "exists already": lambda c: c.put_object(Bucket=bucket, Key="doc.json", Body=b"{}", IfNoneMatch="*"),
        "stale ETag": lambda c: c.put_object(Bucket=bucket, Key="doc.json", Body=b"{}", IfMatch='"0123"'),
        "missing copy source": lambda c: c.copy_object(Bucket=bucket, Key="x.json",
                                                       CopySource={"Bucket": bucket, "Key": "nothing.json"}),
        "missing bucket": lambda c: c.list_objects_v2(Bucket=f"{bucket}-none"),
    }  # fmt: skip
    for what, call in calls.items():
        lean, theirs = _raised(lambda: call(s3)), _raised(lambda: call(plain))  # noqa: B023
        assert type(lean).__name__ == type(theirs).__name__, what  # each client makes its own classes
        assert lean.response["Error"]["Code"] == theirs.response["Error"]["Code"], what
        assert lean.response["ResponseMetadata"]["HTTPStatusCode"] == theirs.response["ResponseMetadata"][
            "HTTPStatusCode"], what  # fmt: skip
    assert isinstance(_raised(lambda: s3.get_object(Bucket=bucket, Key="nothing.json")), s3.exceptions.NoSuchKey)


def test_a_call_with_other_parameters_is_boto3s(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="doc.json", Body=b"0123456789")
    assert s3.get_object(Bucket=bucket, Key="doc.json", Range="bytes=2-4")["Body"].read() == b"234"


# -- answers a store gives rarely, from a scripted stand-in --------------------------------------


class Scripted:
    """An HTTP server answering each request with the next (status, headers, body) of a script
    (the last one repeats), counting the requests."""

    def __init__(self, script: list[tuple[int, dict[str, str], bytes]]) -> None:
        self.script, self.requests = script, 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, headers, body = owner.script[min(owner.requests, len(owner.script) - 1)]
                owner.requests += 1
                self.send_response(status)
                for name, value in {"Content-Length": str(len(body)), **headers}.items():  # a script may lie
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_DELETE = _answer

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Scripted:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def _error_body(code: str) -> bytes:
    return f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>scripted</Message></Error>".encode()


OK = (200, {"ETag": '"abc"', "Content-Type": "application/json"}, b"{}")
SLOW_DOWN = (503, {}, _error_body("SlowDown"))
INTERNAL = (500, {}, _error_body("InternalError"))
REDIRECT = (301, {}, _error_body("PermanentRedirect"))


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("model_store.lean_s3._backoff", lambda *_: 0.0)
    monkeypatch.setattr("random.random", lambda: 0.0)  # botocore's jitter: no wait either


def _listing(
    keys: list[str], namespace: str = "http://s3.amazonaws.com/doc/2006-03-01/", encoded: bool = False
) -> bytes:
    contents = "".join(f"<Contents><Key>{k}</Key><Size>1</Size><ETag>&quot;e&quot;</Ketag></Contents>".replace(
        "</Ketag>", "</ETag>") for k in keys)  # fmt: skip
    encoding = "<EncodingType>url</EncodingType>" if encoded else ""
    return (f'<?xml version="1.0"?><ListBucketResult xmlns="{namespace}"><Name>models</Name><Prefix></Prefix>'
            f"<KeyCount>{len(keys)}</KeyCount><MaxKeys>1000</MaxKeys>{encoding}<IsTruncated>false</IsTruncated>"
            f"{contents}</ListBucketResult>").encode()  # fmt: skip


def _get(client: Any) -> Any:
    return client.get_object(Bucket="models", Key="doc.json")["Body"].read()


def _copy(client: Any) -> Any:
    return client.copy_object(Bucket="models", Key="b.json", CopySource={"Bucket": "models", "Key": "a.json"})[
        "CopyObjectResult"]["ETag"]  # fmt: skip


def _list(client: Any) -> Any:
    return [o["Key"] for o in client.list_objects_v2(Bucket="models").get("Contents", [])]


ERROR_AFTER_SPACES = b"<?xml version='1.0'?>\n" + b" " * 600 + _error_body("NoSuchKey")[21:]
SCRIPTS = {
    "throttled twice": (_get, [SLOW_DOWN, SLOW_DOWN, OK]),
    "one 5xx": (_get, [INTERNAL, OK]),
    "5xx for good": (_get, [INTERNAL]),
    "redirect": (_get, [REDIRECT]),
    "a body cut short": (_get, [(200, {"Content-Length": "10"}, b"abc")]),
    "a wrong stored checksum": (_get, [(200, {"x-amz-checksum-crc32": "AAAAAA=="}, b"{}")]),
    "a copy failing after its keep-alive spaces": (_copy, [(200, {}, ERROR_AFTER_SPACES)]),
    "a listing answered with a 200 error": (_list, [(200, {}, _error_body("InternalError"))]),
    "a listing cut short": (_list, [(200, {}, _listing(["a.json"])[:90])]),
    "a listing not URL-encoded": (_list, [(200, {}, _listing(["a+b%41.json", "c d.json"]))]),
    "a listing URL-encoded": (_list, [(200, {}, _listing(["a%2Bb%2541.json", "c+d.json"], encoded=True))]),
    "a listing in another namespace": (_list, [(200, {}, _listing(["a.json"], "http://doc.s3.amazonaws.com/2006-03-01"))]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(SCRIPTS))
def test_rare_answers_end_as_in_boto3(case: str, no_backoff: None) -> None:
    """The same answers, the same number of requests sent, the same outcome (what the call gives,
    or the exception it raises with S3's error code)."""
    call, script = SCRIPTS[case]
    outcomes = []
    for make in (lambda e: make_client(S3Settings("models", e), "k", "s"), plain_client):
        with Scripted(list(script)) as stand_in:
            try:
                outcome: Any = call(make(stand_in.endpoint))
            except Exception as exc:  # what boto3 raises, the lean client must raise
                outcome = (type(exc).__name__, (getattr(exc, "response", None) or {}).get("Error", {}).get("Code"))
            sent = stand_in.requests
        outcomes.append((outcome, sent if case != "redirect" else None))
    if case == "a body cut short":  # both a BotoCoreError (what the store's callers catch), named apart
        assert outcomes == [(("IncompleteReadError", None), 1), (("ResponseStreamingError", None), 1)]
        return
    assert outcomes[0] == outcomes[1]
    expected = {
        "redirect": ("ClientError", "PermanentRedirect"),  # lean left the call to boto3, which sent its own
        "a wrong stored checksum": ("FlexibleChecksumError", None),
        "a copy failing after its keep-alive spaces": ("NoSuchKey", "NoSuchKey"),
        "a listing not URL-encoded": ["a+b%41.json", "c d.json"],
        "a listing URL-encoded": ["a+b%41.json", "c d.json"],
    }
    if case in expected:
        assert outcomes[0][0] == expected[case]


def test_what_boto3_would_refuse_is_boto3s_to_refuse(s3: Any, bucket: str) -> None:
    plain_error = None
    for client in (s3, plain_client(s3.meta.endpoint_url)):
        with pytest.raises(Exception) as caught:
            client.put_object(Bucket=bucket, Key="doc.json", Body=b"{}", Metadata={"note": "déjà vu"})
        assert plain_error in (None, type(caught.value).__name__)
        plain_error = type(caught.value).__name__
    assert plain_error == "ParamValidationError"


def test_a_store_that_does_not_answer_is_retried_then_reported_as_boto3_does(no_backoff: None) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there

    def outcome(client: Any) -> tuple[str, int, list[str]]:
        sent: list[str] = []
        failed: list[str] = []
        client.meta.events.register("before-send.s3", lambda event_name, **_: sent.append(event_name))
        client.meta.events.register(
            "after-call-error.s3", lambda exception, **_: failed.append(type(exception).__name__)
        )
        with pytest.raises(Exception) as caught:
            client.get_object(Bucket="models", Key="doc.json")
        return type(caught.value).__name__, len(sent), failed

    lean = outcome(make_client(S3Settings("models", nowhere), "k", "s"))
    assert lean == outcome(plain_client(nowhere))
    assert lean == ("EndpointConnectionError", 6, ["EndpointConnectionError"])  # 1 + 5 retries, then one error
