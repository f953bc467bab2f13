"""The ``studios`` command: the API of /api/v1/ for people (tables) and scripts (``--json``, exit codes).

Configured by STUDIOS_URL and STUDIOS_TOKEN, or by the file ``studios login`` writes; a default workspace by
STUDIOS_WORKSPACE or ``--workspace org/workspace``. Free of Django: it is only an HTTP client of the API.

Exit codes a script can branch on: 0 done; 1 refused (the input or the studio's status: the message says why);
2 wrong usage; 3 no such thing (or not a member of its workspace); 4 not logged in, or a role too low; 5 the
platform could not be reached or failed; 6 ``wait`` ended without the status asked for (errored, or timed out).
"""

import json
import os
import shlex
import time
from pathlib import Path

import click
import httpx
from click.shell_completion import get_completion_class

LIFESPAN_HELP = "Hours until each session is stopped, 1 to 120"
STEP_MARKS = {"pending": " ", "in-progress": "…", "succeeded": "✓", "errored": "✗"}


def config_path():
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "studios" / "config.json"


class Refused(click.ClickException):
    """The input or the studio's status: the message says why."""

    exit_code = 1


class NotFound(Refused):
    exit_code = 3


class NotAllowed(Refused):
    exit_code = 4


class Unreachable(Refused):
    exit_code = 5


class NotArrived(Refused):
    exit_code = 6


FAILURES = {400: Refused, 409: Refused, 404: NotFound, 401: NotAllowed, 403: NotAllowed}


class Platform:
    """The API of one platform, as one user (their token)."""

    def __init__(self, url, token):
        self.http = httpx.Client(
            base_url=url.rstrip("/") + "/api/v1",
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=30,
        )

    def call(self, method, path, body=None, params=None):
        try:
            response = self.http.request(method, path, json=body, params=params)
        except httpx.HTTPError as error:
            raise Unreachable(f"Cannot reach {self.http.base_url}: {error}") from None
        if response.status_code == 204:
            return None
        try:
            answer = response.json()
        except ValueError:
            raise Unreachable(f"{self.http.base_url} answered {response.status_code}, not the API.") from None
        if response.is_error:
            raise FAILURES.get(response.status_code, Unreachable)(describe_error(answer))
        return answer

    def workspace_path(self, workspace):
        org, _, slug = (workspace or "").partition("/")
        if not org or not slug:
            raise click.UsageError("Name the workspace as organization/workspace (--workspace or STUDIOS_WORKSPACE).")
        return f"/workspaces/{org}/{slug}"

    def studio(self, reference, workspace):
        """A studio by id, or by its exact name in ``workspace``."""
        if reference.isdigit():
            return self.call("GET", f"/studios/{reference}/")
        page = self.call(
            "GET", f"{self.workspace_path(workspace)}/studios/", params={"search": shlex.quote(reference), "max": 1000}
        )
        for studio in page["studios"]:
            if studio["name"] == reference:
                return studio
        raise NotFound(f"No studio named {reference} in {workspace}.")

    def checkpoint(self, studio, name_or_id):
        """A checkpoint of ``studio`` by id or name; None for its newest saved one."""
        if name_or_id is None:
            if studio["lastCheckpoint"] is None:
                raise Refused(f"{studio['name']} has no saved checkpoint yet.")
            return studio["lastCheckpoint"]
        for checkpoint in self.call("GET", f"/studios/{studio['id']}/checkpoints/"):
            if name_or_id in (checkpoint["name"], str(checkpoint["id"])):
                return checkpoint
        raise NotFound(f"{studio['name']} has no checkpoint {name_or_id}.")


def describe_error(answer):
    """The API's sentence, with each field's when the input was refused."""
    fields = [f"{name}: {' '.join(sentences)}" for name, sentences in answer.get("errors", {}).items() if name]
    return "\n".join(fields) if fields else answer.get("detail", str(answer))


class Context:
    def __init__(self, as_json, workspace):
        self.as_json = as_json
        self.workspace = workspace
        self._platform = None

    @property
    def platform(self):
        if self._platform is None:
            stored = json.loads(config_path().read_text()) if config_path().exists() else {}
            url = os.environ.get("STUDIOS_URL") or stored.get("url")
            token = os.environ.get("STUDIOS_TOKEN") or stored.get("token")
            if not url or not token:
                raise NotAllowed("Not logged in: run studios login, or set STUDIOS_URL and STUDIOS_TOKEN.")
            self.workspace = self.workspace or stored.get("workspace")
            self._platform = Platform(url, token)
        return self._platform

    def show(self, answer, table=None):
        """``answer`` as JSON, or as the ``table`` (a function printing it) for people."""
        if self.as_json or table is None:
            click.echo(json.dumps(answer, indent=2))
        else:
            table(answer)


def print_table(headers, rows):
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    for row in [headers, *rows]:
        click.echo("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def studio_rows(studios):
    return [
        (
            studio["id"],
            studio["name"],
            studio["status"],
            studio["template"],
            studio["computeEnvironment"]["name"],
            studio["author"],
            studio["created"][:16].replace("T", " "),
            ",".join(member["username"] for member in studio["connectedMembers"]),
        )
        for studio in studios
    ]


STUDIO_HEADERS = ("ID", "NAME", "STATUS", "TEMPLATE", "COMPUTE", "AUTHOR", "CREATED", "CONNECTED")


def print_studio(studio):
    print_table(STUDIO_HEADERS, studio_rows([studio]))
    if studio["statusReason"]:
        click.echo(f"\nReason: {studio['statusReason']}")
    if studio["stopsAt"]:
        left = studio["secondsLeft"]
        click.echo(
            f"Stops at: {studio['stopsAt'][:16].replace('T', ' ')} UTC ({left // 3600} h {left % 3600 // 60} min left)"
        )
    if studio["sessionUrl"]:
        click.echo(f"\nURL: {studio['sessionUrl']}")
    if studio["lastCheckpoint"]:
        click.echo(f"Last checkpoint: {studio['lastCheckpoint']['name']} ({studio['lastCheckpoint']['state']})")
    for step in studio["startupSteps"]:
        click.echo(f"  [{STEP_MARKS.get(step['state'], '?')}] {step['name']}  {step['message']}".rstrip())


def resources(cpus, memory, datasets, lifespan=None):
    body = {"cpus": cpus, "memoryMb": memory, "datasets": list(datasets) or None, "lifespanHours": lifespan}
    return {name: value for name, value in body.items() if value is not None}


@click.group(epilog='Shell completion: eval "$(studios completion bash)" (or zsh, fish).')
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON, for scripts.")
@click.option(
    "-w", "--workspace", envvar="STUDIOS_WORKSPACE", help="organization/workspace (default: the one saved by login)."
)
@click.pass_context
def main(click_context, as_json, workspace):
    """Add, start, share and stop studios on a Studios platform."""
    click_context.obj = Context(as_json, workspace)


pass_context = click.make_pass_decorator(Context)


@main.command()
@click.option("--url", prompt="Platform URL", help="e.g. https://studios.example.org")
@click.option("--token", prompt="Access token", hide_input=True, help="From your Access tokens page.")
@pass_context
def login(context, url, token):
    """Check a token and save it with the URL (and --workspace) for the next commands."""
    workspaces = Platform(url, token).call("GET", "/workspaces/")
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(json.dumps({"url": url, "token": token, "workspace": context.workspace}))
    click.echo(f"Logged in to {url}; saved in {path}. Your workspaces:")
    print_table(("WORKSPACE", "ROLE"), [(f"{w['organization']}/{w['slug']}", w["role"]) for w in workspaces])


@main.command()
@pass_context
def workspaces(context):
    """The workspaces you belong to, with your role."""
    context.show(
        context.platform.call("GET", "/workspaces/"),
        lambda answer: print_table(
            ("WORKSPACE", "NAME", "ROLE"),
            [(f"{w['organization']}/{w['slug']}", w["name"], w["role"]) for w in answer],
        ),
    )


@main.command("list")
@click.argument("search", nargs=-1)
@click.option("--max", "limit", type=int, default=100, show_default=True)
@click.option("--offset", type=int, default=0, show_default=True)
@click.option("--order-by", "order", default="newest", show_default=True, help="newest, oldest, name or lastUsed.")
@pass_context
def list_studios(context, search, limit, offset, order):
    """The workspace's studios. SEARCH as on the page: name words, author:, ce:, status:."""
    platform = context.platform
    page = platform.call(
        "GET",
        f"{platform.workspace_path(context.workspace)}/studios/",
        params={"search": " ".join(search), "max": limit, "offset": offset, "orderBy": order},
    )

    def table(page):
        print_table(STUDIO_HEADERS, studio_rows(page["studios"]))
        shown = len(page["studios"])
        if shown < page["total"]:
            click.echo(f"({shown} of {page['total']}; --offset {page['offset'] + shown} for more)")

    context.show(page, table)


@main.command()
@click.argument("studio")
@pass_context
def view(context, studio):
    """A studio: status, reason, URL, last checkpoint and start-up steps. STUDIO is its id or name."""
    context.show(context.platform.studio(studio, context.workspace), print_studio)


@main.command()
@click.argument("name")
@click.option("-t", "--template", default="jupyterlab", show_default=True)
@click.option("-c", "--compute-environment", "environment", help="Its name (default: the only one).")
@click.option("--description")
@click.option("--cpu", "cpus", type=int)
@click.option("--memory", type=int, help="In MB.")
@click.option("-d", "--dataset", "datasets", multiple=True, help="A dataset's name; repeat for more.")
@click.option("--lifespan", type=int, help=LIFESPAN_HELP + " (default: the workspace's).")
@click.option(
    "--idle-stop", type=int, help="Stop it after this many idle minutes, 30 to 1440 (default: the workspace's)."
)
@click.option("--start", is_flag=True, help="Start it at once.")
@click.option("--wait", "wait_for_it", is_flag=True, help="With --start: until it runs.")
@pass_context
def add(
    context, name, template, environment, description, cpus, memory, datasets, lifespan, idle_stop, start, wait_for_it
):
    """Add a studio (stopped, unless --start)."""
    platform = context.platform
    workspace = platform.workspace_path(context.workspace)
    environments = platform.call("GET", f"{workspace}/compute-environments/")
    chosen = [e for e in environments if e["name"] == environment] if environment else environments
    if len(chosen) != 1:
        names = ", ".join(e["name"] for e in environments)
        raise click.UsageError(f"Choose the compute environment with --compute-environment: {names}.")
    body = {
        "name": name,
        "template": template,
        "computeEnvironment": chosen[0]["id"],
        "autoStart": start,
        **resources(cpus, memory, dataset_ids(platform, workspace, datasets), lifespan),
    }
    if description is not None:
        body["description"] = description
    if idle_stop is not None:
        body["idleStopMinutes"] = idle_stop
    studio = platform.call("POST", f"{workspace}/studios/", body)
    finish(context, studio, "running" if start and wait_for_it else None)


def dataset_ids(platform, workspace, names):
    if not names:
        return []
    known = {dataset["name"]: dataset["id"] for dataset in platform.call("GET", f"{workspace}/datasets/")}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise NotFound(f"No dataset {', '.join(unknown)} in this workspace; it has {', '.join(known)}.")
    return [known[name] for name in names]


def finish(context, studio, wait_for):
    """Show the studio an action answered, after waiting for ``wait_for`` if asked."""
    if wait_for:
        studio = wait_until_status(context, studio, wait_for, timeout=1800)
    context.show(studio, print_studio)


@main.command()
@click.argument("studio")
@click.option("--cpu", "cpus", type=int)
@click.option("--memory", type=int, help="In MB.")
@click.option("-d", "--dataset", "datasets", multiple=True, help="Mount these datasets instead.")
@click.option("--lifespan", type=int, help=LIFESPAN_HELP + " (default: the studio's).")
@click.option("--wait", "wait_for_it", is_flag=True, help="Until it runs.")
@pass_context
def start(context, studio, cpus, memory, datasets, lifespan, wait_for_it):
    """Start a stopped studio from its newest checkpoint, optionally with other resources."""
    platform = context.platform
    studio = platform.studio(studio, context.workspace)
    workspace = f"/workspaces/{studio['workspace']}"
    body = resources(cpus, memory, dataset_ids(platform, workspace, datasets), lifespan)
    finish(context, platform.call("POST", f"/studios/{studio['id']}/start/", body), "running" if wait_for_it else None)


def clone_options(command):
    """The arguments and options of start-as-new and add-as-new."""
    for option in reversed(
        [
            click.argument("studio"),
            click.argument("name"),
            click.option("--checkpoint", help="Its name or id (default: the studio's newest saved checkpoint)."),
            click.option("--description"),
            click.option("--cpu", "cpus", type=int),
            click.option("--memory", type=int, help="In MB."),
            click.option("-d", "--dataset", "datasets", multiple=True),
            click.option("--lifespan", type=int, help=LIFESPAN_HELP + " (default: the workspace's)."),
        ]
    ):
        command = option(command)
    return command


def clone(context, action, studio, name, checkpoint, description, cpus, memory, datasets, lifespan):
    """The new studio ``action`` (start-as-new or add-as-new) made from a checkpoint of ``studio``."""
    platform = context.platform
    parent = platform.studio(studio, context.workspace)
    source = platform.checkpoint(parent, checkpoint)
    body = {
        "name": name,
        **resources(cpus, memory, dataset_ids(platform, f"/workspaces/{parent['workspace']}", datasets), lifespan),
    }
    if description is not None:
        body["description"] = description
    return platform.call("POST", f"/checkpoints/{source['id']}/{action}/", body)


@main.command("start-as-new")
@clone_options
@click.option("--wait", "wait_for_it", is_flag=True, help="Until it runs.")
@pass_context
def start_as_new(context, wait_for_it, **clone_from):
    """Start NAME, a new studio cloned from a checkpoint of STUDIO."""
    finish(context, clone(context, "start-as-new", **clone_from), "running" if wait_for_it else None)


@main.command("add-as-new")
@clone_options
@pass_context
def add_as_new(context, **clone_from):
    """Add NAME, a new studio cloned from a checkpoint of STUDIO, stopped: its first start restores the checkpoint."""
    finish(context, clone(context, "add-as-new", **clone_from), None)


@main.command()
@click.argument("studio")
@click.option("--force", is_flag=True, help="End the compute of a stop that has not finished (changes may be lost).")
@click.option("--wait", "wait_for_it", is_flag=True, help="Until it is stopped.")
@pass_context
def stop(context, studio, force, wait_for_it):
    """Stop a studio: it saves a final checkpoint, then frees its compute."""
    platform = context.platform
    studio = platform.studio(studio, context.workspace)
    action = "force-stop" if force else "stop"
    finish(context, platform.call("POST", f"/studios/{studio['id']}/{action}/"), "stopped" if wait_for_it else None)


@main.command()
@click.argument("studio")
@click.option("--hours", type=int, required=True, help="How many hours later it stops (at most 120 from its start).")
@pass_context
def extend(context, studio, hours):
    """Keep a running studio running HOURS longer than its lifespan says (maintain role)."""
    platform = context.platform
    studio = platform.studio(studio, context.workspace)
    extended = platform.call("POST", f"/studios/{studio['id']}/extend/", {"hours": hours})
    context.show(extended, print_studio)


@main.command()
@click.argument("studio")
@click.option("--yes", is_flag=True, help="Do not ask.")
@pass_context
def delete(context, studio, yes):
    """Delete a stopped studio: immediate and final."""
    platform = context.platform
    studio = platform.studio(studio, context.workspace)
    if not yes:
        click.confirm(f"Delete {studio['name']}? This cannot be undone.", abort=True)
    platform.call("DELETE", f"/studios/{studio['id']}/")
    if not context.as_json:
        click.echo(f"Deleted {studio['name']}.")


@main.command()
@click.argument("studio")
@pass_context
def checkpoints(context, studio):
    """A studio's checkpoints, newest first."""
    platform = context.platform
    studio = platform.studio(studio, context.workspace)
    context.show(
        platform.call("GET", f"/studios/{studio['id']}/checkpoints/"),
        lambda answer: print_table(
            ("ID", "NAME", "STATE", "SAVED", "SIZE", "IN USE"),
            [
                (
                    c["id"],
                    c["name"],
                    c["state"],
                    (c["saved"] or "")[:19].replace("T", " "),
                    c["sizeBytes"],
                    "yes" if c["inUse"] else "",
                )
                for c in answer
            ],
        ),
    )


@main.command("rename-checkpoint")
@click.argument("studio")
@click.argument("checkpoint")
@click.argument("new_name")
@pass_context
def rename_checkpoint(context, studio, checkpoint, new_name):
    """Rename CHECKPOINT (its name or id) of STUDIO to NEW_NAME."""
    platform = context.platform
    source = platform.checkpoint(platform.studio(studio, context.workspace), checkpoint)
    renamed = platform.call("PATCH", f"/checkpoints/{source['id']}/", {"name": new_name})
    context.show(renamed, lambda answer: click.echo(f"Renamed to {answer['name']}."))


@main.command()
@pass_context
def templates(context):
    """The templates, and on which compute environments each can run (and why not)."""
    platform = context.platform
    answer = platform.call("GET", f"{platform.workspace_path(context.workspace)}/templates/")
    context.show(
        answer,
        lambda answer: print_table(
            ("TEMPLATE", "COMPUTE", "AVAILABLE", "WHY NOT"),
            [
                (t["template"], e["name"], "yes" if e["available"] else "no", e["reason"])
                for t in answer
                for e in t["computeEnvironments"]
            ],
        ),
    )


@main.command()
@click.argument("studio")
@pass_context
def url(context, studio):
    """The URL members open a running studio at."""
    studio = context.platform.studio(studio, context.workspace)
    if not studio["sessionUrl"]:
        raise Refused(f"{studio['name']} is {studio['status']}; it has a URL once it runs.")
    context.show({"url": studio["sessionUrl"]}, lambda answer: click.echo(answer["url"]))


@main.command()
@click.argument("studio")
@click.option("--for", "wanted", type=click.Choice(["running", "stopped"]), default="running", show_default=True)
@click.option("--timeout", type=int, default=1800, show_default=True, help="Seconds.")
@pass_context
def wait(context, studio, wanted, timeout):
    """Block until STUDIO is running (or stopped), showing its start-up steps; exit 6 when it errors instead."""
    studio = wait_until_status(context, context.platform.studio(studio, context.workspace), wanted, timeout)
    context.show(studio, print_studio)


def wait_until_status(context, studio, wanted, timeout):
    deadline = time.monotonic() + timeout
    shown = set()
    while True:
        if not context.as_json:
            for step in studio["startupSteps"]:
                line = (step["name"], step["state"])
                if line not in shown and step["state"] != "pending":
                    shown.add(line)
                    click.echo(f"[{STEP_MARKS[step['state']]}] {step['name']} {step['message']}".rstrip(), err=True)
        if studio["status"] == wanted:
            return studio
        if studio["status"] == "errored" or (wanted == "running" and studio["status"] == "stopped"):
            raise NotArrived(f"{studio['name']} is {studio['status']}: {studio['statusReason']}")
        if time.monotonic() >= deadline:
            raise NotArrived(f"{studio['name']} is still {studio['status']} after {timeout} s.")
        time.sleep(1)
        studio = context.platform.call("GET", f"/studios/{studio['id']}/")


@main.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell):
    """Print the shell completion script: eval "$(studios completion bash)"."""
    completer = get_completion_class(shell)
    click.echo(completer(main, {}, "studios", "_STUDIOS_COMPLETE").source())


if __name__ == "__main__":
    main(prog_name="studios")
