"""Table transactions run their sub-requests' policies in the calling thread, as azure-core would
in its thread pools, and start no thread (shared/storage_multipart.py)."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from azure.core.exceptions import ResourceExistsError
from azure.core.pipeline import PipelineRequest
from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.core.rest import HttpRequest
from azure.data.tables import TableTransactionError

from shared import storage, storage_multipart


def test_the_installed_azure_core_keeps_the_helpers_where_the_shim_expects_them() -> None:
    """An azure-core that moves them keeps its own (still correct, slower): this says so."""
    assert storage_multipart.install()
    assert storage_multipart.install()  # once per process: the same answer again


def _thread_starts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    started: list[str] = []
    real = threading.Thread.start

    def start(self: threading.Thread) -> None:
        started.append(self.name)
        real(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    return started


def test_a_transaction_starts_no_thread_and_its_answer_is_read_part_by_part(
    storage_env: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = storage.table_client(unique_name)
    table.create_table()
    table.create_entity({"PartitionKey": "p", "RowKey": "0", "n": 0})
    started = _thread_starts(monkeypatch)

    results = table.submit_transaction(
        [
            ("create", {"PartitionKey": "p", "RowKey": "1", "n": 1}),
            ("upsert", {"PartitionKey": "p", "RowKey": "2", "n": 2}),
            ("delete", {"PartitionKey": "p", "RowKey": "0"}),
        ]
    )

    assert started == []
    assert len(results) == 3
    assert all(r.get("etag") for r in results[:2])  # each part's own answer
    assert sorted(e["RowKey"] for e in table.query_entities("PartitionKey eq 'p'")) == ["1", "2"]


def test_a_refused_transaction_raises_the_sdks_error_naming_the_part(
    storage_env: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = storage.table_client(unique_name)
    table.create_table()
    table.create_entity({"PartitionKey": "p", "RowKey": "1"})
    started = _thread_starts(monkeypatch)

    with pytest.raises((TableTransactionError, ResourceExistsError)) as refused:
        table.submit_transaction(
            [
                ("create", {"PartitionKey": "p", "RowKey": "2"}),
                ("create", {"PartitionKey": "p", "RowKey": "1"}),  # exists: the whole one fails
            ]
        )

    assert refused.value.status_code == 409
    assert started == []
    assert [e["RowKey"] for e in table.query_entities("PartitionKey eq 'p'")] == ["1"]


class _Recording(SansIOHTTPPolicy[Any, Any]):
    def __init__(self, seen: list[tuple[str, str]]) -> None:
        self.seen = seen

    def on_request(self, request: PipelineRequest[Any]) -> None:
        thread = threading.current_thread().name
        self.seen.append((request.http_request.url, thread))
        request.http_request.headers["x-seen"] = "yes"


def test_every_sub_request_nested_ones_first_gets_every_policy_in_the_calling_thread() -> None:
    storage_multipart.install()
    from azure.core.pipeline import Pipeline

    seen: list[tuple[str, str]] = []
    inner = [HttpRequest("DELETE", f"http://t/e{i}") for i in range(3)]
    changeset = HttpRequest("POST", "http://t/changeset")
    changeset.set_multipart_mixed(*inner, policies=[_Recording(seen)], boundary="c")
    batch = HttpRequest("POST", "http://t/$batch")
    batch.set_multipart_mixed(changeset, policies=[_Recording(seen)], boundary="b")

    Pipeline._prepare_multipart_mixed_request(batch)

    here = threading.current_thread().name
    assert seen == [(f"http://t/e{i}", here) for i in range(3)] + [("http://t/changeset", here)]
    assert all(r.headers["x-seen"] == "yes" for r in [*inner, changeset])


@pytest.mark.parametrize("change", ["Pipeline moved", "_parts_helper takes more"])
def test_an_azure_core_that_keeps_them_elsewhere_keeps_its_own_and_storage_still_works(
    storage_env: str, unique_name: str, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    from azure.core.pipeline import _base
    from azure.core.utils import _pipeline_transport_rest_shared as shared

    monkeypatch.setattr(storage_multipart, "_state", {})  # as in a fresh process
    if change == "Pipeline moved":
        monkeypatch.delattr(_base, "Pipeline")
    else:
        monkeypatch.setattr(shared, "_parts_helper", lambda response, policies=(): None)
    storage._table_service.cache_clear()
    try:
        table = storage.table_client(unique_name)  # built, not a configuration error
        table.create_table()
        assert not storage_multipart.install()  # the client build decided: stood aside
    finally:
        storage._table_service.cache_clear()


def _transaction(entities: list[bytes], batch: str, changeset: str) -> HttpRequest:
    """A table transaction's request as azure-data-tables builds it (its ``_batch_send``)."""
    parts = [
        HttpRequest(
            "PATCH",
            f"https://account.table.core.windows.net/T(PartitionKey='p',RowKey='{i}')",
            headers={"Content-Type": "application/json;odata=nometadata", "If-Match": "*"},
            content=body,
        )
        for i, body in enumerate(entities)
    ]
    inner = HttpRequest("POST", "")
    inner.set_multipart_mixed(*parts, policies=[], boundary=changeset)
    request = HttpRequest("POST", "https://account.table.core.windows.net/$batch")
    request.set_multipart_mixed(inner, policies=[], enforce_https=False, boundary=batch)
    return request


def _sdk_body(monkeypatch: pytest.MonkeyPatch, request: HttpRequest) -> bytes:
    """The body azure-core's own helper writes for ``request`` (through the e-mail generator)."""
    import importlib

    sdk = storage_multipart._sdk["_prepare_multipart_body_helper"]
    with monkeypatch.context() as m:
        for name in ("azure.core.rest._helpers", storage_multipart._SHARED):
            m.setattr(importlib.import_module(name), "_prepare_multipart_body_helper", sdk)
        request.prepare_multipart_body()
    return request.content


ENTITIES = {
    "one": [b'{"PartitionKey":"p","RowKey":"0","n":0}'],
    "a hundred": [b'{"PartitionKey":"p","RowKey":"%d","n":%d}' % (i, i) for i in range(100)],
    "escaped non-ASCII": [json.dumps({"RowKey": "0", "Name": "Åsa Öberg ✓"}).encode()],
    "bare line ends": [b'{"RowKey":"0","Note":"one\nline\rand\r\nanother"}'],
    "none": [],
}


@pytest.mark.parametrize("entities", ENTITIES.values(), ids=ENTITIES.keys())
@pytest.mark.parametrize("boundaries", [("batch_1f", "changeset_2e"), ('b "q"', "changeset_2e")])
def test_a_transactions_body_is_byte_for_byte_what_the_sdk_writes(
    monkeypatch: pytest.MonkeyPatch, entities: list[bytes], boundaries: tuple[str, str]
) -> None:
    """Written directly, not by the e-mail generator, and the same bytes (a boundary it might
    quote goes through the generator itself)."""
    assert storage_multipart.install()
    ours, theirs = _transaction(entities, *boundaries), _transaction(entities, *boundaries)

    ours.prepare_multipart_body()

    assert ours.content == _sdk_body(monkeypatch, theirs)
    assert ours.headers["Content-Type"] == theirs.headers["Content-Type"]


def _read_by_email(content_type: str, body: bytes) -> list[Any]:
    from email import message_from_bytes

    def flat(message: Any) -> list[Any]:
        return [
            (p.get_content_type(), flat(p) if p.is_multipart() else p.get_payload(decode=True))
            for p in message.get_payload()
        ]

    return flat(message_from_bytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body))


def _read_by_split(parts: list[storage_multipart.Part]) -> list[Any]:
    return [
        (p.get_content_type(), _read_by_split(v) if isinstance(v, list) else v)
        for p in parts
        for v in [p.get_payload(decode=True)]
    ]


def test_the_answers_of_transactions_are_split_as_the_email_parser_reads_them(
    storage_env: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Azurite's answers to a transaction that succeeds, one refused (409) and one whose
    condition failed (412): the same parts, the same bytes, as the e-mail parser gives."""
    from azure.core import MatchConditions

    answers: list[tuple[str, bytes]] = []
    real = storage_multipart.split

    def split(content_type: str, body: bytes) -> Any:
        answers.append((content_type, body))
        return real(content_type, body)

    monkeypatch.setattr(storage_multipart, "split", split)
    table = storage.table_client(unique_name)
    table.create_table()
    table.submit_transaction(
        [("upsert", {"PartitionKey": "p", "RowKey": str(i)}) for i in range(3)]
    )
    with pytest.raises((TableTransactionError, ResourceExistsError)):
        table.submit_transaction([("create", {"PartitionKey": "p", "RowKey": "1"})])
    stale = {"etag": 'W/"datetime\'2020-01-01T00%3A00%3A00Z\'"',
             "match_condition": MatchConditions.IfNotModified}  # fmt: skip
    with pytest.raises(TableTransactionError):
        table.submit_transaction([("update", {"PartitionKey": "p", "RowKey": "1"}, stale)])

    assert sum(1 for content_type, _ in answers if "batchresponse" in content_type) == 3
    for content_type, body in answers:  # and their changesets (split reads those too)
        parts = real(content_type, body)
        assert parts is not None
        assert _read_by_split(parts) == _read_by_email(content_type, body)


@pytest.mark.parametrize(
    "body",
    [
        b"a preamble\r\n--b\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 204\r\n\r\n--b--",
        b"--b\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"SFQ=\r\n--b--",
        b"--b\r\nContent-Type:\r\n application/http\r\n\r\nHTTP/1.1 204\r\n\r\n--b--",
        b"--b\r\n\r\nHTTP/1.1 204\r\n\r\n--b--",
        b"--b\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 204\r\n\r\n",
    ],
    ids=["preamble", "base64", "folded header", "no headers", "no closing delimiter"],
)
def test_an_answer_of_another_shape_is_left_to_the_email_parser(body: bytes) -> None:
    assert storage_multipart.split("multipart/mixed; boundary=b", body) is None


def test_a_transaction_still_works_when_its_answer_is_left_to_the_sdk(
    storage_env: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage_multipart, "split", lambda content_type, body: None)
    table = storage.table_client(unique_name)
    table.create_table()

    results = table.submit_transaction([("create", {"PartitionKey": "p", "RowKey": "1"})])

    assert results[0].get("etag")
