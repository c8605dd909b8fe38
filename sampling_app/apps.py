from django.apps import AppConfig


class SamplingAppConfig(AppConfig):
    name = "sampling_app"
    verbose_name = "Sampling"

    def ready(self) -> None:
        # Registers the "sample" operation handler with training_app.jobs.
        from sampling_app import jobs  # noqa: F401
