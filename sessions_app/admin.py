from django.contrib import admin, messages
from django.http import HttpRequest

from sessions_app.actions import do_create_api_key, do_revoke_api_key
from sessions_app.models import ApiKey, ClientSession, DailyUsage, Quota, Tenant


class QuotaInline(admin.StackedInline):
    model = Quota
    can_delete = False
    extra = 0


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ["name", "is_active", "created_at"]
    list_filter = ["is_active"]
    search_fields = ["name"]
    inlines = [QuotaInline]
    actions = ["issue_key"]

    @admin.action(description="Issue a new API key (shown once)")
    def issue_key(self, request: HttpRequest, queryset):  # type: ignore[no-untyped-def]
        for tenant in queryset:
            _, raw = do_create_api_key(tenant, label=f"admin:{request.user}")
            self.message_user(request, f"New API key for {tenant}: {raw} (copy it now; it is not stored)",
                              messages.WARNING)


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["prefix", "tenant", "label", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["tenant"]
    search_fields = ["prefix", "label", "tenant__name"]
    readonly_fields = ["prefix", "key_hash", "created_at", "last_used_at", "revoked_at"]
    fields = ["tenant", "label", "prefix", "key_hash", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke"]

    def save_model(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        if change:
            obj.save(update_fields=["label"])
            return
        key, raw = do_create_api_key(obj.tenant, obj.label)
        obj.pk, obj.prefix, obj.key_hash, obj.created_at = key.pk, key.prefix, key.key_hash, key.created_at
        self.message_user(request, f"New API key: {raw} (copy it now; it is not stored)", messages.WARNING)

    @admin.action(description="Revoke selected keys (they stop working at once)")
    def revoke(self, request, queryset):  # type: ignore[no-untyped-def]
        for key in queryset:
            do_revoke_api_key(key)


@admin.register(ClientSession)
class ClientSessionAdmin(admin.ModelAdmin):
    list_display = ["id", "tenant", "status", "sdk_version", "created_at", "last_heartbeat_at"]
    list_filter = ["status", "tenant"]
    search_fields = ["id", "tenant__name"]


@admin.register(DailyUsage)
class DailyUsageAdmin(admin.ModelAdmin):
    list_display = ["day", "tenant", "training_tokens", "prefill_tokens", "sampled_tokens", "operations",
                    "failed_operations"]
    list_filter = ["tenant", "day"]
