"""Small builders shared by the sandbox tests."""

from __future__ import annotations

import ssl
from typing import Any

import httpx

from sandbox.contract import validate_response
from sandbox.server import SandboxServer

CUSTOMER = "1001"
ONEWAY = "s-1001-oneway"
REPLY = "s-1001-reply"
TWOWAY = "s-1001-twoway"
GROUP = "s-1001-group"
IDENTITY = "+358501234567"
SEND_HEADERS = {"Customer-Id": CUSTOMER, "Service-Id": ONEWAY}
DELIVERED = "+358400000001"
REJECTED = "+358400000002"
UNDELIVERABLE = "+358400000003"
TEMPORARY = "+358400000004"
THROTTLED = "+358400000005"
ERROR = "+358400000006"
SLOW = "+358400000007"


# Building an SSL context costs tens of milliseconds; share one instead of one per client.
SSL_CONTEXT = ssl.create_default_context()
http = httpx.Client(verify=SSL_CONTEXT, timeout=10)
"""A plain shared client for the control API and the OAuth endpoints."""


def client(server: SandboxServer, token: str | None = None) -> httpx.Client:
    """An httpx client on the API base URL, authenticated with ``token`` (default: the static
    token).
    """
    return httpx.Client(
        base_url=server.api_url,
        headers={"Authorization": f"Bearer {token or server.token}"},
        timeout=10,
        verify=SSL_CONTEXT,
    )


def sms(*addresses: str, content: str = "Hello", **extra: Any) -> dict[str, Any]:
    """A SendMessage body to ``addresses``."""
    return {
        "Sender": "Sandbox",
        "Protocol": "SMS",
        "Content": content,
        "Recipients": [{"Address": a} for a in addresses],
        **extra,
    }


def template_message(*addresses: str, **extra: Any) -> dict[str, Any]:
    """A SendWhatsappTemplateMessage body using the seed's "welcome" template."""
    return {
        "TemplateName": "welcome",
        "Recipients": [{"Address": a} for a in addresses],
        "BodyParameters": ["Ada"],
        **extra,
    }


def assert_matches_contract(operation_id: str, response: httpx.Response) -> Any:
    """The response's JSON after checking it against the documented response schema."""
    body = response.json() if response.content else None
    assert validate_response(operation_id, response.status_code, body) == []
    return body
