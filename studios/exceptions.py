"""The platform's refusals, in one module that imports nothing of the platform, so that any module may raise or
catch them without importing the one that raises them. Each message is a sentence the user can act on."""

from django.core.exceptions import PermissionDenied


class ActionRefused(Exception):
    """The action is not possible now; the message tells the user why and what to do."""


class RoleTooLow(PermissionDenied):
    """The user is a member but their role is too low; the message says which role is needed. Django answers it
    with ``templates/403.html``, as any ``PermissionDenied``."""
