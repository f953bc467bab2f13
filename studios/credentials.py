"""Cloud credentials at rest: encrypted with Fernet under a key from the environment.

The key is ``STUDIOS_SECRETS_KEY`` (``python -c "from cryptography.fernet import Fernet;
print(Fernet.generate_key().decode())"``). Without it, a key derived from ``SECRET_KEY`` is used,
so that the embedded default works with nothing set; then rotating ``SECRET_KEY`` makes the
stored credentials unreadable and an admin enters them again.
"""

import base64
import hashlib
import json

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings


class UnreadableCredentials(Exception):
    """The stored credentials were encrypted under another key."""


def _fernet():
    derived = hashlib.sha256(f"studios-credentials:{settings.SECRET_KEY}".encode()).digest()
    return Fernet(settings.STUDIOS_SECRETS_KEY or base64.urlsafe_b64encode(derived))


def seal(credentials: dict) -> str:
    return _fernet().encrypt(json.dumps(credentials).encode()).decode()


def unseal(sealed: str) -> dict:
    try:
        return json.loads(_fernet().decrypt(sealed.encode()))
    except InvalidToken:
        raise UnreadableCredentials(
            "The stored credentials cannot be decrypted with this platform's STUDIOS_SECRETS_KEY; "
            "an admin must enter them again."
        ) from None
