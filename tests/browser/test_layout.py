"""The product's pages as a new user meets them, on a desktop (1280 px) and a phone (390 px): nothing wider than
the screen, no WCAG 2.1 A/AA violation that axe-core finds, and the rough edges new users reported, gone."""

import re
from urllib.parse import parse_qs, urlsplit

import pytest
from django.urls import reverse
from django.utils import timezone
from playwright.sync_api import expect

from checkpoints.models import Checkpoint
from studios.models import ComputeEnvironment, Role

from ..factories import make_member, make_running, make_studio, make_workspace
from .conftest import axe_violations

pytestmark = pytest.mark.browser

WIDTHS = [1280, 390]


@pytest.fixture
def world(live_platform):
    """A workspace with a running studio, a stopped one with checkpoints, and an AWS Batch compute environment;
    its owner."""
    workspace = make_workspace()
    owner = make_member(workspace, Role.OWNER, username="olga")
    running = make_running(make_studio(workspace, name="running-one", author=owner))
    stopped = make_studio(workspace, name="rnaseq-salmon", author=owner, description="Quantification")
    for name in ("rnaseq-salmon_1", "before-upgrade"):
        Checkpoint.objects.create(
            studio=stopped,
            name=name,
            state=Checkpoint.State.FINALIZED,
            saved=timezone.now(),
            size_bytes=2**30,
            manifest_key=f"manifests/{name}",
        )
    ComputeEnvironment.objects.create(
        workspace=workspace,
        name="gpu-queue",
        kind="aws-batch",
        region="eu-west-1",
        job_queue="arn:aws:batch:eu-west-1:123456789012:job-queue/studios-gpu-queue-with-a-long-name",
        work_dir="s3://research-analysis-bucket/studios/work-directory-of-the-gpu-queue",
    )
    return workspace, owner, running, stopped


def product_pages(workspace, running, stopped):
    org, slug = workspace.organization.slug, workspace.slug
    checkpoint = stopped.checkpoints.get(name="before-upgrade")
    return [
        "/",
        workspace.get_absolute_url(),
        reverse("studio_add", args=[org, slug]),
        reverse("environment_list", args=[org, slug]),
        reverse("environment_add", args=[org, slug]),
        running.get_absolute_url(),
        stopped.get_absolute_url(),
        f"{stopped.get_absolute_url()}?tab=checkpoints",
        f"{stopped.get_absolute_url()}?tab=activity",
        reverse("start_as_new", args=[checkpoint.pk]),
        reverse("access_tokens"),
    ]


@pytest.mark.parametrize("width", WIDTHS)
def test_every_product_page_fits_the_screen_and_has_no_accessibility_violation(world, open_page, width):
    workspace, owner, running, stopped = world
    page = open_page(owner, width=width)
    problems = []
    for path in product_pages(workspace, running, stopped):
        page.goto(path)
        expect(page.locator("main")).to_be_visible()
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        if overflow > 0:
            problems.append(f"{path}: {overflow} px wider than the screen")
        problems += [f"{path}: {violation}" for violation in axe_violations(page)]
    assert problems == []


def test_searching_again_keeps_one_query_in_the_address(world, open_page):
    workspace, owner, _running, _stopped = world
    page = open_page(owner)
    page.goto(workspace.get_absolute_url())
    search = page.get_by_role("searchbox", name="Search studios")
    for query in ("rnaseq", "salmon", "author:olga"):
        search.fill(query)
        search.press("Enter")
        page.wait_for_url(re.compile(r"[?&]q=" + re.escape(query.replace(":", "%3A")) + "(&|$)"))
    assert parse_qs(urlsplit(page.url).query)["q"] == ["author:olga"]
    expect(page.get_by_role("link", name="rnaseq-salmon")).to_be_visible()


def test_checkpoint_names_can_be_edited_on_a_phone(world, open_page):
    _workspace, owner, _running, stopped = world
    page = open_page(owner, width=390)
    page.goto(f"{stopped.get_absolute_url()}?tab=checkpoints")
    name = page.get_by_label("Name of checkpoint before-upgrade")
    expect(name).to_be_visible()
    assert name.bounding_box()["width"] >= 150


@pytest.mark.parametrize("width", WIDTHS)
def test_the_header_names_the_user_and_the_role_beside_its_workspace(world, open_page, width):
    workspace, owner, running, stopped = world
    page = open_page(owner, width=width)
    for path in ("/", workspace.get_absolute_url(), running.get_absolute_url(), reverse("access_tokens")):
        page.goto(path)
        expect(page.locator("header .who span").first).to_have_text("olga")
    slugs = {"org": workspace.organization.slug, "workspace": workspace.slug}
    checkpoint = stopped.checkpoints.get(name="before-upgrade")
    for path in (
        workspace.get_absolute_url(),
        running.get_absolute_url(),
        reverse("studio_add", kwargs=slugs),
        reverse("environment_list", kwargs=slugs),
        reverse("workspace_activity", kwargs=slugs),
        reverse("start_as_new", args=[checkpoint.pk]),
    ):
        page.goto(path)
        expect(page.get_by_role("navigation", name="Workspace")).to_contain_text("your role here: owner")


def test_the_status_panel_is_a_live_region_and_dates_say_their_time_zone(world, open_page):
    workspace, owner, running, _stopped = world
    page = open_page(owner)
    page.goto(running.get_absolute_url())
    expect(page.locator("[aria-live=polite] #studio-status")).to_have_count(1)
    page.goto(workspace.get_absolute_url())
    created = page.get_by_role("row", name=re.compile("running-one")).locator("time").first
    expect(created).to_have_text(re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d UTC$"))


def test_stop_from_the_list_stays_on_the_list(world, open_page):
    workspace, owner, _running, _stopped = world
    page = open_page(owner)
    page.goto(workspace.get_absolute_url())
    page.get_by_label("Actions for running-one").click()
    page.once("dialog", lambda dialog: dialog.accept())  # the confirmation, which lists who is connected
    page.get_by_role("button", name="Stop", exact=True).click()
    # (Its session is a fake one, gone at once: the "Stopping running-one." message may already have gone with it.)
    row = page.get_by_role("row", name=re.compile("running-one"))
    expect(row.get_by_text(re.compile("^(stopping|stopped)$"))).to_be_visible()
    assert urlsplit(page.url).path == workspace.get_absolute_url()


def test_a_template_no_compute_environment_can_run_cannot_be_picked_and_says_why(world, open_page):
    workspace, owner, _running, _stopped = world
    page = open_page(owner)
    page.goto(reverse("studio_add", args=[workspace.organization.slug, workspace.slug]))
    expect(page.get_by_role("option", name="RStudio Server (unavailable)")).to_be_disabled()
    expect(page.get_by_role("option", name="JupyterLab")).to_be_enabled()
    expect(page.get_by_text(re.compile("RStudio Server cannot run on local."))).to_be_visible()
