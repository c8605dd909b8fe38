from typing import Any

from rest_framework.permissions import BasePermission

from sessions_app.models import Tenant


class IsTenant(BasePermission):
    """The request carries a valid tenant API key."""

    def has_permission(self, request: Any, view: Any) -> bool:
        return isinstance(request.user, Tenant)
