"""Table transactions run their sub-requests' policies in the calling thread, as azure-core would
in its thread pools, and start no thread (shared/storage_multipart.py)."""

from __future__ import annotations

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
