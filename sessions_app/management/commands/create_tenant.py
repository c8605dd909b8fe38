from django.core.management.base import BaseCommand, CommandError

from sessions_app.actions import do_create_api_key, do_create_tenant
from sessions_app.models import Tenant


class Command(BaseCommand):
    help = "Create a tenant (or add a key to an existing one with --add-key); prints the new tml- API key last."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("name")
        parser.add_argument("--add-key", action="store_true", help="the tenant exists: just issue another key")
        parser.add_argument("--label", default="", help="a note to recognise the key by")

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        name = options["name"]
        if options["add_key"]:
            tenant = Tenant.objects.filter(name=name).first()
            if tenant is None:
                raise CommandError(f"no tenant named {name!r}")
        else:
            if Tenant.objects.filter(name=name).exists():
                raise CommandError(f"tenant {name!r} already exists (use --add-key for another key)")
            tenant = do_create_tenant(name)
            self.stdout.write(f"created tenant {name!r}")
        _, raw = do_create_api_key(tenant, options["label"])
        self.stdout.write("API key (shown only once):")
        self.stdout.write(raw)
