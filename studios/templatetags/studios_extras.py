import colorsys
import hashlib
import re

from django import template
from django.utils import timezone

from studios import origins, permissions

register = template.Library()


@register.filter
def actions_for(studio, role):
    """``{% with actions=studio|actions_for:role %}``: what the pages offer (``permissions.studio_actions``)."""
    return permissions.studio_actions(role, studio)


@register.simple_tag(takes_context=True)
def session_url(context, studio):
    """The address of ``studio``'s session origin, which Connect opens and Copy URL copies."""
    return origins.session_url(context["request"], studio)


@register.filter
def initials(user):
    """Two letters: of the first and last names, else of the username's parts (jane.doe: JD), else its first two."""
    if user.first_name and user.last_name:
        parts = [user.first_name, user.last_name]
    else:
        parts = [part for part in re.split(r"[._\-\s@]+", user.username) if part]
    letters = "".join(part[0] for part in parts[:2]) if len(parts) > 1 else user.username[:2]
    return letters.upper()


def _luminance(rgb):
    """Relative luminance (WCAG 2.2) of an sRGB colour with channels in 0..1."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast_with_white(rgb):
    return 1.05 / (_luminance(rgb) + 0.05)


@register.filter
def avatar_colour(username):
    """A background for white initials, derived from the username: a hue of its own, dark enough for 4.5:1.

    The initials carry their own background, so they read the same in light and dark themes.
    """
    digest = hashlib.sha256(username.encode()).digest()
    hue = int.from_bytes(digest[:2], "big") % 360 / 360
    saturation = 0.55 + digest[2] % 4 * 0.1
    lightness = 0.5
    while contrast_with_white(rgb := colorsys.hls_to_rgb(hue, lightness, saturation)) < 4.5:
        lightness -= 0.02
    return "#" + "".join(f"{round(c * 255):02x}" for c in rgb)


@register.filter
def elapsed(since):
    """m:ss since ``since``, as the status panel shows a start's or a stop's progress (studios.js keeps it
    ticking)."""
    seconds = max(0, int((timezone.now() - since).total_seconds()))
    return f"{seconds // 60}:{seconds % 60:02d}"


@register.filter
def role_summary(role):
    """What ``role`` may do, in words (``permissions.ROLE_SUMMARIES``)."""
    return permissions.ROLE_SUMMARIES.get(role, "")


@register.filter
def lasted(value):
    """A duration (a timedelta or seconds) as people say it: 42 s, 3 min 5 s, 2 h 10 min."""
    seconds = round(value.total_seconds() if hasattr(value, "total_seconds") else float(value))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s" if seconds else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"
