"""Hardening issue, smaller items: Host header, checkpoint names, CSRF cookie, WebSocket Origin.

Against the shared live server, over raw HTTP (httpx, a bare socket for the
WebSocket handshake) and the unmodified SDK.
"""

from __future__ import annotations

import re
import socket

import httpx
import pytest
import tinker

from tests.conftest import MODEL_NAME, LiveServer

TIMEOUT = 120


def test_a_foreign_host_header_is_refused_and_links_use_ours(server: LiveServer) -> None:
    key = server.create_tenant("host-user")
    sc = tinker.ServiceClient(base_url=server.url, api_key=key)
    tc = sc.create_lora_training_client(base_model=MODEL_NAME, rank=2).result(timeout=TIMEOUT)
    path = tc.save_weights_external("host-check").result(timeout=TIMEOUT).path
    run_id, kind, name = path.removeprefix("tinker://").split("/")
    url = f"{server.url}/api/v1/training_runs/{run_id}/checkpoints/{kind}/{name}/external_weights_urls"

    evil = httpx.get(url, headers={"X-API-Key": key, "Host": "evil.example"}, timeout=30)
    assert evil.status_code == 400 and evil.json()["code"] == "disallowed_host"
    urls = httpx.get(url, headers={"X-API-Key": key}, timeout=30).json()["urls"]
    assert urls and all(u.startswith(f"{server.url}/api/v1/downloads/") for u in urls.values())
    # "localhost" is a loopback name the server answers to as well.
    port = server.url.rsplit(":", 1)[1]
    assert httpx.get(f"{server.url}/api/v1/healthz", headers={"Host": f"localhost:{port}"}, timeout=30).status_code == 200


def test_checkpoint_name_with_a_trailing_newline_is_rejected(server: LiveServer) -> None:
    sc = tinker.ServiceClient(base_url=server.url, api_key=server.keys["alice"])
    tc = sc.create_lora_training_client(base_model=MODEL_NAME, rank=2).result(timeout=TIMEOUT)
    with pytest.raises(tinker.TinkerError, match="invalid checkpoint name"):
        tc.save_state("trailing\n").result(timeout=TIMEOUT)
    assert not list((server.home / "checkpoints").glob("*/*/weights/trailing*"))


def test_csrf_cookie_is_httponly(server: LiveServer) -> None:
    response = httpx.get(f"{server.url}/admin/login/", timeout=30)
    cookies = [c for c in response.headers.get_list("set-cookie") if c.startswith("csrftoken=")]
    assert cookies and "httponly" in cookies[0].lower()


def _handshake(server: LiveServer, path: str, headers: dict[str, str]) -> int:
    """Open a WebSocket handshake on a bare socket; return the HTTP status of the answer."""
    host, port = server.url.removeprefix("http://").split(":")
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket", "Connection: Upgrade",
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        status_line = sock.recv(4096).split(b"\r\n", 1)[0].decode()
    return int(status_line.split()[1])


def test_websocket_without_origin_is_refused(server: LiveServer) -> None:
    key = server.create_tenant("ws-user")
    with httpx.Client(base_url=server.url, timeout=30) as web:
        page = web.get("/dashboard/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        assert token is not None
        login = web.post("/dashboard/login/", data={"csrfmiddlewaretoken": token.group(1), "api_key": key,
                                                    "next": "/dashboard/"})
        assert login.status_code == 302, login.text
        session_cookie = f"sessionid={web.cookies['sessionid']}"
    signed_in = {"Cookie": session_cookie}
    assert _handshake(server, "/ws/dashboard/status/", {**signed_in, "Origin": server.url}) == 101
    assert _handshake(server, "/ws/dashboard/status/", signed_in) == 403
    assert _handshake(server, "/ws/dashboard/status/", {**signed_in, "Origin": "http://evil.example"}) == 403
