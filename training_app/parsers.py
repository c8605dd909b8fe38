"""DRF parser for the protobuf body of POST /api/v1/forward_backward."""

from __future__ import annotations

from typing import Any

import zstandard
from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser

# A decompressed forward_backward body larger than this is refused (zip-bomb guard).
MAX_DECOMPRESSED_BYTES = 512 * 1024 * 1024


class ProtobufParser(BaseParser):
    """Returns the raw message bytes (zstd-decoded when Content-Encoding says so)."""

    media_type = "application/x-protobuf"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict | None = None) -> bytes:
        body = stream.read() if stream is not None else b""
        request = (parser_context or {}).get("request")
        encoding = request.META.get("HTTP_CONTENT_ENCODING", "") if request is not None else ""
        if "zstd" in encoding:
            try:
                body = zstandard.ZstdDecompressor().decompress(body, max_output_size=MAX_DECOMPRESSED_BYTES)
            except zstandard.ZstdError as exc:
                raise ParseError(f"invalid zstd body: {exc}") from None
        return body
