"""The web platform hardened: login throttling an administrator can lift, a Content-Security-Policy without inline
script on every platform page, and TLS deployments' cookies, redirect and HSTS."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from axes.models import AccessAttempt
from django.test import Client
from django.urls import reverse

from studios.models import Role

from .factories import PASSWORD, make_member, make_running, make_studio, make_user

REPO = Path(__file__).resolve().parent.parent


def log_in(client, username, password):
    return client.post(reverse("login"), {"username": username, "password": password})


def test_forty_wrong_passwords_lock_the_username_out_until_an_administrator_lifts_it(db, settings):
    settings.AXES_COOLOFF_TIME = None  # locked until lifted
    make_user("victim")
    guesser = Client()
    for attempt in range(40):
        answer = log_in(guesser, "victim", f"guess-{attempt}")
        assert answer.status_code in (200, 429)
    # The right password, from the guesser's address: refused, saying why.
    answer = log_in(guesser, "victim", PASSWORD)
    assert answer.status_code == 429
    text = answer.content.decode()
    assert "Too many failed logins" in text and "After 5 wrong passwords for victim" in text
    assert "ask an administrator to lift the lockout" in text.lower()
    assert "_auth_user_id" not in guesser.session

    # An administrator lifts it from the admin.
    administrator = make_user("root")
    administrator.is_staff = administrator.is_superuser = True
    administrator.save()
    admin = Client()
    admin.force_login(administrator)
    attempts = admin.get(reverse("admin:axes_accessattempt_changelist"))
    assert attempts.status_code == 200 and "victim" in attempts.content.decode()
    lifted = admin.post(
        reverse("admin:axes_accessattempt_changelist"),
        {"action": "delete_selected", "_selected_action": [a.pk for a in AccessAttempt.objects.all()], "post": "yes"},
    )
    assert lifted.status_code == 302
    answer = log_in(Client(), "victim", PASSWORD)
    assert answer.status_code == 302 and answer.headers["location"] == "/"


def test_a_lockout_ends_after_its_cool_off_and_a_success_resets_the_count(db, settings):
    make_user("mia")
    client = Client()
    for _ in range(4):
        assert log_in(client, "mia", "wrong").status_code == 200
    assert log_in(client, "mia", PASSWORD).status_code == 302  # the fifth try is right: in, and the count starts over
    for _ in range(4):
        assert log_in(Client(), "mia", "wrong").status_code == 200
    assert log_in(Client(), "mia", PASSWORD).status_code == 302
    for _ in range(5):
        log_in(Client(), "mia", "wrong")
    assert log_in(Client(), "mia", PASSWORD).status_code == 429
    AccessAttempt.objects.update(attempt_time=AccessAttempt.objects.get().attempt_time.replace(year=2000))
    assert log_in(Client(), "mia", PASSWORD).status_code == 302


PAGES = ["/", "/accounts/login/", "/admin/", "/admin/auth/user/"]


def test_every_platform_page_has_a_policy_that_allows_no_inline_script_and_templates_have_none(db, workspace):
    owner = make_member(workspace, Role.OWNER, username="olga")
    owner.is_staff = owner.is_superuser = True
    owner.save()
    studio = make_running(make_studio(workspace, author=owner))
    client = Client()
    client.force_login(owner)
    for path in [*PAGES, workspace.get_absolute_url(), studio.get_absolute_url(), f"/studios/{studio.pk}/ticket/"]:
        answer = client.get(path, follow=False)
        policy = dict(part.strip().split(" ", 1) for part in answer["Content-Security-Policy"].split(";"))
        assert policy["script-src"] == "'self'", path
        assert policy["frame-ancestors"] == "'none'" and policy["object-src"] == "'none'"
        if answer.status_code == 200:
            page = answer.content.decode()
            assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page), f"an inline script on {path}"
            assert not re.search(r"\son[a-z]+=", page), f"an inline event handler on {path}"
            assert "hx-on" not in page and "js:" not in page
    for template in (REPO / "templates").rglob("*.html"):
        text = template.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), template
        assert not re.search(r"\son[a-z]+=", text), template
        assert "hx-trigger" not in text or "[" not in text.split("hx-trigger", 1)[1].split('"')[1], template


def platform_over(environment, script):
    """Run ``script`` with Django set up under ``environment`` (settings are read once, from the environment)."""
    code = "import django, json\ndjango.setup()\nfrom django.test import Client\n" + script
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "studios_project.settings", **environment}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("https", [False, True], ids=["plain", "tls"])
def test_a_tls_deployment_redirects_to_https_sends_hsts_and_secure_cookies(https):
    seen = platform_over(
        {"STUDIOS_HTTPS": "1"} if https else {"STUDIOS_HTTPS": ""},
        "plain = Client(HTTP_HOST='localhost').get('/accounts/login/')\n"
        "secure = Client(HTTP_HOST='localhost').get('/accounts/login/', secure=True)\n"
        "print(json.dumps({'plain': plain.status_code, 'location': plain.get('Location', ''),\n"
        "    'hsts': secure.get('Strict-Transport-Security', ''),\n"
        "    'csrf_secure': bool(secure.cookies['csrftoken']['secure'])}))",
    )
    if https:
        assert seen["plain"] == 301 and seen["location"] == "https://localhost/accounts/login/"
        assert seen["hsts"] == "max-age=31536000" and seen["csrf_secure"]
    else:
        assert seen == {"plain": 200, "location": "", "hsts": "", "csrf_secure": False}
