"""Helpers for the API's tests: a client that sends a user's personal access token."""

import json

from django.test import Client

from studios import tokens


class TokenClient:
    """Requests to /api/v1/ with ``Authorization: Bearer <secret>`` (no secret: anonymous), JSON bodies."""

    def __init__(self, secret=None):
        self.client = Client()
        self.headers = {"Authorization": f"Bearer {secret}"} if secret else {}

    def request(self, method, path, body=None):
        data = json.dumps(body) if body is not None else None
        return self.client.generic(
            method,
            path,
            data or "",
            content_type="application/json",
            headers={**self.headers, "Accept": "application/json"},
        )

    def get(self, path):
        return self.request("GET", path)

    def post(self, path, body=None):
        return self.request("POST", path, body)

    def patch(self, path, body):
        return self.request("PATCH", path, body)

    def delete(self, path):
        return self.request("DELETE", path)


def token_client(user):
    return TokenClient(tokens.issue_token(user, "tests")[1])
