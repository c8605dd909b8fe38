"""Admission limits: the most one request may ask of the server.

Checked in the request path before anything is queued (DESIGN.md "Admission").
Each limit has a server default in settings; a tenant's ``Quota`` may set its
own value (higher or lower) in the admin. A request over the server default is
the client's mistake: 400 ``bad_request`` naming the limit and the value. A
request over a tenant's own limit is a 403 ``quota_exceeded`` (the SDK does not
retry either). docs/api.md "Limits" lists them all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.conf import settings

from sessions_app.models import Quota, Tenant
from tuft_project.exceptions import BadRequest, QuotaExceeded

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limit:
    """One admission limit as it applies to one tenant."""

    name: str  # what the request field is called, for messages
    value: int
    setting: str  # the settings name of the server default
    own: bool  # True when the tenant's quota set it

    def check(self, requested: int) -> None:
        if requested <= self.value:
            return
        if self.own:
            raise QuotaExceeded(f"quota exceeded: {self.name} {requested} is over this tenant's limit of {self.value}")
        raise BadRequest(f"{self.name} {requested} is over the server limit of {self.value} ({self.setting})")


def _limit(tenant: Tenant, field: str, name: str, setting: str) -> Limit:
    own = Quota.objects.filter(tenant=tenant).values_list(field, flat=True).first()
    if own is not None:
        return Limit(name, int(own), setting, own=True)
    return Limit(name, int(getattr(settings, setting)), setting, own=False)


def num_samples_limit(tenant: Tenant) -> Limit:
    return _limit(tenant, "max_num_samples", "num_samples", "TUFT_MAX_NUM_SAMPLES")


def fwdbwd_tokens_limit(tenant: Tenant) -> Limit:
    return _limit(tenant, "max_fwdbwd_tokens", "tokens per forward_backward", "TUFT_MAX_FWDBWD_TOKENS")


def check_num_samples(tenant: Tenant, num_samples: int) -> None:
    num_samples_limit(tenant).check(num_samples)


def check_fwdbwd_tokens(tenant: Tenant, tokens: int) -> None:
    fwdbwd_tokens_limit(tenant).check(tokens)

