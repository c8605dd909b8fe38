from django.apps import AppConfig


class SamplingAppConfig(AppConfig):
    name = "sampling_app"
    verbose_name = "Sampling"

    def ready(self) -> None:
        # Registers the "sample" operation handler with workers.executor.
        from sampling_app import handlers  # noqa: F401
