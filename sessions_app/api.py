"""The base view every Tinker API endpoint builds on: one tenant gate, typed bodies."""

from __future__ import annotations

from typing import Any, TypeVar

import pydantic
from rest_framework.request import Request
from rest_framework.views import APIView

from sessions_app.models import Tenant
from tuft_project.exceptions import BadRequest, NotFound

M = TypeVar("M", bound=pydantic.BaseModel)


class TenantAPIView(APIView):
    """Authenticated by X-API-Key (see ``ApiKeyAuthentication``); ``self.tenant`` is the caller."""

    request: Request

    @property
    def tenant(self) -> Tenant:
        return self.request.user  # type: ignore[return-value]

    def initial(self, request: Any, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        # No stored id contains NUL, and PostgreSQL refuses NUL in a query parameter.
        if any("\x00" in value for value in kwargs.values() if isinstance(value, str)):
            raise NotFound("not found")

    def parse(self, model: type[M]) -> M:
        """Validate the JSON body with the SDK's own pydantic request type."""
        data: Any = self.request.data
        if not isinstance(data, dict):
            raise BadRequest("request body must be a JSON object")
        return model.model_validate(data)
