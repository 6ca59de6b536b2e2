"""Storage clients read the proxy and CA settings once, when they are built, and count their
round trips when a benchmark asks (shared/storage.py)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import requests

from shared import storage
from shared.settings import Settings
from shared.storage import StorageOp
from shared.storage_session import StorageSession

AZURITE = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
    "QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;"
    "TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"
)


@pytest.fixture(autouse=True)
def _fresh_clients() -> Any:
    storage._table_service.cache_clear()
    storage._queue_service.cache_clear()
    yield
    storage._table_service.cache_clear()
    storage._queue_service.cache_clear()


class _Sent(Exception):
    """Raised instead of sending: the request never leaves the process."""


def _sent_with(monkeypatch: pytest.MonkeyPatch, call: Callable[[], object]) -> dict[str, Any]:
    """What the connection adapter was asked to send ``call``'s request with (the last step
    before the socket): its URL, headers, TLS check and proxies."""
    seen: dict[str, Any] = {}

    def send(
        self: requests.adapters.HTTPAdapter, request: requests.PreparedRequest, **kwargs: Any
    ) -> None:
        seen.update(kwargs, url=request.url, headers=dict(request.headers))
        raise _Sent

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", send)
    with pytest.raises(_Sent):
        call()
    return seen


def test_endpoints_come_from_the_connection_string_or_the_account_default() -> None:
    assert storage._endpoint(AZURITE, "table") == "http://127.0.0.1:10002/devstoreaccount1"
    assert storage._endpoint(AZURITE, "queue") == "http://127.0.0.1:10001/devstoreaccount1"
    plain = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5;EndpointSuffix=x.net"
    assert storage._endpoint(plain, "table") == "https://acct.table.x.net"


def _clear_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def test_a_proxy_in_the_environment_is_resolved_once_for_the_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _clear_proxies(monkeypatch)
    monkeypatch.setenv("http_proxy", "http://proxy.example:3128")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/bench-ca.pem")
    settings = Settings(AzureWebJobsStorage=AZURITE)
    table = storage.table_client("Quota", settings)
    queue = storage.queue_client("outbound", settings)

    for call in (lambda: table.get_entity("p", "r"), queue.get_queue_properties):
        sent = _sent_with(monkeypatch, call)
        assert sent["proxies"] == {"http": "http://proxy.example:3128"}
        assert sent["verify"] == "/etc/ssl/certs/bench-ca.pem"  # the proxy may be HTTPS
    session = table._client._client._pipeline._transport._transport.session  # the SDK's own
    assert isinstance(session, StorageSession)
    assert session.trust_env is False  # no per-request environment or .netrc look-up


def test_the_ca_bundle_is_used_for_https_and_left_out_for_plain_http(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _clear_proxies(monkeypatch)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/bench-ca.pem")
    https = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5;EndpointSuffix=x.net"
    on_tls_table = storage.table_client("Quota", Settings(AzureWebJobsStorage=https))
    plain_table = storage.table_client("Quota", Settings(AzureWebJobsStorage=AZURITE))

    on_tls = _sent_with(monkeypatch, lambda: on_tls_table.get_entity("p", "r"))
    plain = _sent_with(monkeypatch, lambda: plain_table.get_entity("p", "r"))

    assert on_tls["url"].startswith("https://acct.table.x.net/")
    assert on_tls["verify"] == "/etc/ssl/certs/bench-ca.pem"
    assert plain["verify"] is True  # no stat() of the bundle per request to Azurite


def test_the_session_sends_the_sdk_request_as_built_with_the_default_headers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _clear_proxies(monkeypatch)
    table = storage.table_client("Quota", Settings(AzureWebJobsStorage=AZURITE))

    sent = _sent_with(monkeypatch, lambda: table.get_entity("p", "r"))

    headers = {name.lower(): value for name, value in sent["headers"].items()}
    assert headers["authorization"].startswith("SharedKey devstoreaccount1:")  # the SDK's
    assert headers["x-ms-version"]
    assert headers["user-agent"].startswith("azsdk-python-data-tables")  # not requests'
    assert headers["accept-encoding"] == requests.utils.default_headers()["Accept-Encoding"]
    assert sent["stream"] is False


def test_the_session_refuses_to_follow_redirects() -> None:
    with pytest.raises(ValueError, match="redirects"):
        StorageSession().request("GET", "http://127.0.0.1:9/", allow_redirects=True)


def test_no_proxy_for_the_endpoint_means_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_proxies(monkeypatch)
    monkeypatch.setenv("http_proxy", "http://proxy.example:3128")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    table = storage.table_client("Quota", Settings(AzureWebJobsStorage=AZURITE))

    sent = _sent_with(monkeypatch, lambda: table.get_entity("p", "r"))

    assert not sent["proxies"]
    assert sent["url"].startswith("http://127.0.0.1:10002/")


def test_identity_based_clients_are_still_built(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_proxies(monkeypatch)
    settings = Settings(AzureWebJobsStorage__accountName="acct")

    assert storage.table_service(settings).url.startswith("https://acct.table.core.windows.net")
    assert storage.queue_service(settings).url.startswith("https://acct.queue.core.windows.net")


def test_default_clients_follow_the_current_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from shared.settings import reset_settings_cache

    first = (
        "DefaultEndpointsProtocol=http;AccountName=a;AccountKey=a2V5;"
        "QueueEndpoint=http://127.0.0.1:1/a;TableEndpoint=http://127.0.0.1:1/a;"
    )
    second = first.replace(":1/", ":2/")
    monkeypatch.setenv("AzureWebJobsStorage", first)
    reset_settings_cache()
    assert ":1/" in storage.queue_client("q").url
    assert ":1/" in storage.table_client("t").url
    monkeypatch.setenv("AzureWebJobsStorage", second)
    reset_settings_cache()
    assert ":2/" in storage.queue_client("q").url
    assert ":2/" in storage.table_client("t").url
    reset_settings_cache()


def test_clients_count_nothing_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    from azure.core.pipeline.transport import RequestsTransport

    monkeypatch.setattr(storage, "_round_trips", None)

    options = storage._transport_options("http://127.0.0.1:10002/devstoreaccount1", "table")

    assert type(options["transport"]) is RequestsTransport  # the plain one: no cost at all


def test_counted_clients_count_every_round_trip_by_kind_and_name(
    storage_env: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from azure.core.exceptions import ResourceNotFoundError

    monkeypatch.setattr(storage, "_round_trips", None)  # counting is off again afterwards
    counter = storage.count_round_trips()
    table = storage.table_client(unique_name)
    queue = storage.queue_client(unique_name)

    table.create_table()
    table.create_entity({"PartitionKey": "p", "RowKey": "1", "n": 1})
    table.get_entity("p", "1")
    table.update_entity({"PartitionKey": "p", "RowKey": "1", "n": 2})
    table.upsert_entity({"PartitionKey": "p", "RowKey": "2", "n": 1})
    table.submit_transaction(
        [
            ("upsert", {"PartitionKey": "p", "RowKey": "3"}),
            ("delete", {"PartitionKey": "p", "RowKey": "2"}),
        ]
    )
    assert len(list(table.query_entities("PartitionKey eq 'p'"))) == 2  # one page
    table.delete_entity("p", "1")
    with pytest.raises(ResourceNotFoundError):
        table.get_entity("p", "1")  # a refusal is a round trip too
    queue.create_queue()
    queue.send_message("a")
    queue.send_message("b")
    assert len(queue.peek_messages(max_messages=2)) == 2
    received = queue.receive_message(visibility_timeout=30)
    assert received is not None
    updated = queue.update_message(received, visibility_timeout=30)
    queue.delete_message(received.id, updated.pop_receipt)
    queue.clear_messages()

    assert storage.count_round_trips() is counter
    assert counter.snapshot() == Counter(
        {
            (StorageOp.TABLE_ADMIN, ""): 1,
            (StorageOp.TABLE_WRITE, unique_name): 4,  # create, update, upsert, delete
            (StorageOp.TABLE_READ, unique_name): 2,
            (StorageOp.TABLE_TRANSACTION, unique_name): 1,
            (StorageOp.TABLE_QUERY, unique_name): 1,
            (StorageOp.QUEUE_ADMIN, unique_name): 2,  # create, clear
            (StorageOp.QUEUE_PUT, unique_name): 2,
            (StorageOp.QUEUE_PEEK, unique_name): 1,
            (StorageOp.QUEUE_GET, unique_name): 1,
            (StorageOp.QUEUE_UPDATE, unique_name): 1,
            (StorageOp.QUEUE_DELETE, unique_name): 1,
        }
    )
    assert counter.refused() == Counter({(StorageOp.TABLE_READ, unique_name): 1})


# --- put_message: the webhook's queue put -----------------------------------------------------

_AWKWARD = [
    "plain",
    "<QueueMessage> & 'quotes' \"double\" ]]> &amp;",
    "Hyvää päivää 👋 — ünïcödé\nsecond line\ttab",
    '{"id":"s-1:42","data":{"content":"a < b && c > d"}}',
    "x" * 60_000,
]


def _bodies_sent(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every request the adapter sends from now on (URL, headers, body), still sent."""
    sent: list[dict[str, Any]] = []
    real = requests.adapters.HTTPAdapter.send

    def send(
        self: requests.adapters.HTTPAdapter, request: requests.PreparedRequest, **kwargs: Any
    ) -> requests.Response:
        body = request.body.encode() if isinstance(request.body, str) else request.body
        sent.append({"url": request.url, "headers": dict(request.headers), "body": body})
        return real(self, request, **kwargs)

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", send)
    return sent


def test_put_message_sends_what_send_message_sends_and_the_text_comes_back_unchanged(
    storage_env: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = storage.queue_client(unique_name)
    queue.create_queue()
    sent = _bodies_sent(monkeypatch)

    for text in _AWKWARD:
        storage.put_message(queue, text)
        queue.send_message(text)
        ours, sdks = sent[-2:]
        assert ours["url"] == sdks["url"]
        assert ours["body"] == sdks["body"]
        for header in ("Content-Type", "Accept", "x-ms-version"):
            assert ours["headers"][header] == sdks["headers"][header]
        assert ours["headers"]["Authorization"].startswith("SharedKey ")  # the pipeline signed it

    received = [m.content for m in queue.receive_messages(messages_per_page=32)]
    assert received == [text for text in _AWKWARD for _ in range(2)]


def test_a_json_message_holding_characters_xml_refuses_is_sent_with_them_escaped(
    storage_env: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """XML 1.0 has no U+FFFE or U+FFFF, so Azure refuses a Put Message request carrying them
    (Azurite takes it): an inbound SMS holding one would be refused on every retry. Both ways
    of putting send them as JSON escapes, which read back as the same JSON value."""
    import json

    queue = storage.queue_client(unique_name)
    queue.create_queue()
    sent = _bodies_sent(monkeypatch)
    text = json.dumps({"content": "odd \ufffe and \uffff"}, ensure_ascii=False)

    storage.put_message(queue, text)
    queue.send_message(text)

    for request in sent[-2:]:
        body = (
            request["body"].decode("utf-8")
            if isinstance(request["body"], bytes)
            else request["body"]
        )
        assert "\ufffe" not in body
        assert "\uffff" not in body
    received = [m.content for m in queue.receive_messages(messages_per_page=32)]
    assert [json.loads(r) for r in received] == [json.loads(text)] * 2
    # Sizes are measured as sent: 15,000 of them are 45 KB raw but 90 KB escaped.
    from shared.payloads import fits_queue

    assert not fits_queue(json.dumps({"content": "\uffff" * 15_000}, ensure_ascii=False))


def test_put_message_is_one_counted_queue_put(
    storage_env: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage, "_round_trips", None)
    counter = storage.count_round_trips()
    queue = storage.queue_client(unique_name)
    queue.create_queue()
    before = counter.snapshot()

    storage.put_message(queue, "one")

    assert counter.snapshot() - before == Counter({(StorageOp.QUEUE_PUT, unique_name): 1})


def test_put_message_raises_the_sdks_error_for_a_missing_queue_and_send_creating_creates_it(
    storage_env: str, unique_name: str
) -> None:
    from azure.core.exceptions import ResourceNotFoundError

    queue = storage.queue_client(unique_name)
    with pytest.raises(ResourceNotFoundError):
        storage.put_message(queue, "lost?")

    storage.send_creating(queue, "kept")

    assert [m.content for m in queue.receive_messages()] == ["kept"]


def test_a_client_without_the_generated_pipeline_gets_send_message() -> None:
    class Fake:
        def __init__(self) -> None:
            self.sent: list[str] = []

        def send_message(self, content: str, **kwargs: Any) -> None:
            self.sent.append(content)

    fake = Fake()
    storage.put_message(fake, "hello")
    assert fake.sent == ["hello"]


def test_an_encoding_client_gets_send_message_so_its_policy_applies(
    storage_env: str, unique_name: str
) -> None:
    import base64

    from azure.storage.queue import QueueClient, TextBase64EncodePolicy

    encoding = QueueClient.from_connection_string(
        storage_env, unique_name, message_encode_policy=TextBase64EncodePolicy()
    )
    encoding.create_queue()

    storage.put_message(encoding, "hello")

    raw = storage.queue_client(unique_name).receive_message()
    assert raw is not None
    assert base64.b64decode(raw.content).decode() == "hello"


def test_a_failed_put_is_raised_after_the_pipeline_retries_never_sent_again(
    storage_env: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 500 may have stored the message: put_message raises the SDK's error and sends nothing
    more (the retry policy's attempts are the only ones). A stubbed answer: Azurite does not
    fail on demand."""
    from azure.core.exceptions import HttpResponseError
    from azure.storage.queue import QueueClient

    queue = QueueClient.from_connection_string(
        storage_env,
        unique_name,
        retry_total=0,
        **storage._transport_options(storage._endpoint(storage_env, "queue"), "queue"),
    )
    attempts: list[str] = []

    def send(
        self: requests.adapters.HTTPAdapter, request: requests.PreparedRequest, **kwargs: Any
    ) -> requests.Response:
        import io

        import urllib3

        attempts.append(str(request.url))
        raw = urllib3.HTTPResponse(
            body=io.BytesIO(b"<?xml version='1.0'?><Error><Code>InternalError</Code></Error>"),
            headers={"Content-Type": "application/xml"},
            status=500,
            preload_content=False,
        )
        return self.build_response(request, raw)

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", send)
    with pytest.raises(HttpResponseError) as raised:
        storage.put_message(queue, "maybe stored")

    assert raised.value.status_code == 500
    assert len(attempts) == 1  # retry_total=0: one attempt, and no send_message after it


def test_a_client_that_requires_encryption_never_gets_plain_text(
    storage_env: str, unique_name: str
) -> None:
    from azure.storage.queue import QueueClient

    strict = QueueClient.from_connection_string(storage_env, unique_name, require_encryption=True)
    strict.create_queue()

    with pytest.raises(ValueError, match=r"[Ee]ncryption"):
        storage.put_message(strict, "secret")  # send_message's own refusal

    assert storage.queue_client(unique_name).peek_messages() == []


def test_the_session_refuses_unknown_options_and_reads_verify_none_as_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(TypeError, match="max_single_put_size"):
        StorageSession().request("GET", "http://127.0.0.1:9/", max_single_put_size=1)
    seen = _sent_with(
        monkeypatch, lambda: StorageSession().request("GET", "http://127.0.0.1:9/", verify=None)
    )
    assert seen["verify"] is True
