from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from tuft_project.quickstart import ensure_dev_key


class Command(BaseCommand):
    help = "Migrate the database and print a ready dev API key (creating the dev tenant once)."

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        call_command("migrate", verbosity=0)
        key = ensure_dev_key(settings.TUFT_HOME / "dev-api-key")
        self.stdout.write(key)
