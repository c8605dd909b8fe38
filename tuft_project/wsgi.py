"""WSGI entry point (manage.py runserver, gunicorn)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tuft_project.settings")
application = get_wsgi_application()

from tuft_project.startup import on_server_start  # noqa: E402  (needs Django set up)

on_server_start()
