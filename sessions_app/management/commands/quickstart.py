from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from tuft_project.quickstart import ensure_default_model_config, ensure_dev_key


class Command(BaseCommand):
    help = ("Build the built-in model if there is no models.yaml yet, migrate the database and print a "
            "ready dev API key (creating the dev tenant once).")

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        default_config = settings.TUFT_HOME / "models.yaml"
        if settings.TUFT_MODEL_CONFIG == default_config and not default_config.exists():
            # What `tuft` does on a first start; here for set-ups whose workers start separately.
            ensure_default_model_config(settings.TUFT_HOME)
        call_command("migrate", verbosity=0)
        key = ensure_dev_key(settings.TUFT_HOME / "dev-api-key")
        self.stdout.write(key)
