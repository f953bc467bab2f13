"""JupyterLab's identity provider inside a session: it trusts only the platform's proxy.

The proxy adds the session token and the platform user's name to every request it forwards.
Jupyter's own token is left empty, so nothing it sends to the browser (page config, login
cookies) carries a credential for the session. The token is taken out of the environment
when Jupyter loads this class, so kernels and terminals started later do not inherit it.
"""

import hmac
import os

from jupyter_server.auth.identity import IdentityProvider, User
from traitlets import default

TOKEN_HEADER = "X-Studios-Session-Token"
USER_HEADER = "X-Studios-User"
SESSION_TOKEN = os.environ.pop("STUDIOS_SESSION_TOKEN", "")


class PlatformIdentityProvider(IdentityProvider):
    @default("token")
    def _token_default(self):
        return ""

    @property
    def auth_enabled(self):
        return True

    @property
    def login_available(self):
        return False

    def get_user(self, handler):
        supplied = handler.request.headers.get(TOKEN_HEADER, "")
        if not SESSION_TOKEN or not hmac.compare_digest(supplied.encode(), SESSION_TOKEN.encode()):
            return None
        username = handler.request.headers.get(USER_HEADER, "") or "anonymous"
        return User(username=username, name=username, display_name=username)
