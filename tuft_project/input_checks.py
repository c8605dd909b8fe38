"""Checks of request values against what the database can store.

Every id, counter and string a request carries ends up in a column: an
``IntegerField`` (int32 on PostgreSQL), a ``CharField`` of some length, or text
in which PostgreSQL refuses NUL characters. SQLite accepts all of these, so
without explicit checks the same request is a 200 on one database and a 500 on
the other. These helpers turn them into a 400 that names the field, whichever
database is behind the server; ``tuft_project.exceptions`` maps any
``DataError`` that still gets through to a 400 as well.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from tuft_project.exceptions import BadRequest

logger = logging.getLogger(__name__)

# Largest value of an IntegerField on PostgreSQL (seq ids, model_seq_id, ...).
MAX_DB_INT = 2**31 - 1
# Range of a BigIntegerField (lora seed) and of torch's generator seeds.
MIN_DB_BIGINT, MAX_DB_BIGINT = -(2**63), 2**63 - 1


def check_id_int(name: str, value: int | None) -> None:
    """A sequence number or similar id: 0..2^31-1 (None passes; callers require it if they must)."""
    if value is not None and not 0 <= value <= MAX_DB_INT:
        raise BadRequest(f"{name} must be between 0 and {MAX_DB_INT}, got {value}")


def check_bigint(name: str, value: int | None) -> None:
    if value is not None and not MIN_DB_BIGINT <= value <= MAX_DB_BIGINT:
        raise BadRequest(f"{name} must be between {MIN_DB_BIGINT} and {MAX_DB_BIGINT}, got {value}")


def check_text(name: str, value: str | None, max_length: int) -> None:
    """A string stored in a CharField of ``max_length`` characters."""
    if value is None:
        return
    if len(value) > max_length:
        raise BadRequest(f"{name} is {len(value)} characters long; the limit is {max_length}")
    if "\x00" in value:
        raise BadRequest(f"{name} must not contain NUL characters")



def check_metadata(name: str, value: Any) -> None:
    """``user_metadata`` as stored in a JSONField: no infinite or NaN numbers.

    JSON bodies may carry 1e999, which parses as infinity; no database accepts it
    in a JSON column (SQLite's JSON_VALID check fails). Iterative, so a deeply
    nested value cannot exhaust the stack.
    """
    stack: list[tuple[str, Any]] = [(name, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise BadRequest(f"{where} must be a finite number, got {item}")
        if isinstance(item, dict):
            stack.extend((f"{where}.{k}", v) for k, v in item.items())
        elif isinstance(item, (list, tuple)):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(item))
