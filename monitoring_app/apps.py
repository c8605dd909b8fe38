from django.apps import AppConfig


class MonitoringAppConfig(AppConfig):
    name = "monitoring_app"
    verbose_name = "Monitoring"

    def ready(self) -> None:
        # Connected here, not at import: Django apps connect receivers in ready().
        from monitoring_app import metrics
        from training_app.signals import operation_finished

        operation_finished.connect(metrics.on_operation_finished, weak=False,
                                   dispatch_uid="monitoring_app.metrics.on_operation_finished")
