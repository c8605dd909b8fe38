"""Issue #5 in a real browser: admin → tenant, key and quota → SDK training → live dashboard.

One story, in order, against the shared live server: an operator logs into
the admin and creates a tenant with its own quota and a key; the key trains
through the SDK while the tenant's dashboard updates from the WebSocket
without a reload (the runs table's steps, the loss curve, the run's
checkpoints card); a second tenant sees none of it (pages, run URL, socket);
an operator stops the run from the admin and the open run page says so; a
revoked key stops working at once, for the SDK and the dashboard (the page
goes to the login form); usage exports as CSV. Every page is photographed at
1366 px and 390 px, and at 390 px no page is wider than the screen.
"""

from __future__ import annotations

import csv
import io
import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

import pytest
import tinker
from tinker import types

from tests.browser.conftest import Staff
from tests.conftest import MODEL_NAME, LiveServer

pytestmark = pytest.mark.timeout(240)

WAIT_MS = 30_000
WIDE = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}
TOKENS = [11, 23, 35, 47, 59, 71, 83, 95, 107]
T = TypeVar("T")
# Playwright's sync API keeps an event loop running in this thread; the SDK's
# blocking calls belong in a thread of their own.
_sdk_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdk")


def sdk(fn: Callable[[], T]) -> T:
    return _sdk_thread.submit(fn).result(timeout=120)


def admin_login(page: Any, server: LiveServer, staff: Staff) -> None:
    page.goto(f"{server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", staff.username)
    page.fill("#id_password", staff.password)
    page.click("input[type=submit]")
    page.wait_for_url(f"{server.url}/admin/")


def admin_create_tenant(page: Any, server: LiveServer, name: str, quota: dict[str, int]) -> str:
    """Create a tenant with its own quota and a first key in the admin; return the key shown once."""
    page.goto(f"{server.url}/admin/sessions_app/tenant/add/")
    page.fill("#id_name", name)
    assert page.is_checked("#id_issue_key")
    for field, value in quota.items():
        page.fill(f"input[name='quota-0-{field}']", str(value))
    page.click("input[name=_save]")
    key = page.text_content(f"code.new-api-key[data-tenant='{name}']")
    assert key and key.startswith("tml-")
    return key.strip()


def tenant_login(browser: Any, server: LiveServer, key: str) -> Any:
    context = browser.new_context(viewport=WIDE)
    page = context.new_page()
    page.goto(f"{server.url}/dashboard/")  # not logged in: sent to the login form
    page.fill("#api_key", key)
    page.click("#tenant-login button[type=submit]")
    page.wait_for_url(f"{server.url}/dashboard/")
    return page


def datum() -> types.Datum:
    return types.Datum(
        model_input=types.ModelInput.from_ints(TOKENS[:-1]),
        loss_fn_inputs={"target_tokens": types.TensorData(data=TOKENS[1:], dtype="int64", shape=[len(TOKENS) - 1])},
    )


def train_step(training: Any) -> None:
    training.forward_backward([datum()], "cross_entropy").result(timeout=60)
    training.optim_step(types.AdamParams(learning_rate=1e-2)).result(timeout=60)


def shoot(page: Any, screenshots: Path, name: str) -> None:
    """Screenshots at 1366 px and 390 px; at 390 px nothing may stick out sideways."""
    page.screenshot(path=str(screenshots / f"{name}-1366.png"), full_page=True)
    page.set_viewport_size(PHONE)
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    page.screenshot(path=str(screenshots / f"{name}-390.png"), full_page=True)
    page.set_viewport_size(WIDE)
    assert overflow <= 0, f"{name} is {overflow} px wider than a 390 px screen"


def socket_outcome(page: Any, path: str) -> str:
    """Open a WebSocket from the page: "open" (with its first message type) or "refused"."""
    return page.evaluate("""(path) => new Promise((resolve) => {
        const ws = new WebSocket(`ws://${location.host}${path}`);
        let opened = false;
        ws.onopen = () => { opened = true; };
        ws.onmessage = (e) => { resolve("open:" + JSON.parse(e.data).type); ws.close(); };
        ws.onclose = () => { if (!opened) resolve("refused"); };
        setTimeout(() => resolve(opened ? "open:silent" : "timeout"), 10000);
    })""", path)


def test_admin_tenant_key_quota_then_live_loss_curve(
    browser: Any, server: LiveServer, staff: Staff, screenshots: Path,
) -> None:
    team, other = f"team-{secrets.token_hex(3)}", f"rivals-{secrets.token_hex(3)}"
    admin = browser.new_context(viewport=WIDE)
    page = admin.new_page()
    admin_login(page, server, staff)

    # 1. The operator creates the tenant with its own quota; the key is shown once.
    key = admin_create_tenant(page, server, team, {"max_lora_rank": 8, "train_tokens_per_day": 10_000})
    assert server.url in page.text_content("#key-example")
    shoot(page, screenshots, "admin-new-key")
    page.reload()  # the key page replaced its history entry: a reload shows the tenant, submits nothing
    assert "/change/" in page.url and page.locator("code.new-api-key").count() == 0
    page.goto(f"{server.url}/admin/sessions_app/tenant/?q={team}")
    assert page.locator("#result_list tbody tr").count() == 1
    assert "own" in page.text_content("#result_list tbody tr")

    # The quota is enforced for this key at once.
    service = sdk(lambda: tinker.ServiceClient(base_url=server.url, api_key=key))
    with pytest.raises(tinker.PermissionDeniedError):
        sdk(lambda: service.create_lora_training_client(base_model=MODEL_NAME, rank=16).result(timeout=60))
    training = sdk(lambda: service.create_lora_training_client(
        base_model=MODEL_NAME, rank=8, user_metadata={"name": "sft-demo"}).result(timeout=60))
    run_id = training.model_id
    sdk(lambda: train_step(training))

    # 2. The tenant's overview: the runs table (by the run's name) counts steps live, no reload.
    tenant = tenant_login(browser, server, key)
    row = f"#runs tr[data-run-id='{run_id}']"
    assert tenant.text_content(f"{row} a.run-name") == "sft-demo"
    tenant.wait_for_selector("#status-state.live", timeout=WAIT_MS)
    tenant.evaluate("window.__notReloaded = true")
    assert tenant.text_content(f"{row} td.steps") == "1"
    sdk(lambda: train_step(training))
    tenant.wait_for_function(f"document.querySelector(\"{row} td.steps\").textContent === '2'", timeout=WAIT_MS)
    assert tenant.evaluate("window.__notReloaded") is True
    shoot(tenant, screenshots, "tenant-overview")
    assert tenant.goto(f"{server.url}/dashboard/tenants/").status == 403  # staff only

    # The run page: loss points and checkpoints arrive over the WebSocket, no reload.
    tenant.goto(f"{server.url}/dashboard/")
    tenant.click(f"{row} a.run-name")
    tenant.wait_for_selector("#run-state.live", timeout=WAIT_MS)
    tenant.evaluate("window.__notReloaded = true")
    assert int(tenant.get_attribute("#loss-chart", "data-points") or 0) == 2
    for _ in range(3):
        sdk(lambda: train_step(training))
    tenant.wait_for_function("document.querySelector('#loss-chart').dataset.points === '5'", timeout=WAIT_MS)
    assert tenant.locator("#run-checkpoints").count() == 0
    sdk(lambda: training.save_weights_for_sampler("live-ckpt").result(timeout=60))
    tenant.wait_for_selector("#run-checkpoints :text('live-ckpt')", timeout=WAIT_MS)
    assert tenant.evaluate("window.__notReloaded") is True
    # Charts: every metric per step, smoothing, log scale, hover read-out (uPlot's legend), exports.
    assert "loss:sum" in tenant.text_content("#loss-chart .u-legend")
    tenant.fill("#metric-toolbar input[type=range]", "0.6")
    tenant.check("#metric-toolbar input[type=checkbox]")
    tenant.hover("#loss-chart .u-over")
    assert tenant.locator("#loss-chart .u-legend .u-series").count() == 3  # x, raw, smoothed
    assert tenant.get_attribute("#export-csv", "href").endswith("/metrics.csv")
    shoot(tenant, screenshots, "run-live-loss")
    run_page_url = tenant.url

    # The playground samples the checkpoint just saved: tokens and logprobs.
    tenant.goto(f"{server.url}/dashboard/playground/")
    tenant.select_option("#pg-model", label=next(
        o for o in tenant.locator("#pg-model option").all_text_contents() if o.startswith("live-ckpt")))
    tenant.fill("#pg-prompt", "hello there")
    tenant.fill("#pg-max-tokens", "6")
    tenant.click("#pg-submit")
    tenant.wait_for_selector(".pg-tokens tbody tr", timeout=WAIT_MS)
    assert tenant.locator(".pg-tokens tbody tr").count() >= 1
    shoot(tenant, screenshots, "playground")

    # Several runs on one chart: tick them in the runs table, "Compare selected".
    second = sdk(lambda: service.create_lora_training_client(
        base_model=MODEL_NAME, rank=4, user_metadata={"name": "sft-small"}).result(timeout=60))
    sdk(lambda: train_step(second))
    tenant.goto(f"{server.url}/dashboard/")
    tenant.check(f"{row} input[name=runs]")
    tenant.check(f"#runs tr[data-run-id='{second.model_id}'] input[name=runs]")
    tenant.click("#compare-button")
    tenant.wait_for_selector("#compare-chart .u-legend", timeout=WAIT_MS)
    legend = tenant.text_content("#compare-chart .u-legend")
    assert "sft-demo" in legend and "sft-small" in legend
    shoot(tenant, screenshots, "compare-runs")

    # 3. Another tenant sees none of it: not listed, its URL is a 404, its socket is refused.
    rival_key = admin_create_tenant(page, server, other, {})
    rival = tenant_login(browser, server, rival_key)
    body = rival.text_content("body")
    assert run_id not in body and team not in body
    assert rival.goto(f"{server.url}/dashboard/runs/{run_id}/").status == 404
    assert "Not found" in rival.text_content("h1")  # a page, not raw JSON
    shoot(rival, screenshots, "not-found")
    rival.goto(f"{server.url}/dashboard/")
    assert socket_outcome(rival, f"/ws/dashboard/runs/{run_id}/") == "refused"
    assert socket_outcome(tenant, f"/ws/dashboard/runs/{run_id}/") == "open:snapshot"
    rival.wait_for_selector("#status-state.live", timeout=WAIT_MS)
    body = rival.text_content("body")
    assert run_id not in body and team not in body and "sft-demo" not in body and "live-ckpt" not in body
    shoot(rival, screenshots, "other-tenant-overview")
    for path in ("/dashboard/playground/", f"/dashboard/compare/?runs={run_id}"):
        rival.goto(f"{server.url}{path}")
        body = rival.text_content("body")
        assert run_id not in body and "sft-demo" not in body and "live-ckpt" not in body, path
    assert rival.goto(f"{server.url}/dashboard/runs/{run_id}/metrics.json").status == 404
    rival.goto(f"{server.url}/dashboard/")

    # 4. Staff see every tenant, with use against quota.
    page.goto(f"{server.url}/dashboard/tenants/")
    assert page.locator(f".tenant[data-tenant='{team}']").count() == 1
    shoot(page, screenshots, "staff-tenants")
    page.goto(f"{server.url}/dashboard/")
    assert run_id in page.text_content("#runs")
    shoot(page, screenshots, "staff-overview")
    page.click(f".topbar a:has-text('Workers')")
    page.wait_for_selector("#status-state.live", timeout=WAIT_MS)
    assert "Embedded" in page.text_content("#dispatch-mode")
    shoot(page, screenshots, "staff-workers-queues")
    page.click(".topbar a:has-text('Storage')")
    assert "free of" in page.text_content("#disk-meter")
    shoot(page, screenshots, "staff-storage")
    page.goto(f"{server.url}/dashboard/tenants/")
    page.click(f".tenant[data-tenant='{team}'] h3 a")
    assert "sft-demo" in page.text_content("#runs")
    shoot(page, screenshots, "staff-tenant")
    dark = browser.new_context(viewport=WIDE, color_scheme="dark")
    dark_page = dark.new_page()
    dark_page.goto(f"{server.url}/dashboard/login/")
    dark_page.fill("#api_key", key)
    dark_page.click("#tenant-login button[type=submit]")
    dark_page.goto(run_page_url)
    dark_page.wait_for_selector("#loss-chart .u-legend", timeout=WAIT_MS)
    assert dark_page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(18, 21, 28)"
    dark_page.screenshot(path=str(screenshots / "run-dark-1366.png"), full_page=True)
    dark.close()

    # 4b. The operator stops the run in the admin (after a confirmation); the open run page says so.
    tenant.goto(run_page_url)
    tenant.wait_for_selector("#run-state.live", timeout=WAIT_MS)
    page.goto(f"{server.url}/admin/training_app/trainingrun/?q={run_id}")
    shoot(page, screenshots, "admin-runs")
    page.check("#action-toggle")
    page.select_option("select[name=action]", "stop")
    page.click("button[name=index]")
    assert "Stop training runs?" in page.text_content("#content")
    page.click("#confirm-action")
    assert "Stopped 1 run" in page.text_content("ul.messagelist")
    tenant.wait_for_selector("#run-badge.stopped", timeout=WAIT_MS)
    assert tenant.text_content("#run-state") == "run ended"
    with pytest.raises(tinker.NotFoundError, match="stopped by an operator"):
        sdk(lambda: train_step(training))

    # 5. A second key from the API-key page works, and revoking it stops it at once.
    page.goto(f"{server.url}/admin/sessions_app/apikey/add/")
    page.select_option("#id_tenant", label=team)
    page.fill("#id_label", "ci-runner")
    page.click("input[name=_save]")
    second = (page.text_content(f"code.new-api-key[data-tenant='{team}']") or "").strip()
    rest = tinker.RestClient(base_url=server.url, api_key=second)
    listed = sdk(lambda: rest.list_training_runs().result(timeout=30)).training_runs
    assert run_id in [r.training_run_id for r in listed]
    page.goto(f"{server.url}/admin/sessions_app/apikey/?q={second[:12]}")
    page.check("#action-toggle")
    page.select_option("select[name=action]", "revoke")
    page.click("button[name=index]")
    page.click("#confirm-action")
    assert "Revoked 1 key" in page.text_content("ul.messagelist")
    with pytest.raises(tinker.AuthenticationError):
        sdk(lambda: rest.list_training_runs().result(timeout=30))
    # A revoked key also ends the dashboard login made with it: the open socket closes, pages ask to log in.
    page.goto(f"{server.url}/admin/sessions_app/apikey/?q={rival_key[:12]}")
    page.check("#action-toggle")
    page.select_option("select[name=action]", "revoke")
    page.click("button[name=index]")
    page.click("#confirm-action")
    rival.wait_for_url("**/dashboard/login/**", timeout=WAIT_MS)  # signed out at once, no data left on screen
    shoot(rival, screenshots, "login")

    # 6. Usage, as recorded, exports as CSV from the admin.
    page.goto(f"{server.url}/admin/sessions_app/dailyusage/?q={team}")
    with page.expect_download() as download:
        page.click("#export-usage-csv")
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert [r["tenant"] for r in rows] == [team]
    assert int(rows[0]["training_tokens"]) == 6 * (len(TOKENS) - 1)
    admin.close()
