"""Operator controls in the admin, driven over HTTP like a browser, checked through the SDK.

Stop a run (with a confirmation step): the SDK's next call on it is refused
with a clear message, queued operations fail, the run stops counting against
the quota. Lease fields are read-only. Tenant deletion is offered only where
it can work and explained elsewhere. Browsers get HTML error pages, API
clients JSON.
"""

from __future__ import annotations

import os
import secrets
import time

import httpx

import pytest
import tinker
from tinker import types

from tests.api.helpers import post, wait_future
from tests.conftest import MODEL_NAME, LiveServer
from tests.dashboard.conftest import AdminClient

pytestmark = pytest.mark.timeout(240)

RUNS = "/admin/training_app/trainingrun/"
ADAM = {"learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.95, "eps": 1e-12, "weight_decay": 0.0, "grad_clip_norm": 0.0}
TOKENS = [11, 23, 35, 47, 59, 71]


def one_datum() -> types.Datum:
    return types.Datum(
        model_input=types.ModelInput.from_ints(TOKENS[:-1]),
        loss_fn_inputs={"target_tokens": types.TensorData(data=TOKENS[1:], dtype="int64", shape=[len(TOKENS) - 1])},
    )


def test_stop_run_from_admin_ends_it_for_the_sdk(server: LiveServer, admin_client: AdminClient) -> None:
    key = server.create_tenant(f"stoppable-{secrets.token_hex(3)}")
    service = tinker.ServiceClient(base_url=server.url, api_key=key)
    training = service.create_lora_training_client(base_model=MODEL_NAME, rank=4,
                                                    user_metadata={"name": "nightly sweep"}).result(timeout=60)
    training.forward_backward([one_datum()], "cross_entropy").result(timeout=60)
    run_id = training.model_id
    # A queued operation: seq 10 waits for seqs 2..9, which never come (well inside the 60 s gap timeout).
    queued = post(server, "optim_step", key, {"model_id": run_id, "seq_id": 10, "type": "optim_step",
                                              "adam_params": ADAM})
    assert queued.status_code == 200

    # The run list shows the name the client gave it; the lease and sequencing fields cannot be edited.
    listing = admin_client.get(f"{RUNS}?q={run_id}").text
    assert "nightly sweep" in listing
    change = admin_client.get(f"{RUNS}{run_id}/change/").text
    for field in ("lease_owner", "lease_expires_at", "state_seq", "next_seq_id"):
        assert f'name="{field}"' not in change
    assert "Delete" not in change.split('id="content-main"')[1]

    # First POST: a confirmation page, nothing stopped yet.
    ask = admin_client.action(RUNS, "stop", [run_id], confirm=False)
    assert ask.status_code == 200 and "Stop training runs?" in ask.text and 'name="confirm"' in ask.text
    rest = tinker.RestClient(base_url=server.url, api_key=key)
    assert "stopped" not in rest.get_training_run(run_id).result(timeout=30).model_dump_json()
    done = admin_client.action(RUNS, "stop", [run_id], confirm=True)
    assert done.status_code == 302
    assert "Stopped 1 run(s); cancelled 1 queued operation(s)." in admin_client.messages()

    # The queued operation failed, saying why; the SDK's next call is refused with a clear error.
    failed = wait_future(server, key, queued.json()["request_id"], timeout=30)
    assert "stopped by an operator" in failed.text
    with pytest.raises(tinker.NotFoundError, match="stopped by an operator"):
        training.forward_backward([one_datum()], "cross_entropy").result(timeout=60)
    # The training lane survived the release of a run with a queued operation: new runs still train.
    again = service.create_lora_training_client(base_model=MODEL_NAME, rank=4).result(timeout=60)
    again.forward_backward([one_datum()], "cross_entropy").result(timeout=60)
    # Stopping it again is harmless and says so.
    admin_client.action(RUNS, "stop", [run_id], confirm=True)
    assert "already stopped" in admin_client.messages()


def test_finish_session_asks_first(server: LiveServer, admin_client: AdminClient) -> None:
    name = f"confirm-{secrets.token_hex(3)}"
    key = server.create_tenant(name)
    service = tinker.ServiceClient(base_url=server.url, api_key=key)
    session_id = service.holder.get_session_id()
    ask = admin_client.action("/admin/sessions_app/clientsession/", "finish", [session_id], confirm=False)
    assert "Finish client sessions?" in ask.text
    rest = tinker.RestClient(base_url=server.url, api_key=key)
    assert rest.get_session(session_id).result(timeout=30) is not None
    admin_client.action("/admin/sessions_app/clientsession/", "finish", [session_id], confirm=True)
    assert "Finished 1 session(s)" in admin_client.messages()


def test_tenant_delete_offered_only_where_it_works(server: LiveServer, admin_client: AdminClient) -> None:
    used = f"used-{secrets.token_hex(3)}"
    tinker.ServiceClient(base_url=server.url, api_key=server.create_tenant(used)).holder.get_session_id()
    unused = f"unused-{secrets.token_hex(3)}"
    server.create_tenant(unused)
    listing = admin_client.get("/admin/sessions_app/tenant/").text
    assert 'value="delete_selected"' not in listing
    pks = {}
    for name in (used, unused):
        page = admin_client.get(f"/admin/sessions_app/tenant/?q={name}").text
        pks[name] = page.split('name="_selected_action" value="')[1].split('"')[0]
    used_page = admin_client.get(f"/admin/sessions_app/tenant/{pks[used]}/change/").text
    assert "cannot be deleted" in used_page and "Deactivate it instead" in used_page
    assert admin_client.get(f"/admin/sessions_app/tenant/{pks[used]}/delete/").status_code == 403
    confirm = admin_client.get(f"/admin/sessions_app/tenant/{pks[unused]}/delete/")
    assert confirm.status_code == 200 and "Are you sure" in confirm.text
    assert "have permission" not in confirm.text
    assert admin_client.post(f"/admin/sessions_app/tenant/{pks[unused]}/delete/", {"post": "yes"}).status_code == 302
    assert "was deleted successfully" in admin_client.messages()
    assert unused not in admin_client.get("/admin/sessions_app/tenant/").text


def test_quota_bytes_entered_and_shown_with_units(server: LiveServer, admin_client: AdminClient) -> None:
    assert admin_client.get("/admin/sessions_app/defaultquota/").status_code == 302  # creates the one row
    page = admin_client.get("/admin/sessions_app/defaultquota/1/change/").text
    assert "Largest LoRA rank" in page and "Leave empty for unlimited" in page
    assert "TuFT administration" in page and "Django administration" not in page
    saved = admin_client.post("/admin/sessions_app/defaultquota/1/change/", {
        "max_checkpoint_bytes": "20 GB", "max_training_runs": "", "max_lora_rank": "", "max_sampling_sessions": "",
        "train_tokens_per_day": "", "sample_tokens_per_day": "", "_save": "Save"})
    assert saved.status_code == 302, saved.text[:2000]
    assert 'value="20.0 GB"' in admin_client.get("/admin/sessions_app/defaultquota/1/change/").text
    bad = admin_client.post("/admin/sessions_app/defaultquota/1/change/", {"max_checkpoint_bytes": "lots", "_save": "Save"})
    assert bad.status_code == 200 and "Enter a size such as" in bad.text
    admin_client.post("/admin/sessions_app/defaultquota/1/change/", {"max_checkpoint_bytes": "", "_save": "Save"})
    # Embedded mode has no RQ queues: no empty DJANGO_RQ section.
    assert "django_rq" not in admin_client.get("/admin/").text.lower()


def test_error_pages_html_for_browsers_json_for_clients(server: LiveServer, admin_client: AdminClient) -> None:
    page = admin_client.get("/dashboard/runs/no-such-run/")
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert "Not found" in page.text and "Go to the dashboard" in page.text
    unknown = admin_client.get("/dashboard/no/such/page")
    assert unknown.status_code == 404 and "<html" in unknown.text
    api = admin_client.http.get("/api/v1/no-such-endpoint", headers={"Accept": "application/json"})
    assert api.status_code == 404 and api.json()["code"] == "not_found"


def test_status_page_shows_mode_lanes_and_workers(server: LiveServer, admin_client: AdminClient) -> None:
    key = server.create_tenant(f"busy-{secrets.token_hex(3)}")
    service = tinker.ServiceClient(base_url=server.url, api_key=key)
    training = service.create_lora_training_client(base_model=MODEL_NAME, rank=4).result(timeout=60)
    training.forward_backward([one_datum()], "cross_entropy").result(timeout=60)
    page = admin_client.get("/dashboard/status/")
    assert page.status_code == 200
    assert "Embedded: worker threads inside this server process" in page.text
    assert 'data-lane="train"' in page.text and 'data-lane="sample"' in page.text
    assert "tuft-train" in page.text and "alive" in page.text
    # Work done in the window shows as throughput on the training lane.
    train_row = page.text.split('data-lane="train"')[1].split("</tr>")[0]
    assert float(train_row.split('<td class="per-min">')[1].split("<")[0]) > 0
    # Tenants may not see it.
    tenant = httpx.Client(base_url=server.url, timeout=60, headers={"Accept": "text/html"})
    tenant.get("/dashboard/login/")
    tenant.post("/dashboard/login/", data={"api_key": key, "csrfmiddlewaretoken": tenant.cookies["csrftoken"]})
    assert tenant.get("/dashboard/status/").status_code == 403


def test_tenant_views_for_operators(server: LiveServer, admin_client: AdminClient) -> None:
    name = f"viewed-{secrets.token_hex(3)}"
    key = server.create_tenant(name)
    service = tinker.ServiceClient(base_url=server.url, api_key=key)
    training = service.create_lora_training_client(base_model=MODEL_NAME, rank=4,
                                                    user_metadata={"name": "probe"}).result(timeout=60)
    training.forward_backward([one_datum()], "cross_entropy").result(timeout=60)
    page = admin_client.get(f"/admin/sessions_app/tenant/?q={name}").text
    pk = page.split('name="_selected_action" value="')[1].split('"')[0]
    change = admin_client.get(f"/admin/sessions_app/tenant/{pk}/change/").text
    assert "1 active of 1 API keys" in change and "1 live of 1 training runs" in change
    detail = admin_client.get(f"/dashboard/tenants/{pk}/")
    assert detail.status_code == 200
    assert "probe" in detail.text and key[:12] in detail.text and "tenant-usage-chart" in detail.text
    usage = detail.text.split('id="tenant-usage" type="application/json">')[1].split("</script>")[0]
    assert f'"training": [{"0, " * 29}{len(one_datum().model_input.to_ints())}]' in usage


def test_storage_page_finds_and_cleans_orphaned_files(server: LiveServer, admin_client: AdminClient) -> None:
    key = server.create_tenant(f"disk-{secrets.token_hex(3)}")
    service = tinker.ServiceClient(base_url=server.url, api_key=key)
    training = service.create_lora_training_client(base_model=MODEL_NAME, rank=4).result(timeout=60)
    kept = training.save_weights_for_sampler("kept").result(timeout=60).path
    root = server.home / "checkpoints"
    recorded = next(root.glob("*/*/sampler_weights/kept"))
    old = time.time() - 2 * 3600
    os.utime(recorded, (old, old))  # old, but a checkpoint names it: never an orphan
    orphan = recorded.parent / "left-behind"
    orphan.mkdir()
    (orphan / "adapter_model.safetensors").write_bytes(b"\0" * 4096)
    young = recorded.parent / "being-written"
    young.mkdir()
    os.utime(orphan, (old, old))

    page = admin_client.get("/dashboard/storage/").text
    assert "free of" in page and "left-behind" in page
    assert "being-written" not in page and "sampler_weights/kept" not in page  # too young / recorded
    r = admin_client.post("/dashboard/storage/", {"confirm": "yes"})
    assert r.status_code == 302
    after = admin_client.get("/dashboard/storage/").text
    assert "Deleted 1 orphaned checkpoint directory (4.0" in after and "No orphaned files." in after
    assert not orphan.exists() and young.exists() and recorded.exists()
    sampler = service.create_sampling_client(model_path=kept).result(timeout=60)  # the recorded one still works
    assert sampler.sample(prompt=tinker.types.ModelInput.from_ints([1, 2, 3]), num_samples=1,
                          sampling_params=tinker.types.SamplingParams(max_tokens=2)).result(timeout=60).sequences


def test_cancel_a_queued_operation_keeps_the_run_going(server: LiveServer, admin_client: AdminClient) -> None:
    key = server.create_tenant(f"cancel-{secrets.token_hex(3)}")
    service = tinker.ServiceClient(base_url=server.url, api_key=key)
    training = service.create_lora_training_client(base_model=MODEL_NAME, rank=4).result(timeout=60)
    run_id = training.model_id
    # seq 2 waits for seq 1, which is sent only after the cancel.
    waiting = post(server, "optim_step", key, {"model_id": run_id, "seq_id": 2, "type": "optim_step",
                                               "adam_params": ADAM}).json()["request_id"]
    ask = admin_client.action("/admin/training_app/operation/", "cancel", [waiting], confirm=False)
    assert "Cancel queued operations?" in ask.text
    admin_client.action("/admin/training_app/operation/", "cancel", [waiting], confirm=True)
    assert "Cancelled 1 queued operation(s)." in admin_client.messages()
    assert "cancelled by an operator" in wait_future(server, key, waiting, timeout=30).text
    first = post(server, "optim_step", key, {"model_id": run_id, "seq_id": 1, "type": "optim_step",
                                             "adam_params": ADAM}).json()["request_id"]
    assert wait_future(server, key, first, timeout=60).status_code == 200
    later = post(server, "optim_step", key, {"model_id": run_id, "seq_id": 3, "type": "optim_step",
                                             "adam_params": ADAM}).json()["request_id"]
    assert "metrics" in wait_future(server, key, later, timeout=60).text
