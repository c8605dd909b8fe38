"""ASGI entry point (daphne): the HTTP API and admin; WebSockets join here later."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tuft_project.settings")
application = get_asgi_application()

from tuft_project.startup import on_server_start  # noqa: E402  (needs Django set up)

on_server_start()
