from django.apps import AppConfig


class DashboardAppConfig(AppConfig):
    """Sits above the domain apps (sessions, training, sampling): it reads their
    models and listens to their signals, and none of them imports it."""

    name = "dashboard_app"
    verbose_name = "Dashboard"

    def ready(self) -> None:
        # Imported here, not at module level: app modules may import models only once apps are loaded.
        from django.contrib import admin

        from dashboard_app.live import on_operation_finished, on_run_released
        from training_app.signals import operation_finished, run_released

        operation_finished.connect(on_operation_finished, dispatch_uid="dashboard-live")
        run_released.connect(on_run_released, dispatch_uid="dashboard-run-released")
        admin.site.site_header = "TuFT administration"
        admin.site.site_title = "TuFT admin"
        admin.site.index_title = "Tenants, keys, quotas and training"
