"""SmartDialog's failures become meaningful answers: never a bare 500, a trace or a secret."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from sandbox.server import SandboxServer
from shared.actions import ActionRequest, handle
from shared.settings import get_settings
from shared.smartdialog import SmartDialogClient, StaticTokenAuth
from tests.actions.conftest import GROUP, App, call, wire

CONTACT = {"GroupService": GROUP, "Phone": "+358401234567"}


def problem_type(name: str) -> str:
    return f"urn:smartdialog-functions:problem:{name}"


def test_unknown_customer_is_404_with_upstreams_message(app: App) -> None:
    reply = call("GetCustomerWhatsappIdentities", method="GET", headers={"Customer-Id": "9999"})
    assert reply.status == 404
    assert reply.headers["Content-Type"] == "application/problem+json"
    assert reply.body["type"] == problem_type("not-found")
    assert "9999" in reply.body["detail"]


def test_unknown_contact_is_404(app: App) -> None:
    reply = call("GetGroupContact", method="GET", route=CONTACT)
    assert reply.status == 404
    assert "not found" in reply.body["detail"]


def test_forbidden_customer_is_a_403_naming_the_customer_not_a_retried_502(app: App) -> None:
    """A 502 made Power Automate repeat a refusal that will not change."""
    reply = call(
        "GetCustomerWhatsappIdentities", method="GET", headers={"Customer-Id": "forbidden"}
    )
    assert reply.status == 403
    assert reply.body["type"] == problem_type("upstream-forbidden")
    assert reply.fields == ["Customer-Id"]
    assert "403" in reply.body["detail"]


def test_refused_token_is_the_503_configuration_problem_naming_it_and_appears_nowhere(
    app: App, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Our configuration, as /api/health says it: not a 502 blaming SmartDialog."""
    wire(monkeypatch, app.sandbox, SMARTDIALOG_ACCESS_TOKEN="not-the-sandbox-token-7f3a")
    with caplog.at_level(logging.DEBUG):
        reply = call("GetUserCustomers", method="GET")
    assert reply.status == 503
    assert reply.body["type"] == problem_type("configuration")
    assert reply.fields == ["SMARTDIALOG_ACCESS_TOKEN"]
    assert [r["status"] for r in app.upstream()] == [401, 401]  # renewed once, then refused
    assert "not-the-sandbox-token-7f3a" not in reply.raw.decode()
    assert "not-the-sandbox-token-7f3a" not in caplog.text


def test_a_secret_the_identity_provider_refuses_is_the_503_naming_it(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    wire(
        monkeypatch,
        app.sandbox,
        SMARTDIALOG_ACCESS_TOKEN="",
        SMARTDIALOG_CLIENT_ID="sandbox-client",
        SMARTDIALOG_CLIENT_SECRET="not-the-secret",
        SMARTDIALOG_AUTHORITY=app.sandbox.authority,
    )
    reply = call("GetPhoneNumberRegions", method="GET")
    assert reply.status == 503, reply.body
    assert reply.fields == ["SMARTDIALOG_CLIENT_SECRET"]
    assert [r for r in app.upstream() if r.get("operationId")] == []  # no API call


def test_an_expired_refresh_token_is_the_503_naming_it_and_health_does_not_see_it(
    storage_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What docs/deploy.md says of a configured refresh token past its lifetime (B2C: 14 days by
    default): the actions answer 503 naming SMARTDIALOG_REFRESH_TOKEN; /api/health, which never
    calls the identity provider, does not name it."""
    import time

    from shared.health import configuration_problem

    with SandboxServer(refresh_token_ttl=60) as sandbox:
        wire(
            monkeypatch,
            sandbox,
            SMARTDIALOG_ACCESS_TOKEN="",
            SMARTDIALOG_CLIENT_ID="sandbox-client",
            SMARTDIALOG_REFRESH_TOKEN="sandbox-refresh-token",
            SMARTDIALOG_AUTHORITY=sandbox.authority,
        )
        sandbox.app.tokens.clock = lambda: time.time() + 120  # past the token's 60 s
        reply = call("GetPhoneNumberRegions", method="GET")
        assert reply.status == 503, reply.body
        assert reply.fields == ["SMARTDIALOG_REFRESH_TOKEN"]
        health = configuration_problem()  # what else it names depends on the test's settings
        assert "SMARTDIALOG_REFRESH_TOKEN" not in [
            e.field for e in (health.errors if health else ())
        ]


def test_a_named_connections_refused_token_names_its_own_setting(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = "SMARTDIALOG_CONNECTIONS__OTHER__"
    monkeypatch.setenv(prefix + "ACCESS_TOKEN", "not-the-sandbox-token")
    monkeypatch.setenv(prefix + "CUSTOMERS", "2002")
    reply = call("GetCustomerWhatsappIdentities", method="GET", headers={"Customer-Id": "2002"})
    assert reply.status == 503, reply.body
    assert reply.fields == [prefix + "ACCESS_TOKEN"]


@pytest.mark.parametrize(
    "credentials",
    [
        {"SMARTDIALOG_ACCESS_TOKEN": ""},
        {"SMARTDIALOG_ACCESS_TOKEN": "", "SMARTDIALOG_REFRESH_TOKEN": "r"},
    ],
    ids=["none", "refresh-token-without-client-id"],
)
def test_no_credentials_at_all_is_the_503_configuration_problem_naming_the_setting(
    app: App, monkeypatch: pytest.MonkeyPatch, credentials: dict[str, str]
) -> None:
    wire(monkeypatch, app.sandbox, **credentials)
    reply = call("GetPhoneNumberRegions", method="GET")
    assert reply.status == 503, reply.body
    assert reply.body["type"] == problem_type("configuration")
    assert [e["field"] for e in reply.body["errors"]] == ["SMARTDIALOG_ACCESS_TOKEN"]
    assert app.upstream() == []


def test_upstream_400_becomes_422_with_upstreams_message(app: App) -> None:
    body = {
        "DisplayName": "Hello",
        "RawContent": "Hi",
        "Category": "GOSSIP",
        "Language": "en",
    }
    reply = call(
        "CreateWhatsappTemplate",
        method="POST",
        route={"IdentityNumber": "+358501234567"},
        body=body,
    )
    assert reply.status == 422
    assert reply.body["type"] == problem_type("upstream-rejected")
    assert reply.body["detail"] == "Unknown template Category 'GOSSIP'"


def test_duplicate_contact_is_422(app: App) -> None:
    route = {"GroupService": GROUP}
    assert (
        call("CreateGroupContact", method="POST", route=route, body={"phone": "0401234567"}).status
        == 200
    )
    again = call("CreateGroupContact", method="POST", route=route, body={"phone": "+358401234567"})
    assert again.status == 422
    assert "already exists" in again.body["detail"]


def test_upstream_429_is_429_with_retry_after(
    storage_env: str,
    sandbox_factory: Callable[..., SandboxServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = sandbox_factory(quota_calls=1, quota_period=30.0)
    # Our own quota is generous here, so it is SmartDialog that says no.
    wire(monkeypatch, server)
    assert call("GetPhoneNumberRegions", method="GET").status == 200
    reply = call("GetPhoneNumberRegions", method="GET")
    assert reply.status == 429
    assert reply.body["type"] == problem_type("rate-limited")
    assert 1 <= int(reply.headers["Retry-After"]) <= 30


def test_exhausted_quota_is_429_with_retry_after_and_nothing_sent(
    storage_env: str,
    sandbox_factory: Callable[..., SandboxServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = sandbox_factory()  # its own URL: a quota log of its own
    wire(monkeypatch, server, SMARTDIALOG_QUOTA_CALLS="2", SMARTDIALOG_QUOTA_PERIOD_SECONDS="60")
    assert call("GetPhoneNumberRegions", method="GET").status == 200
    assert call("GetWhatsappTemplateCategories", method="GET").status == 200
    reply = call("GetUserCustomers", method="GET")
    assert reply.status == 429
    assert reply.headers["Content-Type"] == "application/problem+json"
    assert 55 <= int(reply.headers["Retry-After"]) <= 61
    assert "2 calls per 60 s" in reply.body["detail"]
    assert len(server.state.snapshot("requests")) == 2


def test_a_missing_quota_table_the_app_may_not_create_is_a_503_saying_so_and_logged(
    app: App,
    storage_env: str,
    unique_name: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its explanation reached nobody: the log said "quota: QuotaStoreError", the 503 "try again
    later" (and Retry-After) although only creating the table helps."""
    from azure.core.exceptions import HttpResponseError
    from azure.data.tables import TableClient

    from shared.actions import shared_client
    from shared.quota import _table

    table = TableClient.from_connection_string(storage_env, unique_name)  # never made

    def refused() -> None:  # Azure's answer to a role scoped to the tables' entities
        error = HttpResponseError(message="This request is not authorized to perform this.")
        error.status_code = 403
        raise error

    table.create_table = refused  # type: ignore[method-assign]
    monkeypatch.setattr(_table, "_quota_table", lambda settings, name: table)
    shared_client.cache_clear()
    with caplog.at_level(logging.WARNING, logger="smartdialog.actions"):
        reply = call("GetPhoneNumberRegions", method="GET")

    assert (reply.status, reply.body["type"]) == (503, problem_type("quota-unavailable"))
    assert f"quota table {unique_name} does not exist" in reply.body["detail"]
    assert "administrator" in reply.body["detail"]
    assert "Retry-After" not in reply.headers
    assert f"quota table {unique_name} does not exist" in caplog.text
    assert app.upstream() == []


def test_unreachable_smartdialog_is_502(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("SMARTDIALOG_BASE_URL", f"http://127.0.0.1:{port}/api-integrations/v1")
    from shared.actions import shared_client
    from shared.settings import reset_settings_cache

    reset_settings_cache()
    shared_client.cache_clear()
    reply = call("GetPhoneNumberRegions", method="GET")
    assert reply.status == 502
    assert reply.body["type"] == problem_type("upstream-unavailable")


def test_an_unreachable_identity_provider_is_502_not_500(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    wire(
        monkeypatch,
        app.sandbox,
        SMARTDIALOG_ACCESS_TOKEN="",
        SMARTDIALOG_CLIENT_ID="app-1",
        SMARTDIALOG_CLIENT_SECRET="s3cret-s3cret",
        SMARTDIALOG_AUTHORITY=f"https://127.0.0.1:{port}/tenant",
    )
    reply = call("GetPhoneNumberRegions", method="GET")
    assert reply.status == 502, reply.body
    assert reply.body["type"] == problem_type("upstream-unavailable")
    assert "SMARTDIALOG_AUTHORITY" in reply.body["detail"]
    assert reply.headers["Retry-After"] == "5"
    assert app.sandbox.state.snapshot("requests") == []


def test_a_throttling_identity_provider_is_502_with_retry_after_not_the_settings_503(
    app: App,
) -> None:
    """msal hands back the 429's OAuth error: it was "fix SMARTDIALOG_CLIENT_SECRET", a 503
    without Retry-After that told an administrator to change a secret that was fine."""
    from tests.client.test_auth import answering_idp, idp_auth

    def factory(_: object) -> SmartDialogClient:
        auth = idp_auth(answering_idp(429, "throttled"))
        return SmartDialogClient(app.sandbox.api_url, auth, max_retries=0)

    code, body, headers = run("GetUserCustomers", factory)
    assert code == 502
    assert body["type"] == problem_type("upstream-unavailable")
    assert "SMARTDIALOG_AUTHORITY" in str(body["detail"])
    assert headers["Retry-After"] == "5"


@pytest.mark.parametrize("error", ["invalid_resource", "access_denied", None])
def test_an_identity_provider_refusing_the_settings_is_the_503_not_a_502_try_again(
    app: App, error: str | None
) -> None:
    """A wrong SMARTDIALOG_SCOPES (Entra's invalid_resource, AADSTS500011) was a 502 "try
    again after 5 s" for ever: nothing told an administrator to fix a setting."""
    from tests.client.test_auth import answering_idp, idp_auth

    def factory(_: object) -> SmartDialogClient:
        auth = idp_auth(answering_idp(400, error, "AADSTS500011: resource principal not found"))
        return SmartDialogClient(app.sandbox.api_url, auth, max_retries=0)

    code, body, headers = run("GetUserCustomers", factory)
    assert code == 503
    assert body["type"] == problem_type("configuration")
    assert "Retry-After" not in headers


# Faults the sandbox cannot produce for these operations: a transport that fails on purpose.


@pytest.mark.parametrize("status", [200, 500])
def test_an_upstream_body_nested_past_the_parsers_depth_is_502(app: App, status: int) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    code, body, _ = run(
        "GetUserCustomers", mock_client(lambda r: httpx.Response(status, content=deep))
    )
    assert code == 502
    assert body["type"] == problem_type("upstream-unavailable")


def mock_client(
    handler: Callable[[httpx.Request], httpx.Response],
) -> Callable[..., SmartDialogClient]:
    def factory(_: object) -> SmartDialogClient:
        return SmartDialogClient(
            "https://smartdialog.invalid/api-integrations/v1",
            StaticTokenAuth("secret-token-abc"),
            http_client=httpx.Client(transport=httpx.MockTransport(handler)),
            max_retries=0,
        )

    return factory


def run(
    operation_id: str,
    factory: Callable[..., SmartDialogClient],
    *,
    method: str = "GET",
    route: dict[str, str] | None = None,
    body: bytes = b"",
) -> tuple[int, dict[str, object], dict[str, str]]:
    response = handle(
        operation_id,
        ActionRequest(method, route_params=route or {}, headers={"Customer-Id": "1001"}, body=body),
        settings=get_settings(),
        client_factory=factory,
    )
    return response.status, response.body, response.all_headers


def test_an_empty_answer_to_a_delete_is_its_success_not_a_502(app: App) -> None:
    """The contact was deleted: a 502 made the flow retry into a 404."""
    response = handle(
        "DeleteGroupContact",
        ActionRequest("DELETE", route_params=CONTACT, headers={"Customer-Id": "1001"}),
        settings=get_settings(),
        client_factory=mock_client(lambda r: httpx.Response(200)),
    )
    assert (response.status, response.body) == (200, True)


def test_null_lists_in_an_answer_read_as_empty(app: App) -> None:
    contact = {"phone": "+358401234567", "customContactProperties": None}
    response = handle(
        "GetGroupContact",
        ActionRequest("GET", route_params=CONTACT, headers={"Customer-Id": "1001"}),
        settings=get_settings(),
        client_factory=mock_client(lambda r: httpx.Response(200, json=contact)),
    )
    assert response.status == 200
    assert response.body["customContactProperties"] == []
    code, body, _ = run(
        "GetCustomerWhatsappIdentities", mock_client(lambda r: httpx.Response(200, json=None))
    )
    assert (code, body) == (200, [])
    no_customers = {"customerUsers": None}
    code, body, _ = run(
        "GetUserCustomers", mock_client(lambda r: httpx.Response(200, json=no_customers))
    )
    assert (code, body) == (200, {"customerUsers": []})


@pytest.mark.parametrize(("status", "answer"), [(500, 502), (502, 502), (503, 503)])
def test_upstream_5xx_is_502_or_its_503(app: App, status: int, answer: int) -> None:
    code, body, headers = run(
        "GetUserCustomers",
        mock_client(lambda r: httpx.Response(status, json={"errorMessage": "boom"})),
    )
    assert code == answer
    assert body["type"] == problem_type("upstream-unavailable")
    assert str(status) in str(body["detail"])
    assert "try again later" in str(body["detail"])  # a read: repeating it is harmless
    assert "Retry-After" not in headers  # no advice given: the caller's own policy decides


NEW_CONTACT = json.dumps({"phone": "+358401234567"}).encode()


@pytest.mark.parametrize("status", [500, 502, 503])
def test_a_create_answered_5xx_says_it_may_have_happened_not_try_again(
    app: App, status: int
) -> None:
    """SmartDialog may have made the contact before failing: "try again later" sent the flow
    (and Power Automate's own retry of a 5xx) into "already exists" or a second contact."""
    code, body, _ = run(
        "CreateGroupContact",
        mock_client(lambda r: httpx.Response(status, json={"errorMessage": "boom"})),
        method="POST",
        route={"GroupService": GROUP},
        body=NEW_CONTACT,
    )
    assert code == (503 if status == 503 else 502)
    assert body["type"] == problem_type("upstream-unavailable")
    assert "may or may not have taken effect" in str(body["detail"])
    assert "try again" not in str(body["detail"])


@pytest.mark.parametrize(
    ("operation", "method", "route", "body"),
    [
        ("GetUserCustomers", "GET", {}, b""),
        ("CreateGroupContact", "POST", {"GroupService": GROUP}, NEW_CONTACT),
    ],
)
def test_a_gateways_504_is_our_504_did_not_answer_in_time(
    app: App, operation: str, method: str, route: dict[str, str], body: bytes
) -> None:
    code, answer, _ = run(
        operation,
        mock_client(lambda r: httpx.Response(504, text="<html>Gateway Timeout</html>")),
        method=method,
        route=route,
        body=body,
    )
    assert code == 504
    assert answer["type"] == problem_type("upstream-timeout")
    assert "may or may not have taken effect" in str(answer["detail"])


UUID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"


@pytest.mark.parametrize(
    ("content", "contact_id"),
    [
        (json.dumps({"id": UUID}).encode(), UUID),
        (json.dumps({"contactId": UUID}).encode(), UUID),
        (b"12345", "12345"),
        (json.dumps(UUID).encode(), UUID),
        (b"null", ""),
        (b'""', ""),
        (b"", ""),
    ],
    ids=["object", "contactId", "number", "text", "null", "empty-text", "no-content"],
)
def test_a_done_creates_id_is_read_from_what_smartdialog_answered(
    app: App, content: bytes, contact_id: str
) -> None:
    """An id in an object or as a number was answered 200 "": a success with the id lost."""
    code, body, _ = run(
        "CreateGroupContact",
        mock_client(lambda r: httpx.Response(200, content=content)),
        method="POST",
        route={"GroupService": GROUP},
        body=NEW_CONTACT,
    )
    assert (code, body) == (200, contact_id)


@pytest.mark.parametrize(
    "content",
    [b"[1]", b"true", b"<html>Sign in</html>"],
    ids=["list", "boolean", "page"],
)
def test_a_done_creates_answer_without_an_id_is_a_502_saying_it_probably_happened(
    app: App, content: bytes
) -> None:
    """Not a success with no id (the flow went on with ""), nor "try again" (a second one)."""
    code, body, _ = run(
        "CreateGroupContact",
        mock_client(lambda r: httpx.Response(200, content=content)),
        method="POST",
        route={"GroupService": GROUP},
        body=NEW_CONTACT,
    )
    assert code == 502
    assert body["type"] == problem_type("upstream-unavailable")
    detail = str(body["detail"])
    assert "reported success (2xx) in an unexpected shape" in detail
    assert "probably took effect" in detail
    assert "Check before repeating" in detail


@pytest.mark.parametrize(
    ("operation_id", "method", "route", "body", "after"),
    [
        ("GetGroupContact", "GET", CONTACT, b"", ""),
        ("GetUserCustomers", "GET", None, b"", ""),
        ("CreateGroupContact", "POST", {"GroupService": GROUP}, NEW_CONTACT, "may or may not"),
    ],
    ids=["contact", "customers", "create"],
)
def test_a_2xx_carrying_an_error_is_a_502_quoting_it_never_an_empty_success(
    app: App,
    operation_id: str,
    method: str,
    route: dict[str, str] | None,
    body: bytes,
    after: str,
) -> None:
    """A proxy or gateway answering 200 with an error: the action answered 200 with an empty
    contact (or list of customers). A create so answered may or may not have been done."""
    said = {"errorMessage": "Contact not found", "phone": "+358401234567"}
    code, answer, _ = run(
        operation_id,
        mock_client(lambda r: httpx.Response(200, json=said)),
        method=method,
        route=route,
        body=body,
    )
    assert code == 502
    assert answer["type"] == problem_type("upstream-unavailable")
    detail = str(answer["detail"])
    assert "SmartDialog answered 2xx with an error: Contact not found" in detail
    assert after in detail
    assert "probably took effect" not in detail


@pytest.mark.parametrize(
    ("said", "quoted"),
    [
        ({"Error": "Contact not found"}, "Contact not found"),
        ({"error": {"code": "NotFound", "message": "Contact not found"}}, "Contact not found"),
        ({"error": True}, "true"),
        ({"error": {"code": "NotFound"}}, '{"code": "NotFound"}'),
    ],
    ids=["Error", "gateway-object", "flag", "object-without-message"],
)
def test_a_2xx_error_of_any_shape_is_quoted_not_its_reason_phrase(
    app: App, said: dict[str, Any], quoted: str
) -> None:
    """Only text in errorMessage/message/error was quoted: ``Error``, a gateway's
    ``{"error": {"message": ...}}`` and ``{"error": true}`` were quoted as "OK"."""
    code, answer, _ = run(
        "GetGroupContact",
        mock_client(lambda r: httpx.Response(200, json=said)),
        method="GET",
        route={"GroupService": GROUP, "Phone": "+358401234567"},
    )
    assert code == 502
    assert f"SmartDialog answered 2xx with an error: {quoted}" in str(answer["detail"])


@pytest.mark.parametrize(
    ("status", "said", "expected"),
    [
        (400, {"Error": "Contact not found"}, 422),
        (404, {"error": {"code": "NotFound", "message": "Contact not found"}}, 404),
        (409, {"error": {"Message": "Contact not found"}}, 409),
    ],
    ids=["Error", "gateway-object", "gateway-Message"],
)
def test_a_4xx_error_of_any_shape_is_quoted_not_its_reason_phrase(
    app: App, status: int, said: dict[str, Any], expected: int
) -> None:
    """The shapes a 2xx's error is read in: a 4xx in them was quoted as its reason phrase
    ("Bad Request"), the reason lost (found in review: the 2xx reading was fixed alone)."""
    code, answer, _ = run(
        "GetGroupContact",
        mock_client(lambda r: httpx.Response(status, json=said)),
        method="GET",
        route={"GroupService": GROUP, "Phone": "+358401234567"},
    )
    assert code == expected
    assert "Contact not found" in str(answer["detail"])


@pytest.mark.parametrize("status", [502, 503])
def test_upstream_retry_after_on_a_5xx_is_passed_on(app: App, status: int) -> None:
    """SmartDialog said when to come back: the caller waits as told, not at its own pace."""
    advice = {"Retry-After": "30"}
    code, body, headers = run(
        "DeleteAllGroupContacts",
        mock_client(lambda r: httpx.Response(status, headers=advice)),
        method="DELETE",
        route={"GroupService": GROUP},
    )
    assert (code, headers["Retry-After"]) == (status, "30")
    assert "Retry-After" in str(body["detail"])


@pytest.mark.parametrize(("status", "answer"), [(400, 422), (404, 404), (409, 409), (403, 403)])
def test_a_secret_upstream_quotes_is_cut_from_the_detail_and_the_log(
    app: App, caplog: pytest.LogCaptureFixture, status: int, answer: int
) -> None:
    """SmartDialog's message went into the detail as is: a DLR URL it quoted carried its token."""
    said = "bad DlrUrl https://app.test/api/dlr/m-1?token=tok-SECRET&code=key-SECRET"
    with caplog.at_level(logging.DEBUG):
        code, body, _ = run(
            "GetCustomerWhatsappIdentities",
            mock_client(lambda r: httpx.Response(status, json={"errorMessage": said})),
        )
    assert code == answer
    assert "https://app.test/api/dlr/m-1?token=***&code=***" in str(body["detail"])
    for secret in ("tok-SECRET", "key-SECRET"):
        assert secret not in str(body)
        assert secret not in caplog.text


def test_upstreams_refusal_is_verbatim_in_the_detail_but_escaped_and_bounded_in_the_log(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    """The action's log line quoted SmartDialog's refusal raw: a value it echoes (here the
    caller's Category) forged a log line with its line break, and its length was unbounded."""
    forged = "UTILITY\nERROR forged: everything failed +358401234567 " + "x" * 5_000
    body = {"DisplayName": "Order shipped", "RawContent": "Your order {{1}} is on its way.",
            "Category": forged, "Language": "EN"}  # fmt: skip
    with caplog.at_level(logging.INFO, logger="smartdialog.actions"):
        reply = call("CreateWhatsappTemplate", method="POST",
                     route={"IdentityNumber": "050 1234567"}, body=body)  # fmt: skip
    assert reply.status == 422, reply.body
    assert forged in reply.body["detail"]  # the caller's own: verbatim (docs/actions.md)
    [line] = [r.getMessage() for r in caplog.records if "answered 422" in r.getMessage()]
    assert "UTILITY\\x0aERROR forged" in line
    assert "\n" not in line
    assert "+358401234567" not in line
    assert len(line) < 1_500


def test_upstream_timeout_is_504(app: App) -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    code, body, _ = run("GetUserCustomers", mock_client(slow))
    assert code == 504
    assert body["type"] == problem_type("upstream-timeout")


def test_upstream_429_without_advice_still_answers_retry_after(app: App) -> None:
    code, _, headers = run("GetUserCustomers", mock_client(lambda r: httpx.Response(429)))
    assert code == 429
    assert int(headers["Retry-After"]) >= 1


def test_unexpected_upstream_body_is_502(app: App) -> None:
    code, body, _ = run(
        "GetPhoneNumberRegions", mock_client(lambda r: httpx.Response(200, json={"a": 1}))
    )
    assert code == 502
    assert body["type"] == problem_type("upstream-unavailable")
    assert "probably took effect" not in str(body["detail"])  # a read: nothing happened


def test_a_bug_is_a_500_problem_without_trace_or_secret(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(_: object) -> SmartDialogClient:
        raise RuntimeError("Bearer secret-token-abc for +358401234567")

    with caplog.at_level(logging.INFO):
        code, body, headers = run("GetUserCustomers", broken)
    assert code == 500
    assert headers["Content-Type"] == "application/problem+json"
    assert body["type"] == problem_type("internal")
    assert "secret" not in str(body)
    assert "Traceback" not in str(body)
    assert "RuntimeError" in caplog.text  # the log keeps the cause ...
    assert "secret-token-abc" not in caplog.text  # ... without the secret
    assert "+358401234567" not in caplog.text  # ... or the whole number


def test_logs_carry_the_operation_id_and_no_whole_phone_number(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        call(
            "CreateGroupContact",
            method="POST",
            route={"GroupService": GROUP},
            body={"phone": "0401234567"},
        )
        call("GetGroupContact", method="GET", route={"GroupService": GROUP, "Phone": "0409999999"})
    records = [r for r in caplog.records if r.name == "smartdialog.actions"]
    assert [getattr(r, "operationId", None) for r in records] == [
        "CreateGroupContact",
        "GetGroupContact",
    ]
    assert [getattr(r, "status", None) for r in records] == [200, 404]
    for number in ("401234567", "409999999"):
        assert number not in caplog.text


@pytest.mark.parametrize("status", [410, 413, 415, 422])
def test_another_upstream_refusal_is_422_with_upstreams_message_not_a_retryable_502(
    app: App, status: int
) -> None:
    """A 5xx tells Power Automate to retry; a refusal that will not change must not."""
    code, body, _ = run(
        "GetUserCustomers",
        mock_client(lambda r: httpx.Response(status, json={"errorMessage": "bad thing"})),
    )
    assert code == 422
    assert body["type"] == problem_type("upstream-rejected")
    assert body["detail"] == "bad thing"


def test_a_plain_text_refusal_on_several_lines_is_the_422_detail(app: App) -> None:
    """It was "SmartDialog answered 400 with a non-JSON page": the caller lost the reason."""
    said = "Sender ACME is not allowed for this service.\nContact support with id 7f3a."
    plain = {"Content-Type": "text/plain"}
    answer = mock_client(lambda r: httpx.Response(400, text=said, headers=plain))
    code, body, _ = run("GetUserCustomers", answer)
    assert (code, body["detail"]) == (422, said)


def test_upstream_408_is_504(app: App) -> None:
    code, body, _ = run("GetUserCustomers", mock_client(lambda r: httpx.Response(408)))
    assert code == 504
    assert body["type"] == problem_type("upstream-timeout")


@pytest.mark.parametrize("advice", ["99999999999999999999999", "Fri, 31 Dec 9999 23:59:59 GMT"])
def test_upstream_retry_after_is_passed_on_at_most_an_hour(app: App, advice: str) -> None:
    code, _, headers = run(
        "GetUserCustomers",
        mock_client(lambda r: httpx.Response(429, headers={"Retry-After": advice})),
    )
    assert code == 429
    assert headers["Retry-After"] == "3600"


def test_a_create_whose_answer_is_lost_says_it_may_have_happened_not_try_again(app: App) -> None:
    """SmartDialog creates the template, then the connection breaks before its answer: "could
    not be reached; try again later" sent the flow into an "already exists" refusal."""
    from sandbox.faults import FaultKind, FaultPlan

    body = {
        "DisplayName": "Lost answer",
        "RawContent": "Hi",
        "Category": "UTILITY",
        "Language": "en",
    }
    route = {"IdentityNumber": "050 1234567"}
    app.sandbox.app.faults.configure(FaultPlan(rate=1.0, kinds=(FaultKind.LOST_ANSWER,)))
    try:
        reply = call("CreateWhatsappTemplate", method="POST", route=route, body=body)
    finally:
        app.sandbox.app.faults.configure(FaultPlan())
    assert reply.status == 502
    assert "may or may not have taken effect" in reply.body["detail"]
    again = call("CreateWhatsappTemplate", method="POST", route=route, body=body)
    assert again.status == 422  # it had: the template exists
    assert "already exists" in again.body["detail"]


@pytest.mark.parametrize(
    ("operation", "status", "answer", "kind"),
    [
        ("GetGroupContact", 404, 404, "not-found"),
        ("GetGroupContact", 429, 429, "rate-limited"),
        ("CreateGroupContact", 400, 422, "upstream-rejected"),
        ("CreateGroupContact", 429, 429, "rate-limited"),
    ],
)
def test_an_answer_whose_body_does_not_decode_is_answered_by_its_status(
    app: App, monkeypatch: pytest.MonkeyPatch, operation: str, status: int, answer: int, kind: str
) -> None:
    """A Content-Encoding body that does not decode was a 502 "the connection broke before its
    answer; the request may or may not have taken effect": the 404, the 429 and its Retry-After
    were lost, and a certain refusal read as maybe done."""
    from tests.guard.servers import raw_server, undecodable

    with raw_server(undecodable(status)) as server:
        wire(monkeypatch, app.sandbox, SMARTDIALOG_BASE_URL=server.url)
        get = operation.startswith("Get")
        reply = call(
            operation,
            method="GET" if get else "POST",
            route=CONTACT if get else {"GroupService": GROUP},
            body=None if get else {"phone": "+358401234567"},
        )
    assert reply.status == answer, reply.body
    assert reply.body["type"] == problem_type(kind)
    assert "may or may not" not in reply.body["detail"]
    if status == 429:
        assert reply.headers["Retry-After"] == "7"


def test_an_answer_trickling_in_is_a_504_at_the_actions_deadline(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each read had its own 30 s: an answer of a byte every 2 s held GetUserCustomers for
    minutes, past Azure's 230 s, and the flow got the platform's bare 5xx, not our 504."""
    import time

    from shared.actions import _pipeline
    from tests.guard.servers import RawServer, raw_server

    def trickle(conn: socket.socket, server: RawServer) -> None:  # 10 s, each byte in 0.1 s
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        for _ in range(100):
            time.sleep(0.1)
            conn.sendall(b" ")

    monkeypatch.setattr(_pipeline, "SYNC_DEADLINE_SECONDS", 1.0)
    with raw_server(trickle) as server:
        wire(monkeypatch, app.sandbox, SMARTDIALOG_BASE_URL=server.url)
        started = time.monotonic()
        reply = call("GetUserCustomers", method="GET")
        took = time.monotonic() - started
    assert reply.status == 504, reply.body
    assert reply.body["type"] == problem_type("upstream-timeout")
    assert took < 6.0  # cut at the deadline (1 s, plus the quota's and the action's own work)


def test_the_actions_deadline_covers_all_its_calls_not_each(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GetCustomerServices for three service types makes three calls, and each had its own
    deadline: three answers of 0.6 s each against a 1 s deadline answered 200 after ~2 s (at
    120 s, 360 s: past Azure's 230 s and its bare 5xx)."""
    import time

    from shared.actions import _pipeline
    from tests.guard.servers import RawServer, raw_server

    def slow(conn: socket.socket, server: RawServer) -> None:  # a whole answer, after 0.6 s
        time.sleep(0.6)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\nContent-Length: 2\r\n\r\n[]")  # fmt: skip

    monkeypatch.setattr(_pipeline, "SYNC_DEADLINE_SECONDS", 1.0)
    with raw_server(slow) as server:
        wire(monkeypatch, app.sandbox, SMARTDIALOG_BASE_URL=server.url)
        reply = call("GetCustomerServices", method="GET",
                     params={"ServiceType": "OneWay,TwoWay,Group"})  # fmt: skip
        asked = len(server.requests)
    assert reply.status == 504, reply.body
    assert asked < 3  # the third call had no time left: never made


@pytest.mark.parametrize(
    "answer",
    [
        b'{"customerUsers": [{"\\udc00x": "y"}]}',  # a key
        b'{"x": {"\\udc00": 1}}',  # in a field not read
        b'{"customerUsers": [{"customerId": "1001", "name": "Caf\\ud83d"}]}',  # a value
    ],
    ids=["key", "extra-field", "value"],
)
def test_a_lone_surrogate_in_an_answer_reads_as_a_replacement_character_not_a_500(
    app: App, monkeypatch: pytest.MonkeyPatch, answer: bytes
) -> None:
    """Valid JSON (an upstream cutting a text between an emoji's halves writes it), but no text
    holding one can be encoded: the answer's serialization raised (a bare 500), or its check
    did (a 502 for an answer that was fine but for one character)."""
    import shared.actions._pipeline as pipeline

    odd = mock_client(lambda r: httpx.Response(200, content=answer))
    monkeypatch.setattr(pipeline, "shared_client", odd)

    reply = call("GetUserCustomers", method="GET")

    assert reply.status == 200, reply.body
    if b"Caf" in answer:
        assert reply.body["customerUsers"][0]["name"] == "Caf\ufffd"


def test_an_answer_longer_than_the_most_read_is_not_read_on_and_is_502(app: App) -> None:
    """It was read whole: a 100 MB answer took 3 GB of the worker's memory (a compressed one
    of 400 KiB on the wire, 840 MB), enough to kill every invocation in flight."""
    pulled: list[int] = []

    def endless() -> Any:
        for _ in range(64):  # 64 MiB in all, were it read
            pulled.append(1)
            yield b" " * 1024 * 1024

    code, body, _ = run(
        "GetUserCustomers", mock_client(lambda r: httpx.Response(200, content=endless()))
    )

    assert code == 502
    assert body["type"] == problem_type("upstream-unavailable")
    assert len(pulled) <= 9  # stopped past the most read, 8 MiB
