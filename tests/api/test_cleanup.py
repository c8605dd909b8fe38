"""Hardening issue: deleting checkpoints removes their files (REST and admin), and old operations go.

* The SDK's ``RestClient.delete_checkpoint*`` and the Django admin's delete
  (one checkpoint, and the bulk action) run one domain action: the row, the
  files (renamed to a trash name, then removed) and the quota bytes go together.
* Housekeeping's retention pass deletes finished operations past
  ``TUFT_OPERATION_RETENTION_DAYS``, never unfinished ones nor those a run's
  hand-off may replay.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import tinker
from tinker import types

from tests.api.helpers import datum, post
from tests.conftest import MODEL_NAME, LiveServer

TIMEOUT = 120
ADMIN_PASSWORD = "cleanup-admin-password-1"


def _files_of(server: LiveServer, tinker_path: str) -> list[Path]:
    run_id, kind, name = tinker_path.removeprefix("tinker://").split("/")
    return list((server.home / "checkpoints").glob(f"*/{run_id}/{kind}/*{name}*"))


def _shell(server: LiveServer, code: str) -> str:
    """Run Python in the server's Django (same home and database); its last output line."""
    return server.manage("shell", "-c", code).strip().splitlines()[-1]


def _checkpoint_bytes(server: LiveServer, tenant: str) -> int:
    return int(_shell(server, "from sessions_app.models import Tenant; from sessions_app.usage import "
                              f"checkpoint_bytes; print(checkpoint_bytes(Tenant.objects.get(name={tenant!r})))"))


def _form_token(html: str) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert match is not None, html[:500]
    return match.group(1)


@pytest.fixture(scope="module")
def admin_web(server: LiveServer) -> httpx.Client:
    """An httpx client logged in to the Django admin as a new superuser."""
    server.manage("shell", "-c", "from django.contrib.auth import get_user_model; get_user_model().objects"
                                 f".create_superuser('cleanup-admin', 'a@example.org', {ADMIN_PASSWORD!r})")
    web = httpx.Client(base_url=server.url, timeout=60)
    page = web.get("/admin/login/")
    login = web.post("/admin/login/?next=/admin/", data={
        "csrfmiddlewaretoken": _form_token(page.text), "username": "cleanup-admin", "password": ADMIN_PASSWORD,
        "next": "/admin/"})
    assert login.status_code == 302, login.text[:500]
    return web


def test_deleting_checkpoints_removes_files_and_quota_bytes(server: LiveServer, admin_web: httpx.Client) -> None:
    key = server.create_tenant("cleanup-owner")
    sc = tinker.ServiceClient(base_url=server.url, api_key=key)
    rest = tinker.RestClient(base_url=server.url, api_key=key)
    tc = sc.create_lora_training_client(base_model=MODEL_NAME, rank=2).result(timeout=TIMEOUT)
    paths = [tc.save_state(f"del-{i}").result(timeout=TIMEOUT).path for i in range(4)]
    assert all(_files_of(server, p) for p in paths)

    # REST, through the SDK.
    rest.delete_checkpoint_from_tinker_path(paths[0]).result(timeout=TIMEOUT)
    assert not _files_of(server, paths[0]), "no files, and no trash left behind"

    pks = json.loads(_shell(server, "import json; from training_app.models import Checkpoint; print(json.dumps("
                                    f"{{c.tinker_path: c.pk for c in Checkpoint.objects.filter(tinker_path__in={paths!r})}}))"))
    # The admin's delete of one checkpoint (confirmation page, then "Yes, I'm sure").
    confirm = admin_web.get(f"/admin/training_app/checkpoint/{pks[paths[1]]}/delete/")
    done = admin_web.post(f"/admin/training_app/checkpoint/{pks[paths[1]]}/delete/",
                          data={"csrfmiddlewaretoken": _form_token(confirm.text), "post": "yes"})
    assert done.status_code == 302, done.text[:500]
    assert not _files_of(server, paths[1])
    # The admin's bulk action "Delete selected checkpoints".
    listing = admin_web.get("/admin/training_app/checkpoint/")
    done = admin_web.post("/admin/training_app/checkpoint/", data={
        "csrfmiddlewaretoken": _form_token(listing.text), "action": "delete_selected", "post": "yes",
        "_selected_action": [str(pks[paths[2]]), str(pks[paths[3]])]})
    assert done.status_code == 302, done.text[:500]
    assert not any(_files_of(server, p) for p in paths)
    assert rest.list_user_checkpoints().result(timeout=TIMEOUT).checkpoints == []
    assert _checkpoint_bytes(server, "cleanup-owner") == 0, "the storage quota is free again"
    with pytest.raises(tinker.NotFoundError):
        sc.create_training_client_from_state(paths[3]).result(timeout=TIMEOUT)


def test_the_admin_offers_no_run_deletion_and_keeps_its_checkpoint_files(
    server: LiveServer, admin_web: httpx.Client
) -> None:
    """A run row is never deleted from the admin (it would orphan its files and history):
    operators stop runs instead, and checkpoints go through the checkpoint delete action."""
    key = server.create_tenant("cleanup-run-owner")
    sc = tinker.ServiceClient(base_url=server.url, api_key=key)
    doomed = sc.create_lora_training_client(base_model=MODEL_NAME, rank=2).result(timeout=TIMEOUT)
    kept = doomed.save_weights_for_sampler("run-delete").result(timeout=TIMEOUT).path
    assert _files_of(server, kept)
    run_url = f"/admin/training_app/trainingrun/{quote(doomed.model_id, safe='')}/delete/"
    assert admin_web.get(run_url).status_code == 403
    assert _files_of(server, kept)
    assert _checkpoint_bytes(server, "cleanup-run-owner") > 0


def test_retention_deletes_old_finished_operations_but_keeps_replayable_and_unfinished(server: LiveServer) -> None:
    key = server.create_tenant("retention-user")
    sc = tinker.ServiceClient(base_url=server.url, api_key=key)
    live = sc.create_lora_training_client(base_model=MODEL_NAME, rank=2).result(timeout=TIMEOUT)
    step = datum([3, 40, 41], [40, 41, 42])
    for _ in range(2):
        live.forward_backward([step], "cross_entropy").result(timeout=TIMEOUT)
        live.optim_step(types.AdamParams(learning_rate=1e-3)).result(timeout=TIMEOUT)
    live.forward_backward([step], "cross_entropy").result(timeout=TIMEOUT)  # seq 5, after the last optim_step
    sampler = live.save_weights_and_get_sampling_client().result(timeout=TIMEOUT)
    sampler.sample(types.ModelInput.from_ints([3, 40]), 1, types.SamplingParams(max_tokens=2)).result(timeout=TIMEOUT)
    # Another session's run, released when its session finishes.
    other = tinker.ServiceClient(base_url=server.url, api_key=key)
    done_run = other.create_lora_training_client(base_model=MODEL_NAME, rank=2).result(timeout=TIMEOUT)
    done_run.forward_backward([step], "cross_entropy").result(timeout=TIMEOUT)
    finished = post(server, f"sessions/{other.holder.get_session_id()}/finish", key, {})
    assert finished.status_code == 200, finished.text

    # As if a distributed worker had checkpointed the live run at its last optim_step: replay
    # needs the operations after it. A pending operation of the tenant, however old, stays.
    report = _shell(server, f"""
import datetime, json
from django.utils import timezone
from sessions_app.models import Tenant
from training_app.models import Operation as O, TrainingRun
from training_app.retention import do_delete_old_operations
live = O.objects.filter(training_run_id={live.model_id!r})
state_seq = live.filter(kind="optim_step").order_by("-seq_id")[0].seq_id
TrainingRun.objects.filter(pk={live.model_id!r}).update(state_seq=state_seq)
replayable = sorted(live.filter(seq_id__gt=state_seq).values_list("seq_id", flat=True))
tenant = Tenant.objects.get(name="retention-user")
O.objects.create(request_id="req-retention-pending", tenant=tenant, kind="sample", status="pending",
                 created_at=timezone.now() - datetime.timedelta(days=30))
deleted = do_delete_old_operations(max_age=datetime.timedelta(0))
ops = O.objects.filter(tenant=tenant)
print(json.dumps({{"deleted": deleted, "replayable": replayable, "pending": ops.filter(status="pending").count(),
                  "live_seqs": sorted(ops.filter(training_run_id={live.model_id!r}).values_list("seq_id", flat=True)),
                  "released": ops.filter(training_run_id={done_run.model_id!r}).count(),
                  "samples": ops.filter(kind="sample", status="completed").count()}}))
""")
    state = json.loads(report)
    assert state["replayable"] and state["live_seqs"] == state["replayable"], state
    assert state["pending"] == 1 and state["released"] == 0 and state["samples"] == 0, state
    assert state["deleted"] >= 6, state  # the live run's first steps, its sample, the released run
    # The live run trains on, and its retained futures still answer.
    live.forward_backward([step], "cross_entropy").result(timeout=TIMEOUT)
    live.optim_step(types.AdamParams(learning_rate=1e-3)).result(timeout=TIMEOUT)
