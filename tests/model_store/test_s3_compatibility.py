"""What the model store relies on from an S3 server, checked on moto and on SeaweedFS (a real
S3-compatible store users run on-prem), with the differences found between them:

- SigV4: SeaweedFS checks signatures against its identities; moto accepts any (a mock).
- A PUT with If-Match on a key deleted meanwhile: 404 NoSuchKey on moto (as on AWS), 412 on
  SeaweedFS. The store treats both as "another writer got there first" (lost_conditional_write).
- CopyObject's ETag: quoted on moto, bare on SeaweedFS; the store compares ETags unquoted.
- Timestamps: the clients parse S3's two forms themselves, to the datetimes botocore's parser gives.
"""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.utils import parse_timestamp

from devstack.demo_model import DemoModel
from devstack.s3_servers import S3Server
from model_store.errors import PromotionInProgress
from model_store.layout import MODEL_REGISTRY_KEY, ModelLocation, Stage
from model_store.promotion import promote
from model_store.publish import publish_version
from model_store.registry import read_document, update_document
from model_store.s3 import _S3Timestamps, error_code, is_precondition_failed, lost_conditional_write

pytestmark = pytest.mark.s3_stores
SPY = ModelLocation.of("SPY", "etf")


def _error(call: Any) -> ClientError:
    with pytest.raises(ClientError) as caught:
        call()
    return caught.value


def test_requests_signed_with_a_wrong_secret_are_refused(s3_server: S3Server, bucket: str) -> None:
    if s3_server.kind == "moto":
        pytest.skip("moto accepts any signature (a mock): what SeaweedFS adds here")
    forged = s3_server.client(bucket, secret_key="not-the-secret")
    refused = _error(lambda: forged.list_objects_v2(Bucket=bucket))
    assert error_code(refused) == "SignatureDoesNotMatch"


def test_conditional_writes_refuse_a_stale_or_existing_object(s3: Any, bucket: str) -> None:
    first = s3.put_object(Bucket=bucket, Key="doc.json", Body=b"1", IfNoneMatch="*")
    assert is_precondition_failed(_error(lambda: s3.put_object(Bucket=bucket, Key="doc.json", Body=b"2",
                                                               IfNoneMatch="*")))  # fmt: skip
    s3.put_object(Bucket=bucket, Key="doc.json", Body=b"2", IfMatch=first["ETag"])
    stale = _error(lambda: s3.put_object(Bucket=bucket, Key="doc.json", Body=b"3", IfMatch=first["ETag"]))
    assert is_precondition_failed(stale)
    s3.delete_object(Bucket=bucket, Key="doc.json")
    vanished = _error(lambda: s3.put_object(Bucket=bucket, Key="doc.json", Body=b"4", IfMatch=first["ETag"]))
    assert lost_conditional_write(vanished), error_code(vanished)  # 404 on moto and AWS, 412 on SeaweedFS


def test_an_unchanged_object_is_not_sent_again(s3: Any, bucket: str) -> None:
    etag = s3.put_object(Bucket=bucket, Key="doc.json", Body=b"{}")["ETag"]
    assert error_code(_error(lambda: s3.get_object(Bucket=bucket, Key="doc.json", IfNoneMatch=etag))) in {
        "304",
        "NotModified",
    }


def test_a_document_deleted_between_read_and_write_is_written_on_the_next_try(s3: Any, bucket: str) -> None:
    update_document(s3, bucket, MODEL_REGISTRY_KEY, lambda doc: doc.update(first=True) or True)
    deleted = []

    def change(doc: dict[str, Any]) -> bool:
        if not deleted:  # someone deletes the document after we read it
            s3.delete_object(Bucket=bucket, Key=MODEL_REGISTRY_KEY)
            deleted.append(True)
        doc["second"] = True
        return True

    assert update_document(s3, bucket, MODEL_REGISTRY_KEY, change)
    assert read_document(s3, bucket, MODEL_REGISTRY_KEY)[0] == {"second": True}


def test_a_move_whose_intent_vanished_under_it_is_retried(s3: Any, bucket: str, demo_v1: DemoModel) -> None:
    """Another replica dropped the intent this one had read: a retry, not a storage error."""
    publish_version(s3, bucket, SPY, "v1.0", demo_v1.files)
    intent_key = SPY.intent_key(Stage.PRODUCTION)
    s3.put_object(Bucket=bucket, Key=intent_key, Body=b'{"id": "other", "to_version": "v0.9"}')

    class DropsTheIntent:
        def __getattr__(self, name: str) -> Any:
            return getattr(s3, name)

        def put_object(self, **kwargs: Any) -> Any:
            if kwargs["Key"] == intent_key and "IfMatch" in kwargs:
                s3.delete_object(Bucket=bucket, Key=intent_key)
            return s3.put_object(**kwargs)

    with pytest.raises(PromotionInProgress):
        promote(DropsTheIntent(), bucket, SPY, "v1.0", Stage.PRODUCTION, "tests")
    assert promote(s3, bucket, SPY, "v1.0", Stage.PRODUCTION, "tests").recorded  # the retry goes through


def test_copied_files_keep_the_etag_the_copy_reported(s3: Any, bucket: str, demo_v1: DemoModel) -> None:
    """The drift check compares the stage listing with the ETags recorded at the copy: a store
    whose ETags differ would cost a download of every file at every check."""
    publish_version(s3, bucket, SPY, "v1.0", demo_v1.files)
    result = promote(s3, bucket, SPY, "v1.0", Stage.PRODUCTION, "tests")
    assert result.stage_manifest is not None
    recorded = {name: str(etag).strip('"') for name, etag in result.stage_manifest.extra["etags"].items()}
    prefix = SPY.stage_prefix(Stage.PRODUCTION)
    listed = {o["Key"][len(prefix) :]: o["ETag"].strip('"')
              for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]}  # fmt: skip
    assert recorded == {name: listed[name] for name in recorded}


def test_timestamps_read_as_botocore_reads_them(s3_server: S3Server, s3: Any, bucket: str) -> None:
    """The Last-Modified header (HEAD) and a listing's LastModified, through make_client's parser
    and through a client with botocore's own: the same datetimes, tzinfo included."""
    plain = boto3.client("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1",
                         aws_access_key_id=s3_server.access_key,
                         aws_secret_access_key=s3_server.secret_key)  # fmt: skip
    s3.put_object(Bucket=bucket, Key="doc.json", Body=b"{}")

    def seen(client: Any) -> list[str]:
        listed = client.list_objects_v2(Bucket=bucket)["Contents"][0]["LastModified"]
        return [repr(listed), repr(client.head_object(Bucket=bucket, Key="doc.json")["LastModified"])]

    assert seen(s3) == seen(plain)


@pytest.mark.parametrize("value", [
    "2024-02-29T23:59:59.000Z", "2024-02-29T23:59:59Z", "2024-02-29T23:59:59.5Z", "2024-02-29T23:59:59.123456Z",
    "2024-02-29T23:59:59.1234567Z",  # more digits than a datetime holds: botocore's parser decides
    "Thu, 29 Feb 2024 23:59:59 GMT", "Mon, 01 Jan 1990 00:00:00 GMT",
    "2024-02-29T23:59:59+02:00", "1709251199", "Thu, 29 Feb 2024 23:59:59 +0000",  # not S3's forms: botocore's parser
])  # fmt: skip
def test_the_timestamp_parser_agrees_with_botocores(value: str) -> None:
    assert repr(_S3Timestamps()(value)) == repr(parse_timestamp(value))


@pytest.mark.parametrize("value", ["2023-02-29T00:00:00.000Z", "Thu, 30 Feb 2024 23:59:59 GMT", "yesterday"])
def test_a_timestamp_botocore_refuses_is_refused(value: str) -> None:
    with pytest.raises(ValueError):
        parse_timestamp(value)
    with pytest.raises(ValueError):
        _S3Timestamps()(value)
