"""The platform's Content-Security-Policy: its pages run only the platform's own script files (no inline script, no
eval), are framed by nobody, and talk and post only to the platform (forms may end on a session origin: the login
form's redirect goes on to the ticket's). Session origins are not the platform's pages: the proxy leaves their
headers to the session."""

from django.conf import settings


def policy():
    session_origins = f"*.{settings.STUDIOS_SESSION_DOMAIN}:*"
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            # Django's admin and htmx's indicator styles set inline styles; styles cannot run code.
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data:",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
            f"form-action 'self' {session_origins}",
        ]
    )


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        response.setdefault("Content-Security-Policy", policy())
        return response
