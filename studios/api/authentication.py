"""Personal access tokens as a REST framework authentication class: ``Authorization: Bearer stu_…``."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed

from studios import tokens


class AccessTokenAuthentication(BaseAuthentication):
    """The request acts as the token's user, with that user's roles; a refused token is answered 401 at once."""

    def authenticate(self, request):
        scheme, _, secret = get_authorization_header(request).decode(errors="replace").partition(" ")
        if scheme.lower() != "bearer":
            return None
        secret = secret.strip()
        if not secret:
            raise AuthenticationFailed("Send the access token after Bearer: Authorization: Bearer stu_…")
        try:
            return tokens.authenticate(secret)
        except tokens.TokenRefused as refusal:
            raise AuthenticationFailed(str(refusal)) from None

    def authenticate_header(self, request):
        return 'Bearer realm="studios"'


class AccessTokenScheme(OpenApiAuthenticationExtension):
    """How the schema describes the tokens."""

    target_class = AccessTokenAuthentication
    name = "accessToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A personal access token (stu_…), made on your Access tokens page.",
        }
