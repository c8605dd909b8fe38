"""Downloadable checkpoints: save_weights_external and its signed, expiring file URLs.

``save_weights_external`` writes a run's adapter as a plain PEFT directory
(``tinker://<run>/external_weights/<name>``); ``external_weights_urls`` hands
out one URL per file, each carrying a signed token that names the checkpoint
and the file and stops working after ``TUFT_DOWNLOAD_URL_TTL_S``. The download
view needs no API key: the token is the credential, so the URL can be given to
``curl``, ``urllib`` or the SDK's ``tinker checkpoint download`` as is.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core import signing
from django.utils import timezone

from sessions_app.models import Tenant
from training_app.checkpoint_paths import absolute
from training_app.models import Checkpoint
from tuft_project.exceptions import NotFound

logger = logging.getLogger(__name__)

_SALT = "tuft.checkpoint-download"
# The file name a token carries to ask for the whole checkpoint as one .tar.gz.
ARCHIVE = ""


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


@dataclass(frozen=True)
class DownloadGrant:
    checkpoint_pk: int
    tenant_pk: int  # the tenant the URL was issued to
    version: int  # checkpoint_version() when issued
    relpath: str  # a file of the checkpoint, or ARCHIVE for all of it


def checkpoint_version(ckpt: Checkpoint) -> int:
    """Which save of a checkpoint this is: its write time in microseconds.

    A save under an existing name rewrites the row (and ``created_at``), so a
    token for the old files never serves the new ones.
    """
    return (ckpt.created_at - _EPOCH) // datetime.timedelta(microseconds=1)


def checkpoint_files(ckpt: Checkpoint) -> list[str]:
    """The checkpoint's files, relative to its directory, in a stable order."""
    root = absolute(ckpt.storage_path)
    if not root.is_dir():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def sign_download(ckpt: Checkpoint, relpath: str, tenant: Tenant) -> str:
    """A token for ``relpath`` of ``ckpt``, issued to ``tenant`` (who may read it now)."""
    payload = {"c": ckpt.pk, "t": tenant.pk, "v": checkpoint_version(ckpt), "f": relpath}
    return signing.dumps(payload, salt=_SALT, compress=True)


def download_expiry() -> datetime.datetime:
    """When URLs signed now stop working (reported to the client as ``expires``)."""
    return timezone.now() + datetime.timedelta(seconds=settings.TUFT_DOWNLOAD_URL_TTL_S)


def check_download_token(token: str) -> DownloadGrant:
    """The grant a token carries, or NotFound when it is forged, expired or malformed.

    Every failure is the same 404 so a token reveals nothing about what exists.
    """
    try:
        data = signing.loads(token, salt=_SALT, max_age=settings.TUFT_DOWNLOAD_URL_TTL_S)
        return DownloadGrant(checkpoint_pk=int(data["c"]), tenant_pk=int(data["t"]), version=int(data["v"]),
                             relpath=str(data["f"]))
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        raise NotFound("download link is invalid or has expired") from None


def access_download(grant: DownloadGrant) -> tuple[Checkpoint, Path | None]:
    """The checkpoint and file a grant names (None: the whole checkpoint as an archive).

    Only while the grant's tenant may still read this version of the checkpoint:
    its own, or published by its owner, active, not expired. Unpublishing,
    deleting or overwriting a checkpoint revokes every link to it at once.
    """
    ckpt = Checkpoint.objects.filter(pk=grant.checkpoint_pk).first()
    tenant = Tenant.objects.filter(pk=grant.tenant_pk, is_active=True).first()
    if (ckpt is None or tenant is None or checkpoint_version(ckpt) != grant.version
            or not (ckpt.tenant_id == tenant.pk or ckpt.public)
            or (ckpt.expires_at is not None and ckpt.expires_at <= timezone.now())):
        raise NotFound("download link is invalid or has expired")
    root = absolute(ckpt.storage_path).resolve()
    if grant.relpath == ARCHIVE:
        if not root.is_dir():
            raise NotFound("download link is invalid or has expired")
        return ckpt, None
    path = (root / grant.relpath).resolve()
    # The signed relpath came from checkpoint_files(), but never serve outside the checkpoint.
    if not path.is_relative_to(root) or not path.is_file():
        raise NotFound("download link is invalid or has expired")
    return ckpt, path
