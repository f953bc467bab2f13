"""Personal access tokens: the user's own page makes, lists and revokes them; a secret is shown once and kept hashed;
a revoked or expired token, or an inactive user's, is refused at once."""

import hashlib
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from studios import tokens
from studios.models import AccessToken

from .factories import make_user

PAGE = "/account/tokens/"


@pytest.fixture
def alice(db, client):
    user = make_user("alice")
    client.force_login(user)
    return user


def test_a_user_makes_a_token_and_sees_its_secret_only_once(client, alice):
    response = client.post(PAGE, {"name": "nightly pipeline", "expires_in_days": "30"})
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    secret = response.context["secret"]
    assert secret.startswith("stu_") and len(secret) > 40
    assert secret.encode() in response.content
    token = AccessToken.objects.get(user=alice)
    assert token.name == "nightly pipeline"
    assert token.digest == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in str(AccessToken.objects.filter(pk=token.pk).values().get())
    assert abs(token.expires - (timezone.now() + timedelta(days=30))) < timedelta(minutes=1)
    later = client.get(PAGE)
    assert secret.encode() not in later.content
    assert token.prefix.encode() in later.content and b"nightly pipeline" in later.content


def test_a_token_may_never_expire(client, alice):
    client.post(PAGE, {"name": "laptop", "expires_in_days": ""})
    assert AccessToken.objects.get(user=alice).expires is None


@pytest.mark.parametrize(
    "form, error",
    [
        ({"name": "  ", "expires_in_days": "30"}, b"This field is required."),
        ({"name": "x", "expires_in_days": "12"}, b"Select a valid choice. 12 is not one of the available choices."),
    ],
)
def test_a_bad_token_form_says_why_and_makes_nothing(client, alice, form, error):
    response = client.post(PAGE, form)
    assert response.status_code == 400
    assert error in response.content
    assert not AccessToken.objects.exists()


def test_the_page_lists_only_my_tokens(client, alice):
    tokens.issue_token(alice, "mine")
    tokens.issue_token(make_user("bob"), "bobs")
    response = client.get(PAGE)
    assert b"mine" in response.content and b"bobs" not in response.content


def test_a_user_revokes_a_token_in_place_with_htmx(client, alice):
    token, secret = tokens.issue_token(alice, "ci")
    response = client.post(reverse("access_token_revoke", args=[token.pk]), headers={"HX-Request": "true"})
    assert response.status_code == 200
    assert b"revoked" in response.content and b"<tr" in response.content
    token.refresh_from_db()
    assert token.revoked is not None
    with pytest.raises(tokens.TokenRefused, match="Access token ci was revoked"):
        tokens.authenticate(secret)


def test_revoking_without_htmx_goes_back_to_the_page(client, alice):
    token, _ = tokens.issue_token(alice, "ci")
    response = client.post(reverse("access_token_revoke", args=[token.pk]))
    assert response.status_code == 302 and response["Location"] == PAGE


def test_a_user_cannot_revoke_someone_elses_token(client, alice):
    token, secret = tokens.issue_token(make_user("bob"), "bobs")
    response = client.post(reverse("access_token_revoke", args=[token.pk]))
    assert response.status_code == 404
    assert tokens.authenticate(secret)[0].username == "bob"


def test_the_token_page_needs_a_login(client, db):
    response = client.get(PAGE)
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_a_token_acts_as_its_user_and_records_its_use(db):
    user = make_user()
    token, secret = tokens.issue_token(user, "script")
    assert tokens.authenticate(secret) == (user, token)
    token.refresh_from_db()
    assert token.last_used is not None


def test_an_expired_token_is_refused(db):
    token, secret = tokens.issue_token(make_user(), "old", expires_in_days=1)
    AccessToken.objects.filter(pk=token.pk).update(expires=timezone.now() - timedelta(seconds=1))
    with pytest.raises(tokens.TokenRefused, match="Access token old has expired"):
        tokens.authenticate(secret)


def test_an_inactive_users_token_is_refused(db):
    user = make_user()
    _, secret = tokens.issue_token(user, "script")
    user.is_active = False
    user.save()
    with pytest.raises(tokens.TokenRefused, match="inactive"):
        tokens.authenticate(secret)


def test_an_unknown_token_is_refused(db):
    with pytest.raises(tokens.TokenRefused, match="not valid"):
        tokens.authenticate("stu_" + "x" * 43)
