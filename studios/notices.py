"""What the platform tells the members working in a session, on the session's own pages (``supervisor.notices``): who
stopped it and why, as it stops; that it will be stopped soon, with the way to keep it. Words for pages the session
serves: nothing secret, nothing of the host; a link to the studio's page, where members act with their own rights.
"""

from django.conf import settings
from django.utils import timezone

from . import origins
from .models import Event, StopReason


def studio_page(studio):
    """The studio's page on the platform, as browsers reach it."""
    platform = origins.platform_url(origins.session_origin(studio.pk, settings.STUDIOS_PLATFORM_URL))
    return platform + studio.get_absolute_url()


def stop_notice(studio):
    """Who stopped the studio's session, or why the platform did (``lifecycle.stop_studio``)."""
    stop = Event.objects.filter(session=studio.session_id, kind=Event.Kind.STOPPED).select_related("actor").first()
    if stop is not None and stop.actor is not None:
        message = f"{studio.name} was stopped by {stop.actor.get_full_name() or stop.actor.get_username()}."
    elif studio.session.stop_reason:
        message = f"{studio.name} was stopped: {studio.session.stop_reason}"
    else:
        message = f"{studio.name} was stopped."
    return {"message": message, "link": studio_page(studio)}


def warning_notice(studio):
    """The studio's automatic stop ahead (``Studio.next_stop``), short enough for a JupyterLab notification (140
    characters show); its link leads to the page where members keep the studio running. Reads ``studio.session``."""
    when, _why, reason = studio.next_stop
    at = f"{timezone.localtime(when):%H:%M %Z}"
    if reason == StopReason.LIFESPAN:
        why = f"its lifespan of {studio.session.lifespan_hours} h runs out"
    else:
        why = "nobody has used it for a while"
    return {"message": f"{studio.name} will be stopped at {at}: {why}.", "link": studio_page(studio)}
