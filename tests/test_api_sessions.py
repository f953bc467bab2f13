"""A pipeline's use of the API against the real platform: a token adds and starts a studio, waits for it, hands its
URL to a person, renames its checkpoint, starts a clone as new from it, stops and deletes both."""

import httpx

from studios import tokens
from studios.models import Role, Studio

from .factories import make_member, make_workspace
from .live import START_TIMEOUT, Browser, wait_until


def test_a_token_adds_starts_shares_clones_stops_and_deletes_studios(live_platform, tmp_path):
    workspace = make_workspace(work_dir=str(tmp_path / "work"))
    maintainer = make_member(workspace, Role.MAINTAIN)
    colleague = make_member(workspace, Role.CONNECT)
    _, secret = tokens.issue_token(maintainer, "pipeline")
    api = httpx.Client(
        base_url=f"{live_platform.url}/api/v1", headers={"Authorization": f"Bearer {secret}"}, timeout=30
    )
    environment = api.get(f"/workspaces/{workspace.organization.slug}/{workspace.slug}/compute-environments/")
    added = api.post(
        f"/workspaces/{workspace.organization.slug}/{workspace.slug}/studios/",
        json={
            "name": "pipeline",
            "computeEnvironment": environment.json()[0]["id"],
            "cpus": 1,
            "memoryMb": 1024,
            "autoStart": True,
        },
    )
    assert added.status_code == 201, added.text
    studio_id = added.json()["id"]

    def status_is(wanted, studio_id=studio_id):
        studio = api.get(f"/studios/{studio_id}/").json()
        assert studio["status"] != "errored", studio["statusReason"]
        return studio if studio["status"] == wanted else None

    running = wait_until(lambda: status_is("running"), START_TIMEOUT, "the studio to run", interval=0.5)
    assert {step["state"] for step in running["startupSteps"]} == {"succeeded"}
    assert api.post(f"/studios/{studio_id}/start/").status_code == 409

    # The URL the pipeline hands to a person answers them through the proxy.
    studio = Studio.objects.get(pk=studio_id)
    assert running["sessionUrl"] == live_platform.session_origin(studio) + "/"
    assert Browser(live_platform, colleague).session(studio).http.get("/api/status").status_code == 200

    stop = api.post(f"/studios/{studio_id}/stop/")
    assert stop.status_code == 202 and stop.json()["status"] == "stopping"
    wait_until(lambda: status_is("stopped"), 60, "the studio to stop", interval=0.5)
    [checkpoint] = api.get(f"/studios/{studio_id}/checkpoints/").json()
    assert checkpoint["state"] == "finalized" and checkpoint["restorable"]
    renamed = api.patch(f"/checkpoints/{checkpoint['id']}/", json={"name": "after qc"})
    assert renamed.json()["name"] == "after_qc"
    assert api.get(f"/studios/{studio_id}/").json()["lastCheckpoint"]["name"] == "after_qc"

    clone = api.post(f"/checkpoints/{checkpoint['id']}/start-as-new/", json={"name": "pipeline-clone"})
    assert clone.status_code == 201, clone.text
    clone_id = clone.json()["id"]
    wait_until(lambda: status_is("running", clone_id), START_TIMEOUT, "the clone to run", interval=0.5)
    assert api.post(f"/studios/{clone_id}/stop/").status_code == 202
    wait_until(lambda: status_is("stopped", clone_id), 60, "the clone to stop", interval=0.5)

    for studio in (studio_id, clone_id):
        assert api.delete(f"/studios/{studio}/").status_code == 204
        assert api.get(f"/studios/{studio}/").status_code == 404
