"""ASGI entry point (daphne): the HTTP API, admin and dashboard, plus the dashboard's WebSockets.

Static files (admin and dashboard scripts and styles) are served by the
process itself, so the pages need no internet and no separate web server;
behind a reverse proxy, serve ``STATIC_ROOT`` (filled by ``tuft``'s
collectstatic) from the proxy instead.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tuft_project.settings")
django_http = get_asgi_application()  # sets Django up before the imports below

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
