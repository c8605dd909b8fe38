from django.apps import AppConfig


class DashboardAppConfig(AppConfig):
    """Sits above the domain apps (sessions, training, sampling): it reads their
    models and listens to their signals, and none of them imports it."""

    name = "dashboard_app"
    verbose_name = "Dashboard"

    def ready(self) -> None:
        from dashboard_app.live import on_operation_finished
        from training_app.signals import operation_finished

        operation_finished.connect(on_operation_finished, dispatch_uid="dashboard-live")
