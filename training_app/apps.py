from django.apps import AppConfig


class TrainingAppConfig(AppConfig):
    name = "training_app"
    verbose_name = "Training"

    def ready(self) -> None:
        # Registers the save_weights_external handler with workers.executor.
        from training_app import export_jobs  # noqa: F401
