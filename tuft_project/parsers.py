"""Reading request bodies within bounds: JSON for every endpoint, shared by DRF and plain views.

Every body is read with a size limit (``TUFT_MAX_BODY_BYTES``, 413 beyond it)
before it is parsed, and a JSON body that cannot be stored or parsed safely is a
400 here rather than a 500 further in: nesting too deep for the parser, strings
with NUL characters (PostgreSQL refuses them in text and JSON columns) or lone
UTF-16 surrogates ("\ud800": not encodable, so no database stores them), and the
non-standard NaN/Infinity literals. A number that overflows to infinity (1e999)
is left to the views, which refuse it where it is used: an ordered training
operation must still consume its seq_id as a failed future.
"""

from __future__ import annotations

import json
import logging
from typing import IO, Any

from django.conf import settings
from rest_framework.exceptions import APIException, ParseError
from rest_framework.parsers import BaseParser

logger = logging.getLogger(__name__)

# NOTE: parsers raise DRF's exceptions, not tuft_project.exceptions: DRF imports
# this module while tuft_project.exceptions is still importing DRF's views.


class BodyTooLarge(APIException):
    status_code = 413
    default_detail = "request body too large"
    default_code = "payload_too_large"


def read_body(stream: IO[bytes] | None, limit: int | None = None) -> bytes:
    """All of ``stream``; more than ``limit`` bytes (default ``TUFT_MAX_BODY_BYTES``) is a 413."""
    limit = settings.TUFT_MAX_BODY_BYTES if limit is None else limit
    if stream is None:
        return b""
    body = stream.read(limit + 1)
    if len(body) > limit:
        raise BodyTooLarge(f"request body is larger than the limit of {limit} bytes (TUFT_MAX_BODY_BYTES)")
    return body


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode_json(raw: bytes) -> Any:
    """Parse a JSON body; raise ``ParseError`` (400) for anything the server could not store or use."""
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:
        raise ParseError("JSON body is nested too deeply") from None
    except ValueError as exc:  # includes UnicodeDecodeError and JSONDecodeError
        raise ParseError(f"JSON parse error: {exc}") from None
    where = find_unstorable(data)
    if where is not None:
        where = where.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
        raise ParseError(f"JSON strings must not contain NUL characters or lone surrogates (found at {where})")
    return data


def _storable(text: str) -> bool:
    """No NUL (PostgreSQL refuses it in text) and no lone surrogate (not encodable as UTF-8)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def find_unstorable(data: Any) -> str | None:
    """The path of the first key or string in ``data`` (parsed JSON) that no database could store, else None.

    Iterative rather than recursive, so a deeply nested body cannot exhaust the stack here.
    """
    stack: list[tuple[str, Any]] = [("$", data)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            if not _storable(value):
                return where
        elif isinstance(value, dict):
            for key, item in value.items():
                if not _storable(key):
                    return f"{where} (a key)"
                stack.append((f"{where}.{key}", item))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", item) for i, item in enumerate(value))
    return None


class JSONBodyParser(BaseParser):
    """DRF's JSON parser, bounded (see the module docstring)."""

    media_type = "application/json"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict | None = None) -> Any:
        return decode_json(read_body(stream))
