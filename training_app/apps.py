from django.apps import AppConfig


class TrainingAppConfig(AppConfig):
    name = "training_app"
    verbose_name = "Training"

    def ready(self) -> None:
        # Registers the training operation handlers with workers.executor (they
        # import models and actions, so not before the app registry is ready).
        from training_app import export_jobs, handlers  # noqa: F401
