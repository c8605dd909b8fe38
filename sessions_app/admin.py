"""Admin for operators: tenants, API keys, quotas, client sessions and usage.

New API keys are shown once, in the response that creates them (never put in
a message cookie or the database); revoking a key takes effect on the next
request because authentication checks ``revoked_at`` every time.
"""

from __future__ import annotations

import io
import logging
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone

from sessions_app.actions import do_create_api_key, do_finish_session, do_revoke_api_key
from sessions_app.admin_forms import QuotaLimitsForm, format_limit, format_size
from sessions_app.admin_tenant import tenant_overview_html
from sessions_app.models import ApiKey, ClientSession, DailyUsage, DefaultQuota, Quota, Tenant
from sessions_app.usage import write_usage_csv
from tuft_project.admin_confirm import confirmation_page, is_confirmed

logger = logging.getLogger(__name__)

NEW_KEYS_TEMPLATE = "admin/sessions_app/new_keys.html"


def show_new_keys(request: HttpRequest, keys: list[tuple[ApiKey, str]], back_url: str) -> TemplateResponse:
    """The one page that ever shows raw keys; it is not cached."""
    response = TemplateResponse(request, NEW_KEYS_TEMPLATE, {
        **admin.site.each_context(request), "title": "New API keys", "keys": keys, "back_url": back_url,
        "server_url": request.build_absolute_uri("/").rstrip("/"),
    })
    response["Cache-Control"] = "no-store"
    return response


# -- tenants and quotas ---------------------------------------------------------


class QuotaInline(admin.StackedInline):
    model = Quota
    form = QuotaLimitsForm
    can_delete = True
    extra = 0
    max_num = 1
    verbose_name = "own quota"
    verbose_name_plural = "own quota (without one, the tenant follows the default quota)"

    def get_extra(self, request: HttpRequest, obj: Any = None, **kwargs: Any) -> int:
        return 0 if obj is not None and Quota.objects.filter(tenant=obj).exists() else 1

    def get_formset(self, request: HttpRequest, obj: Any = None, **kwargs: Any) -> Any:
        formset = super().get_formset(request, obj, **kwargs)
        # Start the form at the default's values: saved unchanged, it is skipped and
        # the tenant keeps following the default; edit any field to give it its own.
        default = DefaultQuota.load().limits()
        for name, value in default.items():
            if name in formset.form.base_fields:
                formset.form.base_fields[name].initial = value
        return formset


class QuotaSourceFilter(admin.SimpleListFilter):
    title = "quota"
    parameter_name = "quota"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("own", "own quota"), ("default", "default quota")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> QuerySet[Tenant]:
        if self.value() in ("own", "default"):
            return queryset.filter(quota__isnull=self.value() == "default")
        return queryset


class TenantAddForm(forms.ModelForm):
    issue_key = forms.BooleanField(
        required=False, initial=True, label="Issue an API key now",
        help_text="The key is shown once, on the next page.",
    )

    class Meta:
        model = Tenant
        fields = ["name", "is_active"]


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ["name", "is_active", "quota_source", "active_keys", "active_runs", "created_at"]
    list_filter = ["is_active", QuotaSourceFilter]
    search_fields = ["name"]
    inlines = [QuotaInline]
    actions = ["issue_key", "deactivate", "activate"]

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = TenantAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if obj is None:
            return ["name", "is_active", "issue_key"]
        return ["name", "is_active", "created_at", "overview", "deletion"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [] if obj is None else ["created_at", "overview", "deletion"]

    @admin.display(description="keys, runs, sessions, usage")
    def overview(self, obj: Tenant) -> str:
        return tenant_overview_html(obj)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # deletion is per tenant, where it can work (see has_delete_permission)
        return actions

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A tenant with recorded work keeps it: its sessions, runs and usage rows
        # are the history usage accounting reports on (and deleting the rows would
        # orphan checkpoint files). Only a tenant that never did anything can go.
        if obj is not None and _has_recorded_work(obj):
            return False
        return super().has_delete_permission(request, obj)

    @admin.display(description="deletion")
    def deletion(self, obj: Tenant) -> str:
        if _has_recorded_work(obj):
            return ("This tenant has sessions or usage on record, which usage accounting keeps, so it cannot be "
                    "deleted. Deactivate it instead (untick Active, or the list action): every key stops working "
                    "at once and its dashboard logins end.")
        return "This tenant never used the server, so it can be deleted (with its keys and quota)."

    def get_queryset(self, request: HttpRequest) -> QuerySet[Tenant]:
        return super().get_queryset(request).select_related("quota").annotate(
            n_keys=Count("api_keys", filter=Q(api_keys__revoked_at__isnull=True), distinct=True),
            n_runs=Count("training_runs", filter=Q(training_runs__released=False), distinct=True),
        )

    @admin.display(description="quota")
    def quota_source(self, obj: Tenant) -> str:
        return "own" if hasattr(obj, "quota") else "default"

    @admin.display(description="active keys", ordering="n_keys")
    def active_keys(self, obj: Any) -> int:
        return int(obj.n_keys)

    @admin.display(description="active runs", ordering="n_runs")
    def active_runs(self, obj: Any) -> int:
        return int(obj.n_runs)

    def save_model(self, request: HttpRequest, obj: Tenant, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if not change and form.cleaned_data.get("issue_key"):
            key, raw = do_create_api_key(obj, label=f"admin:{request.user}")
            request._tuft_new_keys = [(key, raw)]  # type: ignore[attr-defined]
            logger.info("admin %s created tenant %s with key %s", request.user, obj.name, key.prefix)

    def response_add(self, request: HttpRequest, obj: Tenant, post_url_continue: str | None = None) -> HttpResponse:
        keys = getattr(request, "_tuft_new_keys", None)
        if keys:
            return show_new_keys(request, keys, reverse("admin:sessions_app_tenant_change", args=[obj.pk]))
        return super().response_add(request, obj, post_url_continue)

    @admin.action(description="Issue a new API key (shown once)")
    def issue_key(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> HttpResponse:
        keys = [do_create_api_key(tenant, label=f"admin:{request.user}") for tenant in queryset]
        return show_new_keys(request, keys, reverse("admin:sessions_app_tenant_changelist"))

    @admin.action(description="Deactivate (all their keys stop working)")
    def deactivate(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> HttpResponse | None:
        active = queryset.filter(is_active=True)
        if not is_confirmed(request):
            return confirmation_page(self, request, active, action="deactivate", title="Deactivate tenants?",
                                     consequences=[
                                         "Every API key of these tenants is refused (401) from the next request.",
                                         "Their dashboard logins end and open dashboards sign out.",
                                         "Runs, checkpoints and usage stay; activate them again at any time.",
                                     ], button="Yes, deactivate")
        n = active.update(is_active=False)
        logger.info("admin %s deactivated %d tenant(s)", request.user, n)
        self.message_user(request, f"Deactivated {n} tenant(s); their keys stop working now.", messages.SUCCESS)
        return None

    @admin.action(description="Activate")
    def activate(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        n = queryset.filter(is_active=False).update(is_active=True)
        self.message_user(request, f"Activated {n} tenant(s).", messages.SUCCESS)


def _has_recorded_work(tenant: Tenant) -> bool:
    return tenant.sessions.exists() or tenant.usage.exists()


@admin.register(Quota)
class QuotaAdmin(admin.ModelAdmin):
    form = QuotaLimitsForm
    list_display = ["tenant", "training_runs", "lora_rank", "sampling_sessions", "checkpoint_storage",
                    "train_tokens", "sample_tokens", *Quota.ADMISSION_FIELDS]
    search_fields = ["tenant__name"]
    list_select_related = ["tenant"]

    @admin.display(description="concurrent training runs", ordering="max_training_runs")
    def training_runs(self, obj: Quota) -> str:
        return format_limit(obj.max_training_runs)

    @admin.display(description="largest LoRA rank", ordering="max_lora_rank")
    def lora_rank(self, obj: Quota) -> str:
        return format_limit(obj.max_lora_rank)

    @admin.display(description="sampling sessions", ordering="max_sampling_sessions")
    def sampling_sessions(self, obj: Quota) -> str:
        return format_limit(obj.max_sampling_sessions)

    @admin.display(description="checkpoint storage", ordering="max_checkpoint_bytes")
    def checkpoint_storage(self, obj: Quota) -> str:
        return format_size(obj.max_checkpoint_bytes)

    @admin.display(description="training tokens per day", ordering="train_tokens_per_day")
    def train_tokens(self, obj: Quota) -> str:
        return format_limit(obj.train_tokens_per_day)

    @admin.display(description="sampling tokens per day", ordering="sample_tokens_per_day")
    def sample_tokens(self, obj: Quota) -> str:
        return format_limit(obj.sample_tokens_per_day)


@admin.register(DefaultQuota)
class DefaultQuotaAdmin(admin.ModelAdmin):
    """A single row: the list goes straight to its form."""

    form = QuotaLimitsForm
    fields = list(DefaultQuota.LIMIT_FIELDS)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        default, _ = DefaultQuota.objects.get_or_create(pk=DefaultQuota.SINGLETON_PK)
        return HttpResponseRedirect(reverse("admin:sessions_app_defaultquota_change", args=[default.pk]))


# -- API keys -------------------------------------------------------------------


class KeyStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("active", "active"), ("revoked", "revoked")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> QuerySet[ApiKey]:
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["prefix", "tenant", "label", "state", "created_at", "last_used_at", "revoked_at"]
    list_filter = [KeyStateFilter, "tenant"]
    list_select_related = ["tenant"]
    search_fields = ["prefix", "label", "tenant__name"]
    actions = ["revoke"]

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if obj is None:
            return ["tenant", "label"]
        return ["tenant", "label", "prefix", "created_at", "last_used_at", "revoked_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [] if obj is None else ["tenant", "prefix", "created_at", "last_used_at", "revoked_at"]

    @admin.display(description="state")
    def state(self, obj: ApiKey) -> str:
        return "active" if obj.is_active else "revoked"

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            obj.save(update_fields=["label"])
            return
        key, raw = do_create_api_key(obj.tenant, obj.label)
        obj.pk, obj.prefix, obj.key_hash, obj.created_at = key.pk, key.prefix, key.key_hash, key.created_at
        obj._state.adding = False
        request._tuft_new_keys = [(key, raw)]  # type: ignore[attr-defined]
        logger.info("admin %s issued key %s to tenant %s", request.user, key.prefix, obj.tenant.name)

    def response_add(self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None) -> HttpResponse:
        return show_new_keys(request, request._tuft_new_keys,  # type: ignore[attr-defined]
                             reverse("admin:sessions_app_apikey_changelist"))

    @admin.action(description="Revoke selected keys (they stop working at once)")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> HttpResponse | None:
        if not is_confirmed(request):
            return confirmation_page(self, request, queryset.filter(revoked_at__isnull=True), action="revoke",
                                     title="Revoke API keys?", consequences=[
                                         "The SDK is refused (401) on its very next request with these keys.",
                                         "Dashboard logins made with them end at once. This cannot be undone.",
                                     ], button="Yes, revoke")
        keys = list(queryset.filter(revoked_at__isnull=True))
        for key in keys:
            do_revoke_api_key(key)
            logger.info("admin %s revoked key %s of tenant %s", request.user, key.prefix, key.tenant_id)
        self.message_user(request, f"Revoked {len(keys)} key(s).", messages.SUCCESS)
        return None


# -- client sessions ------------------------------------------------------------


@admin.register(ClientSession)
class ClientSessionAdmin(admin.ModelAdmin):
    list_display = ["id", "tenant", "status", "display_name", "sdk_version", "n_runs", "created_at",
                    "last_heartbeat_at"]
    list_filter = ["status", "tenant"]
    list_select_related = ["tenant"]
    search_fields = ["id", "tenant__name", "display_name"]
    date_hierarchy = "created_at"
    readonly_fields = ["id", "tenant", "sdk_version", "idempotency_key", "status", "finish_reason", "created_at",
                       "last_heartbeat_at", "finished_at"]
    actions = ["finish"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ClientSession]:
        return super().get_queryset(request).annotate(runs=Count("training_runs"))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # sessions are opened by SDK clients

    @admin.display(description="runs", ordering="runs")
    def n_runs(self, obj: Any) -> int:
        return int(obj.runs)

    @admin.action(description="Finish selected sessions (frees their adapters and quota)")
    def finish(self, request: HttpRequest, queryset: QuerySet[ClientSession]) -> HttpResponse | None:
        active = queryset.filter(status=ClientSession.Status.ACTIVE)
        if not is_confirmed(request):
            return confirmation_page(self, request, active, action="finish", title="Finish client sessions?",
                                     consequences=[
                                         "Every training run of these sessions is released and its adapter freed.",
                                         "The SDK's next call in these sessions is refused (410 Gone).",
                                         "Checkpoints stay and can be loaded from a new session.",
                                     ], button="Yes, finish them")
        sessions = list(active)
        for session in sessions:
            do_finish_session(session, ClientSession.Status.FINISHED, f"finished by admin {request.user}")
        self.message_user(request, f"Finished {len(sessions)} session(s); their runs are released.",
                          messages.SUCCESS)
        return None


# -- usage ------------------------------------------------------------------------


@admin.register(DailyUsage)
class DailyUsageAdmin(admin.ModelAdmin):
    """Read-only: usage is recorded by the server as work completes."""

    list_display = ["day", "tenant", "training_tokens", "prefill_tokens", "sampled_tokens", "storage",
                    "operations", "failed_operations"]
    list_filter = ["tenant", "day"]
    list_select_related = ["tenant"]
    search_fields = ["tenant__name"]
    date_hierarchy = "day"
    actions = ["export_csv"]
    change_list_template = "admin/sessions_app/dailyusage/change_list.html"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="checkpoint storage", ordering="checkpoint_bytes")
    def storage(self, obj: DailyUsage) -> str:
        return filesizeformat(obj.checkpoint_bytes)

    def get_urls(self) -> list[Any]:
        return [
            path("export.csv", self.admin_site.admin_view(self.export_view), name="sessions_app_dailyusage_export"),
            *super().get_urls(),
        ]

    def export_view(self, request: HttpRequest) -> HttpResponse:
        """The changelist's rows (with its filters and search applied) as CSV."""
        if not self.has_view_permission(request):
            return HttpResponse(status=403)
        changelist = self.get_changelist_instance(request)
        return self._csv(changelist.get_queryset(request))

    @admin.action(description="Export selected rows as CSV", permissions=["view"])
    def export_csv(self, request: HttpRequest, queryset: QuerySet[DailyUsage]) -> HttpResponse:
        return self._csv(queryset)

    def _csv(self, queryset: QuerySet[DailyUsage]) -> HttpResponse:
        out = io.StringIO()
        write_usage_csv(queryset.select_related("tenant").order_by("day", "tenant__name"), out)
        response = HttpResponse(out.getvalue(), content_type="text/csv")
        response["Content-Disposition"] = f'attachment; filename="tuft-usage-{timezone.now().date()}.csv"'
        return response

