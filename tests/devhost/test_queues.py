"""Queue triggers and queue output bindings against Azurite, with host.json's semantics."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
import time
from collections.abc import Callable

import azure.functions as func
import httpx
from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import QueueClient

from devhost import DevHost
from tests.devhost.conftest import host_options, queue_texts
from tests.waiting import wait_for

RunHost = Callable[..., DevHost]


def _queue(conn: str, name: str) -> QueueClient:
    client = QueueClient.from_connection_string(conn, name)
    with contextlib.suppress(ResourceExistsError):
        client.create_queue()
    return client


def test_message_is_delivered_then_deleted(
    run_host: RunHost, storage_env: str, unique_name: str
) -> None:
    seen: list[func.QueueMessage] = []
    app = func.FunctionApp()

    @app.queue_trigger(arg_name="msg", queue_name=unique_name, connection="AzureWebJobsStorage")
    def handle(msg: func.QueueMessage) -> None:
        seen.append(msg)

    run_host(app)
    _queue(storage_env, unique_name).send_message('{"text": "hyvää päivää"}')
    message = wait_for(lambda: seen and seen[0], what="the function to run")
    assert message.get_body() == '{"text": "hyvää päivää"}'.encode()
    assert message.dequeue_count == 1
    assert message.id
    assert message.pop_receipt
    assert message.insertion_time
    assert message.expiration_time
    assert message.time_next_visible
    wait_for(lambda: queue_texts(storage_env, unique_name) == [] or None, what="deletion")


def test_failed_message_comes_back_after_visibility_timeout(
    run_host: RunHost, storage_env: str, unique_name: str
) -> None:
    attempts: list[tuple[int, float]] = []
    app = func.FunctionApp()

    @app.queue_trigger(arg_name="msg", queue_name=unique_name, connection="AzureWebJobsStorage")
    def flaky(msg: func.QueueMessage) -> None:
        attempts.append((msg.dequeue_count, time.monotonic()))
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")

    run_host(app, host_options(visibility_timeout=1.0))
    _queue(storage_env, unique_name).send_message("retry me")
    wait_for(lambda: len(attempts) >= 2, what="the second attempt")
    (first, t1), (second, t2) = attempts[:2]
    assert (first, second) == (1, 2)
    assert t2 - t1 >= 0.9, "the message must stay invisible for visibilityTimeout"
    wait_for(lambda: queue_texts(storage_env, unique_name) == [] or None, what="deletion")
    assert len(attempts) == 2


def test_after_max_dequeue_count_failures_message_moves_to_poison(
    run_host: RunHost, storage_env: str, unique_name: str
) -> None:
    counts: list[int] = []
    app = func.FunctionApp()

    @app.queue_trigger(arg_name="msg", queue_name=unique_name, connection="AzureWebJobsStorage")
    def always_fails(msg: func.QueueMessage) -> None:
        counts.append(msg.dequeue_count)
        raise ValueError("never works")

    run_host(app, host_options(visibility_timeout=0.0, max_dequeue_count=3))
    _queue(storage_env, unique_name).send_message('{"id": 1}')
    poisoned = wait_for(
        lambda: queue_texts(storage_env, f"{unique_name}-poison"), what="the poison queue"
    )
    assert poisoned == ['{"id": 1}']
    assert counts == [1, 2, 3], "the function runs exactly maxDequeueCount times"
    assert queue_texts(storage_env, unique_name) == []


def test_message_already_over_max_dequeue_count_goes_to_poison_without_running(
    run_host: RunHost, storage_env: str, unique_name: str
) -> None:
    client = _queue(storage_env, unique_name)
    client.send_message("crashed too often")
    for _ in range(3):  # three receives by a host that died mid-run
        message = next(iter(client.receive_messages(visibility_timeout=30)))
        client.update_message(message.id, message.pop_receipt, visibility_timeout=0)
    ran: list[int] = []
    app = func.FunctionApp()

    @app.queue_trigger(arg_name="msg", queue_name=unique_name, connection="AzureWebJobsStorage")
    def handle(msg: func.QueueMessage) -> None:
        ran.append(msg.dequeue_count)

    run_host(app, host_options(max_dequeue_count=3))  # this receive is the 4th
    poisoned = wait_for(lambda: queue_texts(storage_env, f"{unique_name}-poison"), what="poison")
    assert poisoned == ["crashed too often"]
    assert ran == []


def test_batch_size_and_new_batch_threshold_bound_concurrency(
    run_host: RunHost, storage_env: str, unique_name: str
) -> None:
    release = threading.Event()
    lock = threading.Lock()
    running = 0
    peak = 0
    done: list[str] = []
    app = func.FunctionApp()

    @app.queue_trigger(arg_name="msg", queue_name=unique_name, connection="AzureWebJobsStorage")
    def slow(msg: func.QueueMessage) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        release.wait(10)
        with lock:
            running -= 1
            done.append(msg.get_body().decode())

    client = _queue(storage_env, unique_name)
    for i in range(10):
        client.send_message(f"m{i}")
    host = run_host(app, host_options(batch_size=3, new_batch_threshold=1))
    wait_for(lambda: running == 3, what="the first batch to run")
    # While 3 > newBatchThreshold run, the host must not fetch more.
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        assert running <= 3
        time.sleep(0.02)
    assert host.listeners[0].in_flight == 3
    release.set()
    wait_for(lambda: len(done) == 10, what="all messages")
    assert peak <= 3 + 1, "at most batchSize + newBatchThreshold at once"


def test_base64_encoding_decodes_trigger_and_encodes_output(
    run_host: RunHost, storage_env: str, unique_name: str
) -> None:
    bodies: list[bytes] = []
    out_queue = f"{unique_name}-out"
    app = func.FunctionApp()

    @app.queue_trigger(arg_name="msg", queue_name=unique_name, connection="AzureWebJobsStorage")
    @app.queue_output(arg_name="out", queue_name=out_queue, connection="AzureWebJobsStorage")
    def relay(msg: func.QueueMessage, out: func.Out[str]) -> None:
        bodies.append(msg.get_body())
        out.set("relayed ä")

    run_host(app, host_options(message_encoding="base64"))
    _queue(storage_env, unique_name).send_message(base64.b64encode(b"\x00raw").decode())
    stored = wait_for(lambda: queue_texts(storage_env, out_queue), what="the output message")
    assert bodies == [b"\x00raw"]
    assert stored == [base64.b64encode("relayed ä".encode()).decode()]


def test_base64_encoding_sends_undecodable_message_to_poison(
    run_host: RunHost, storage_env: str, unique_name: str
) -> None:
    ran: list[bytes] = []
    app = func.FunctionApp()

    @app.queue_trigger(arg_name="msg", queue_name=unique_name, connection="AzureWebJobsStorage")
    def handle(msg: func.QueueMessage) -> None:
        ran.append(msg.get_body())

    run_host(app, host_options(message_encoding="base64"))
    _queue(storage_env, unique_name).send_message("not base64 at all!")
    assert wait_for(lambda: queue_texts(storage_env, f"{unique_name}-poison")) == [
        "not base64 at all!"
    ]
    assert ran == []


def test_http_queue_output_writes_plain_text_messages(
    run_host: RunHost, storage_env: str, unique_name: str
) -> None:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app.route(route="enqueue", methods=["POST"])
    @app.queue_output(arg_name="out", queue_name=unique_name, connection="AzureWebJobsStorage")
    def enqueue(req: func.HttpRequest, out: func.Out[list[str]]) -> func.HttpResponse:
        out.set([req.get_body().decode(), '{"second": true}'])
        return func.HttpResponse(status_code=202)

    @app.route(route="fail", methods=["POST"])
    @app.queue_output(arg_name="out", queue_name=unique_name, connection="AzureWebJobsStorage")
    def fail(req: func.HttpRequest, out: func.Out[str]) -> func.HttpResponse:
        out.set("must not be written")
        raise RuntimeError("after setting the output")

    host = run_host(app)
    assert httpx.post(f"{host.url}/api/fail", content=b"x").status_code == 500
    assert httpx.post(f"{host.url}/api/enqueue", content=b'{"first": 1}').status_code == 202
    assert queue_texts(storage_env, unique_name) == ['{"first": 1}', '{"second": true}']


def test_async_queue_function_and_return_value_output(
    run_host: RunHost, storage_env: str, unique_name: str
) -> None:
    out_queue = f"{unique_name}-out"
    app = func.FunctionApp()

    @app.queue_trigger(arg_name="msg", queue_name=unique_name, connection="AzureWebJobsStorage")
    @app.queue_output(arg_name="$return", queue_name=out_queue, connection="AzureWebJobsStorage")
    async def upper(msg: func.QueueMessage) -> str:
        await asyncio.sleep(0)
        return msg.get_body().decode().upper()

    run_host(app)
    _queue(storage_env, unique_name).send_message("shout")
    assert wait_for(lambda: queue_texts(storage_env, out_queue)) == ["SHOUT"]
