"""HTTP triggers through the dev host: routing, methods, request and response mapping, errors."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator

import azure.functions as func
import httpx
import pytest

from devhost import DevHost
from tests.devhost.conftest import host_options

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.function_name("GroupContact")
@app.route(route="groups/{customer}/{service}/contacts/{phone?}", methods=["GET", "PUT"])
def group_contact(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(
            {
                "method": req.method,
                "route": dict(req.route_params),
                "params": dict(req.params),
                "body": req.get_body().decode(),
                "trace": req.headers.get("x-trace"),
                "url": req.url,
            }
        ),
        mimetype="application/json",
    )


@app.function_name("Item")
@app.route(route="items/{id:int}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def item(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(f"item {req.route_params['id']}")


@app.function_name("Accepted")
@app.route(route="sends", methods=["POST"])
def accepted(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(
        "queued",
        status_code=202,
        headers={"Location": "http://example.test/status/1", "Retry-After": "2"},
        mimetype="text/plain",
        charset="iso-8859-1",
    )


@app.function_name("Cookies")
@app.route(route="cookies", methods=["GET"])
def cookies(req: func.HttpRequest) -> func.HttpResponse:
    response = func.HttpResponse(b"\x00\x01", mimetype="application/octet-stream")
    response.headers.add("Set-Cookie", "a=1")
    response.headers.add("Set-Cookie", "b=2")
    return response


@app.function_name("Boom")
@app.route(route="boom", methods=["GET"])
def boom(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("secret detail from deep inside")


@app.function_name("AsyncEcho")
@app.route(route="async", methods=["POST"])
async def async_echo(req: func.HttpRequest) -> func.HttpResponse:
    await asyncio.sleep(0)
    return func.HttpResponse(req.get_body(), status_code=201)


@app.function_name("WithContext")
@app.route(route="context", methods=["GET"])
def with_context(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    return func.HttpResponse(f"{context.function_name} {context.invocation_id}")


@app.function_name("AnyMethod")
@app.route(route="any")
def any_method(req: func.HttpRequest) -> str:
    return f"got {req.method}"


@pytest.fixture(scope="module")
def host() -> Iterator[DevHost]:
    with DevHost(app, host_options(), port=0, queues=False) as running:
        yield running


@pytest.fixture
def client(host: DevHost) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=host.url, timeout=5) as http:
        yield http


def test_route_params_query_headers_and_body_reach_the_function(client: httpx.Client) -> None:
    response = client.put(
        "/api/groups/c1/s1/contacts/%2B358401234567?x=1&x=2&y=",
        content=b"hello",
        headers={"X-Trace": "t-1"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    seen = response.json()
    assert seen["method"] == "PUT"
    assert seen["route"] == {"customer": "c1", "service": "s1", "phone": "+358401234567"}
    assert seen["params"] == {"x": "1,2", "y": ""}
    assert seen["body"] == "hello"
    assert seen["trace"] == "t-1"
    assert seen["url"].startswith("http://127.0.0.1:")
    assert seen["url"].endswith("y=")


def test_optional_route_param_can_be_left_out(client: httpx.Client) -> None:
    assert client.get("/api/groups/c1/s1/contacts").json()["route"] == {
        "customer": "c1",
        "service": "s1",
    }


def test_constraint_mismatch_is_404(client: httpx.Client) -> None:
    assert client.get("/api/items/7").text == "item 7"
    assert client.get("/api/items/seven").status_code == 404


def test_undeclared_method_is_405_with_allow(client: httpx.Client) -> None:
    response = client.delete("/api/groups/c1/s1/contacts/1")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, PUT"


def test_unknown_route_is_404_problem(client: httpx.Client) -> None:
    response = client.get("/api/nothing/here")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert client.get("/elsewhere").status_code == 404


def test_status_headers_and_text_charset_come_back(client: httpx.Client) -> None:
    response = client.post("/api/sends", content=b"{}")
    assert response.status_code == 202
    assert response.headers["location"] == "http://example.test/status/1"
    assert response.headers["retry-after"] == "2"
    assert response.headers["content-type"] == "text/plain; charset=iso-8859-1"
    assert response.text == "queued"


def test_repeated_response_headers_are_all_sent(client: httpx.Client) -> None:
    response = client.get("/api/cookies")
    assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert response.content == b"\x00\x01"


def test_exception_gives_500_without_trace(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    response = client.get("/api/boom")
    assert response.status_code == 500
    assert "secret detail" not in response.text
    assert "Traceback" not in response.text
    invocation_id = response.json()["invocationId"]
    assert any(invocation_id in r.getMessage() and r.exc_info for r in caplog.records), (
        "the full trace belongs in the host log"
    )


def test_async_function_runs_on_the_event_loop(client: httpx.Client) -> None:
    response = client.post("/api/async", content=b"ping")
    assert (response.status_code, response.content) == (201, b"ping")


def test_context_parameter_gets_name_and_invocation_id(client: httpx.Client) -> None:
    name, invocation_id = client.get("/api/context").text.split()
    assert name == "WithContext"
    assert len(invocation_id) == 36


def test_route_without_methods_accepts_any_and_str_return_is_200(client: httpx.Client) -> None:
    assert client.patch("/api/any").text == "got PATCH"


def test_keep_alive_serves_many_requests_on_one_connection(host: DevHost) -> None:
    port = int(host.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        reader = conn.makefile("rb")
        for _ in range(3):
            conn.sendall(b"GET /api/items/1 HTTP/1.1\r\nHost: x\r\n\r\n")
            assert reader.readline().startswith(b"HTTP/1.1 200")
            length = 0
            while (line := reader.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            assert reader.read(length) == b"item 1"


def test_chunked_request_body_is_reassembled(host: DevHost) -> None:
    port = int(host.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(
            b"POST /api/async HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        data = b""
        while chunk := conn.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 201")
    assert data.endswith(b"\r\n\r\nabcde")


def test_describe_lists_methods_url_and_auth_level(host: DevHost) -> None:
    lines = "\n".join(host.describe())
    assert f"GroupContact: [GET,PUT] {host.url}/api/groups/{{customer}}" in lines
    assert "authLevel function" in lines
    assert "Item: [GET]" in lines
    assert "authLevel anonymous" in lines


def test_access_log_keeps_neither_keys_tokens_nor_whole_phone_numbers(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="devhost.http"):
        response = client.get(
            "/api/groups/1001/7/contacts/%2B358401234567",
            params={"code": "function-key-value", "token": "url-token-value"},
        )
    assert response.status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "devhost.http"]
    assert any("/api/groups/1001/7/contacts/" in line for line in lines)
    logged = "\n".join(lines)
    for secret in ("function-key-value", "url-token-value", "358401234567"):
        assert secret not in logged


@pytest.mark.parametrize(
    "number", ["%2B358%20%2040%20%20123%204567", "%2B358.40.123.4567", "040.123.4567"]
)
def test_access_log_masks_a_number_spelled_with_dots_or_encoded_spaces(
    client: httpx.Client, caplog: pytest.LogCaptureFixture, number: str
) -> None:
    """Found by an attacker's look: these were logged whole (or half-masked)."""
    with caplog.at_level("INFO", logger="devhost.http"):
        client.get(f"/api/groups/1001/7/contacts/{number}%0Aforged")
    lines = [r.getMessage() for r in caplog.records if r.name == "devhost.http"]
    assert any(line.startswith("GET /api/groups/1001/7/contacts/***4567") for line in lines)
    assert not [line for line in lines if "\n" in line or "123" in line]
