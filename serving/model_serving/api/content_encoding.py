"""Request bodies the client compressed (`Content-Encoding: gzip` or `deflate`, what tritonclient's
`request_compression_algorithm` sends), inflated without ever holding more than the body limit."""

from __future__ import annotations

import zlib

from model_serving.errors import BadRequest, HttpError, UnsupportedMediaType

# zlib's wbits per encoding: gzip framing, or zlib framing for "deflate" (what HTTP means by it).
_WBITS = {b"gzip": 31, b"x-gzip": 31, b"deflate": 15}


def encoding_of(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The request's Content-Encoding (lower case), None when absent or identity."""
    for name, value in headers:
        if name == b"content-encoding":
            encoding = value.strip().lower()
            return None if encoding in (b"", b"identity") else encoding
    return None


def inflate(body: bytes, encoding: bytes, limit: int, too_large: HttpError) -> bytes:
    wbits = _WBITS.get(encoding)
    if wbits is None:
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding.decode(errors='replace')[:20]!r} is not supported: send the body "
            "uncompressed, gzip or deflate"
        )
    inflater = zlib.decompressobj(wbits)
    try:
        body = inflater.decompress(body, limit + 1)  # stops past the limit: a small bomb stays small
    except zlib.error as exc:
        raise BadRequest(f"the body is not valid {encoding.decode()} data: {exc}") from None
    if len(body) > limit:
        raise too_large
    if not inflater.eof or inflater.unused_data:
        raise BadRequest(f"the {encoding.decode()} body is cut short or has bytes after its end")
    return body
