"""ASGI entry point (daphne): the HTTP API, admin and dashboard, plus the dashboard's WebSockets.

Static files (admin and dashboard scripts and styles) are served by the
process itself, so the pages need no internet and no separate web server;
behind a reverse proxy, serve ``STATIC_ROOT`` (filled by ``tuft``'s
collectstatic) from the proxy instead.
"""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tuft_project.settings")
django.setup(set_prefix=False)  # as get_asgi_application() does, before the imports below

from django.conf import settings  # noqa: E402

from tuft_project.asgi_handler import PooledASGIHandler  # noqa: E402

# Django's ASGI handler, with each request's sync work run in one call on a fixed
# pool of threads (tuft_project.asgi_handler says why).
django_http = PooledASGIHandler(threads=settings.TUFT_API_THREADS)

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.sessions import SessionMiddlewareStack  # noqa: E402

from dashboard_app.routing import SameOriginValidator, websocket_urlpatterns  # noqa: E402
from tuft_project.static_files import StaticFilesHandler  # noqa: E402

application = ProtocolTypeRouter({
    "http": StaticFilesHandler(django_http),
    "websocket": SameOriginValidator(SessionMiddlewareStack(URLRouter(websocket_urlpatterns))),
})

from tuft_project.startup import on_server_start  # noqa: E402  (needs Django set up)

on_server_start()
