"""The platform's refusals and outages, in one module that imports nothing of the platform, so that any module may
raise or catch them without importing the one that raises them. Each message is a sentence the user can act on."""

from django.core.exceptions import PermissionDenied
from django.db import InterfaceError, OperationalError
from django.template import loader

# What says the platform's database cannot be reached.
DATABASE_OUTAGES = (OperationalError, InterfaceError)
DATABASE_OUTAGE = "The platform's database is unreachable; nothing was changed. Try again in a minute."


def outage_page():
    """The 503 page, rendered from its template alone: no request, so no context processor, no user, no query."""
    return loader.render_to_string("503.html", {"message": DATABASE_OUTAGE})


class ActionRefused(Exception):
    """The action is not possible now; the message tells the user why and what to do."""


class RoleTooLow(PermissionDenied):
    """The user is a member but their role is too low; the message says which role is needed. Django answers it
    with ``templates/403.html``, as any ``PermissionDenied``."""
