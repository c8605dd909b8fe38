"""GET /api/v1/billing/usage/*: the usage queries of the SDK's AdminClient, for the caller's tenant."""

from __future__ import annotations

from rest_framework.response import Response

from sessions_app import billing
from sessions_app.api import TenantAPIView


class BillingUsageEventsView(TenantAPIView):
    def get(self, request):  # type: ignore[no-untyped-def]
        start, end = billing.parse_window(request.query_params.get("starting_on"),
                                          request.query_params.get("ending_before"))
        return Response(billing.billing_events(self.tenant, start, end))


class CheckpointStorageView(TenantAPIView):
    def get(self, request):  # type: ignore[no-untyped-def]
        # project_id is accepted and ignored: TuFT has no projects, a tenant is the unit.
        return Response(billing.checkpoint_storage(self.tenant))
