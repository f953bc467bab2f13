"""Every refusal as JSON: a stable ``code`` a script can branch on and the sentence the pages show (``detail``)."""

from django.core.exceptions import ValidationError
from django.http import Http404
from rest_framework import status
from rest_framework.exceptions import APIException
from rest_framework.response import Response
from rest_framework.views import exception_handler

from studios.exceptions import DATABASE_OUTAGE, DATABASE_OUTAGES, ActionRefused, RoleTooLow


class InvalidInput(APIException):
    """Input the forms refused: ``errors`` maps each request field ("" for the request as a whole) to sentences."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "invalid"

    def __init__(self, errors):
        self.errors = errors
        super().__init__(" ".join(sentence for sentences in errors.values() for sentence in sentences))


def refusal(status_code, code, detail, **extra):
    return Response({"code": code, "detail": detail, **extra}, status=status_code)


def handle_exception(exc, context):
    """REST framework's exception handler, for the platform's own refusals first."""
    if isinstance(exc, RoleTooLow):
        return refusal(status.HTTP_403_FORBIDDEN, "role_required", str(exc))
    if isinstance(exc, Http404):
        return refusal(status.HTTP_404_NOT_FOUND, "not_found", f"{str(exc) or 'Not found'}.")
    if isinstance(exc, ActionRefused):
        return refusal(status.HTTP_409_CONFLICT, "refused", str(exc))
    if isinstance(exc, ValidationError):
        return refusal(status.HTTP_400_BAD_REQUEST, "invalid", " ".join(exc.messages), errors={"": exc.messages})
    if isinstance(exc, DATABASE_OUTAGES):
        return refusal(status.HTTP_503_SERVICE_UNAVAILABLE, "unavailable", DATABASE_OUTAGE)
    response = exception_handler(exc, context)  # the framework's own: authentication, parsing, methods
    if response is None or not isinstance(exc, APIException):
        return response
    codes = exc.get_codes()
    response.data = {
        "code": codes if isinstance(codes, str) else exc.default_code,
        "detail": str(exc.detail) if isinstance(exc.detail, str) else exc.default_detail,
    }
    if isinstance(exc, InvalidInput):
        response.data["errors"] = exc.errors
    return response
