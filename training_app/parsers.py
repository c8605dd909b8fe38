"""DRF parser for the protobuf body of POST /api/v1/forward_backward."""

from __future__ import annotations

import io
from typing import Any

import zstandard
from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser

from tuft_project.parsers import BodyTooLarge, read_body

# Decompressed in slices of this size, so a frame whose header claims a huge
# content size (a zip bomb) never gets a buffer of that size allocated.
_ZSTD_READ_BYTES = 1024 * 1024


def decompress_zstd(body: bytes, limit: int) -> bytes:
    """The decompressed ``body``; refuse (``BodyTooLarge``, 413) more than ``limit`` bytes of output."""
    out = bytearray()
    try:
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body)) as reader:
            while True:
                chunk = reader.read(_ZSTD_READ_BYTES)
                if not chunk:
                    break
                out += chunk
                if len(out) > limit:
                    raise BodyTooLarge(
                        f"zstd body decompresses to more than the limit of {limit} bytes (TUFT_MAX_BODY_BYTES)"
                    )
    except zstandard.ZstdError as exc:
        raise ParseError(f"invalid zstd body: {exc}") from None
    return bytes(out)


class ProtobufParser(BaseParser):
    """Returns the raw message bytes (zstd-decoded when Content-Encoding says so)."""

    media_type = "application/x-protobuf"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict | None = None) -> bytes:
        body = read_body(stream)
        request = (parser_context or {}).get("request")
        encoding = request.META.get("HTTP_CONTENT_ENCODING", "") if request is not None else ""
        if "zstd" in encoding:
            body = decompress_zstd(body, settings.TUFT_MAX_BODY_BYTES)
        return body
