"""Personal access tokens: made on the user's own page, shown once, kept hashed, refused once revoked or expired.

A token acts as its user with that user's roles and nothing more: it only says who is asking, and every action
checks the role as it does for the pages.
"""

import hashlib
import logging
import secrets
from datetime import timedelta

from django.db import transaction
from django.http import Http404
from django.utils import timezone

from .models import AccessToken

log = logging.getLogger(__name__)

# Every secret starts with this, so that scanners and people recognise one (and the API tells it from others).
PREFIX = "stu_"
# ``last_used`` is written at most this often per token: a script polling the API costs no write per request.
LAST_USED_PRECISION = timedelta(minutes=1)


def digest_of(secret):
    return hashlib.sha256(secret.encode()).hexdigest()


def issue_token(user, name, expires_in_days=None):
    """A new token for ``user``: (the record, the secret). The secret is never stored: show it now or never."""
    secret = PREFIX + secrets.token_urlsafe(32)
    expires = timezone.now() + timedelta(days=expires_in_days) if expires_in_days else None
    token = AccessToken.objects.create(
        user=user, name=name, digest=digest_of(secret), prefix=secret[: len(PREFIX) + 4], expires=expires
    )
    log.info("access token %s (%s) made by %s", token.pk, name, user)
    return token, secret


def revoke_token(user, token_id):
    """Revoke one of ``user``'s own tokens (Http404 for anyone else's); from the next request on it is refused."""
    with transaction.atomic():
        token = AccessToken.objects.select_for_update().filter(pk=token_id, user=user).first()
        if token is None:
            raise Http404("No such access token")
        if token.revoked is None:
            token.revoked = timezone.now()
            token.save(update_fields=["revoked"])
            log.info("access token %s (%s) revoked by %s", token.pk, token.name, user)
    return token


class TokenRefused(Exception):
    """The secret is unknown, revoked or expired, or its user may not log in; the message says which."""


def authenticate(secret):
    """The user a secret acts as, and its token; TokenRefused otherwise."""
    token = AccessToken.objects.select_related("user").filter(digest=digest_of(secret)).first()
    if token is None:
        raise TokenRefused("This access token is not valid.")
    if token.revoked is not None:
        raise TokenRefused(f"Access token {token.name} was revoked; make a new one on your Access tokens page.")
    if token.is_expired:
        raise TokenRefused(f"Access token {token.name} has expired; make a new one on your Access tokens page.")
    if not token.user.is_active:
        raise TokenRefused("The account of this access token is inactive.")
    now = timezone.now()
    if token.last_used is None or now - token.last_used >= LAST_USED_PRECISION:
        AccessToken.objects.filter(pk=token.pk).update(last_used=now)
    return token.user, token
