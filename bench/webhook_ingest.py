"""Webhook ingest: inbound events per second through the webhook function into Azurite, next to
raw ``QueueClient.send_message`` into the same Azurite with the same concurrency.

- *through the webhook* (the figure): ``CLIENTS`` threads, each with its own persistent
  keep-alive ``http.client.HTTPConnection`` (the standard library's, the lightest correct load
  generator: the generator is not the product, SmartDialog's servers make these calls in
  production, and on a small machine every CPU-millisecond it spends is taken from the dev host
  and Azurite), POST SmartDialog's New Message payload (a fresh ``messageId`` each) to
  ``/api/callbacks/inbound/{Service}?token=...`` on the dev host (its own process, queue triggers
  not polled). The webhook checks the token and the payload and makes one storage call: these
  messages need no processing (no opt-out keyword, a service that never asked a question and
  has no New Message subscriber), so that call puts the event on ``smartdialog-inbound`` itself
  (docs/inbound.md, "Two paths"). A POST is answered 202 only once that message is stored, so
  answered POSTs / second is the ingest rate. The install is one past its upgrade window (the
  ``~asks-questions`` rows complete: :func:`_past_upgrade_window`).
- *raw* (the anchor): the same threads, each with its own ``QueueClient``, put copies of a real
  event text (taken from ``smartdialog-inbound``, so the same bytes) onto another queue of the
  same Azurite: the floor for "one message onto one queue".

Rounds alternate (raw, webhook, raw, webhook ...) and the median rate of each side is reported;
the note counts the messages that arrived, so a fast-but-lossy run cannot pass.

A second row measures end to end: a dev host with its queue triggers running, the same clients
POSTing, timed from the first POST until every event is on ``smartdialog-inbound`` (the queue
Logic Apps read). It checks that each event arrived exactly once. A third row (information) does
the same for a service that asks questions: each of its messages goes through the intake queue
and ``InboundProcessor`` (the open question, the event, the subscriber fan-out), as every message
did before the webhook published plain ones itself.

Three more rows count (not time) the processor's storage round trips per inbound event, in this
process against the same Azurite (``shared.storage.count_round_trips``): an ordinary message to a
service that never asked and to one that asks, and a reply that answers an open question
(SendMessageAndWaitForReply), its send recorded sent, each checked answered afterwards. Their
anchors are the targets, 2 and 4 (the issue's 3, plus the read of the question's send: a reply
answers only once the question's text may have gone out).

Run alone with ``python -m bench.webhook_ingest``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import json
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from bench._app import environment
from bench.action_overhead import INFORMATIONAL

if TYPE_CHECKING:
    from bench.__main__ import FigureRow
    from devhost.stack import Child

__all__ = ["CLIENTS", "TARGET", "measure"]

TARGET = ">= 0.85"
#: End to end onto smartdialog-inbound, as a share of the raw rate (issue 14).
E2E_TARGET = ">= 0.5"
#: Processor storage round trips per event: no question answered, one answered (issue 14's 3,
#: plus the read of the question's send: was its text sent? docs/inbound.md).
CALLS_TARGETS = {
    "no question, a service that never asked": 2.0,
    "no question, a service that asks": 2.0,
    "answers a question": 4.0,
}
CALL_SAMPLES = 30
CLIENTS = 8
SERVICE = "s-1001-twoway"
#: A service that asks questions: its messages go through the processor.
ASKING_SERVICE = "s-1001-asks"
RAW_QUEUE = "bench-raw-ingest"


def _payload() -> dict[str, Any]:
    return {
        "sender": "+358401234567",
        "recipient": "SmartDialog",
        "content": "Benchmark inbound message",
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        "protocol": "SMS",
        "attachments": [],
        "messageId": str(uuid.uuid4()),
    }


def _concurrently(count: int, make_worker: Callable[[], Callable[[], None]]) -> float:
    """Run ``count`` calls spread over :data:`CLIENTS` threads; calls per second."""
    remaining = [count]
    lock = threading.Lock()
    errors: list[BaseException] = []

    def take() -> bool:
        with lock:
            if remaining[0] <= 0:
                return False
            remaining[0] -= 1
            return True

    def run() -> None:
        try:
            work = make_worker()
            while take():
                work()
        except BaseException as exc:  # reported after the round
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(CLIENTS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return count / elapsed


def _webhook_worker(url: str) -> Callable[[], Callable[[], None]]:
    """One persistent keep-alive ``http.client`` connection per client thread (no proxy, as
    the raw side's SDK client has none either); each call POSTs a fresh payload and requires
    202. ``http.client`` reconnects by itself if the server closed the connection."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"the bench posts plain HTTP to the local dev host, not {url}")
    host, port = parts.hostname, parts.port or 80
    target = f"{parts.path}?{parts.query}" if parts.query else parts.path
    headers = {"Content-Type": "application/json"}

    def make() -> Callable[[], None]:
        connection = http.client.HTTPConnection(host, port, timeout=30)

        def post() -> None:
            body = json.dumps(_payload(), separators=(",", ":")).encode()
            connection.request("POST", target, body=body, headers=headers)
            response = connection.getresponse()
            answer = response.read()
            if response.status != 202:
                raise RuntimeError(f"webhook answered {response.status}: {answer[:500]!r}")

        return post

    return make


def _raw_worker(connection: str, text: str) -> Callable[[], Callable[[], None]]:
    def make() -> Callable[[], None]:
        from azure.storage.queue import QueueClient

        client = QueueClient.from_connection_string(connection, RAW_QUEUE)

        def send() -> None:
            client.send_message(text)

        return send

    return make


def _queue_count(connection: str, name: str) -> int:
    """Messages on queue ``name`` (visible or not); 0 if it does not exist yet."""
    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.queue import QueueClient

    client = QueueClient.from_connection_string(connection, name)
    try:
        return int(client.get_queue_properties().approximate_message_count or 0)
    except ResourceNotFoundError:
        return 0


def _clear(connection: str, *queues: str) -> None:
    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.queue import QueueClient

    for name in queues:
        with contextlib.suppress(ResourceNotFoundError):
            QueueClient.from_connection_string(connection, name).clear_messages()


def _distinct_event_ids(connection: str, name: str) -> tuple[int, int]:
    """(messages, distinct CloudEvent ids) on queue ``name``: every message received once (each
    page hidden for 300 s), none deleted one by one; the caller clears the queue afterwards.
    Deleting each message as it was read coincided with Azurite's event loop busy for minutes
    (every client of that Azurite waiting, the dev host's too): the stalls of stops 36-37."""
    from azure.storage.queue import QueueClient

    client = QueueClient.from_connection_string(connection, name)
    ids: list[str] = []
    empty = 0
    while True:
        batch = list(client.receive_messages(messages_per_page=32, visibility_timeout=300))
        if not batch:
            # Azurite under load has answered one page empty while messages were left: stop
            # only once the queue counts no more than were read.
            empty += 1
            if empty >= 50 or _queue_count(connection, name) <= len(ids):
                return len(ids), len(set(ids))
            time.sleep(0.1)
            continue
        ids.extend(str(json.loads(message.content)["id"]) for message in batch)


def _webhook_url(env: dict[str, str], service: str = SERVICE) -> str:
    """Our signed webhook URL for ``service``, made by the app's own code."""
    from shared.inbound import new_nonce, webhook_url
    from shared.settings import get_settings

    with environment(env):
        return webhook_url(get_settings(), service, new_nonce())


def _past_upgrade_window(env: dict[str, str]) -> None:
    """The ``~asks-questions`` rows as an install has them once its upgrade window has passed
    (both scans done: shared.triggers), and :data:`ASKING_SERVICE` marked as asking, as the ask
    action marks a service before its first question."""
    from shared.names import LAYOUT_PARTITION, SUBSCRIPTIONS_TABLE, UPGRADE_WINDOW
    from shared.settings import get_settings
    from shared.storage import ensured_table
    from shared.triggers import ASKS_LAYOUT_ROW, TriggerNotifier

    with environment(env):
        since = dt.datetime.now(dt.UTC) - 2 * UPGRADE_WINDOW
        ensured_table(SUBSCRIPTIONS_TABLE).upsert_entity(
            {
                "PartitionKey": LAYOUT_PARTITION,
                "RowKey": ASKS_LAYOUT_ROW,
                "Since": since,
                "CompleteAt": since + UPGRADE_WINDOW,
            }
        )
        TriggerNotifier.for_settings(get_settings()).mark_asking(ASKING_SERVICE)


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``; None elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _end_to_end(conn: str, url: str, events: int, timeout: float) -> tuple[float, int, int]:
    """POST ``events`` through the webhook while the processor runs; events/s until the last is
    on ``smartdialog-inbound``, and (messages, distinct ids) found there."""
    from shared.names import INBOUND_INTAKE_QUEUE, INBOUND_QUEUE

    failed: list[BaseException] = []

    def post_all() -> None:
        try:
            _concurrently(events, _webhook_worker(url))
        except BaseException as exc:  # reported by the waiting loop below
            failed.append(exc)

    started = time.perf_counter()
    poster = threading.Thread(target=post_all)
    poster.start()
    deadline = started + timeout
    while _queue_count(conn, INBOUND_QUEUE) < events:
        if failed:
            raise RuntimeError(f"a webhook POST failed: {failed[0]!r}") from failed[0]
        if time.perf_counter() > deadline:
            poster.join()
            raise RuntimeError(
                f"only {_queue_count(conn, INBOUND_QUEUE)}/{events} events reached "
                f"smartdialog-inbound within {timeout:.0f} s"
            )
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    poster.join()
    while _queue_count(conn, INBOUND_INTAKE_QUEUE):  # let the processor finish (duplicates?)
        if time.perf_counter() > deadline:
            raise RuntimeError("smartdialog-inbound-intake did not drain")
        time.sleep(0.05)
    messages, distinct = _distinct_event_ids(conn, INBOUND_QUEUE)
    return events / elapsed, messages, distinct


def _end_to_end_rounds(
    conn: str, url: str, host: Child, rounds: int, events: int, warmup: int
) -> tuple[list[float], list[tuple[int, int]], list[float]]:
    """``rounds`` end-to-end runs through ``url`` on the running ``host``: their rates,
    (messages, distinct ids) on smartdialog-inbound, and the host's CPU ms per event."""
    from shared.names import INBOUND_INTAKE_QUEUE, INBOUND_QUEUE

    _concurrently(warmup, _webhook_worker(url))  # warm the processor too
    deadline = time.perf_counter() + 60
    while _queue_count(conn, INBOUND_QUEUE) < warmup or _queue_count(conn, INBOUND_INTAKE_QUEUE):
        if time.perf_counter() > deadline:
            raise RuntimeError("the warm-up events were not published")
        time.sleep(0.05)
    _clear(conn, INBOUND_QUEUE)
    rates: list[float] = []
    counts: list[tuple[int, int]] = []
    cpu: list[float] = []  # the host's CPU ms per event (webhook, and processor if any)
    for _ in range(rounds):
        before = _cpu_seconds(host.process.pid)
        rate, messages, distinct = _end_to_end(conn, url, events, timeout=max(120.0, events / 2))
        after = _cpu_seconds(host.process.pid)
        if before is not None and after is not None:
            cpu.append((after - before) * 1000 / events)
        rates.append(rate)
        counts.append((messages, distinct))
        _clear(conn, INBOUND_QUEUE)
    return rates, counts, cpu


def _intake(number: str, content: str, service: str) -> str:
    from shared.inbound import InboundIntake, NewMessagePayload

    payload = NewMessagePayload.model_validate({**_payload(), "sender": number, "content": content})
    intake = InboundIntake(
        service=service,
        messageKey=str(payload.messageId),
        receivedAt=dt.datetime.now(dt.UTC),
        payload=payload,
    )
    return intake.model_dump_json(exclude_none=True)


def _ask(number: str, customer: str) -> str:
    """An open question of :data:`ASKING_SERVICE` to ``number`` (as SendMessageAndWaitForReply
    leaves one) and its send, recorded ``sent`` for ``customer``: a reply answers a question
    only once its text may have gone out (shared.messages.send_may_have_gone_out). Its id."""
    from shared.messages import (
        MessageRecord,
        MessageStatus,
        MessageStore,
        Operation,
        QuestionRecord,
        QuestionStore,
        new_question_id,
    )

    now = dt.datetime.now(dt.UTC)
    question = QuestionRecord(
        question_id=new_question_id(ASKING_SERVICE, number),
        service_id=ASKING_SERVICE,
        address=number,
        message_id=str(uuid.uuid4()),
        created_at=now,
        expires_at=now + dt.timedelta(hours=1),
        options=("Yes", "No"),
    )
    command = {"operation": "SendMessage", "messageId": question.message_id, "body": {}}
    send = MessageRecord(
        message_id=question.message_id,
        status=MessageStatus.SENT,
        operation=Operation.SEND_MESSAGE,
        customer_id=customer,
        service_id=ASKING_SERVICE,
        request_id=None,
        command=json.dumps(command),
        fingerprint="",
        created_at=now,
        updated_at=now,
        valid_until=question.expires_at,
        recipient_count=1,
        part_count=1,
    )
    MessageStore.from_settings().create(send, [])
    QuestionStore.from_settings().create(question)
    return question.question_id


def _answered(question_id: str) -> bool:
    from shared.messages import QuestionStatus, QuestionStore

    question = QuestionStore.from_settings().get(question_id)
    return question is not None and question.status is QuestionStatus.ANSWERED


def processor_calls(env: dict[str, str], samples: int = CALL_SAMPLES) -> dict[str, list[int]]:
    """The processor's storage round trips for each of ``samples`` ordinary events to a service
    that never asked and to one that asks, and as many replies that answer a question, counted
    in this process (module docstring)."""
    from shared.inbound import InboundProcessor
    from shared.settings import get_settings
    from shared.storage import count_round_trips

    with environment(env):
        counter = count_round_trips()  # before the processor builds its clients
        processor = InboundProcessor.from_settings(get_settings())
        processor.subscribers.mark_asking(ASKING_SERVICE)
        for service in (SERVICE, ASKING_SERVICE):  # tables and queues exist, indexes are read
            processor.process(_intake("+358401000000", "warm up", service))
        never, asks, answers = CALLS_TARGETS
        calls: dict[str, list[int]] = {name: [] for name in CALLS_TARGETS}
        for i in range(samples):
            number = f"+35840{2_000_000 + i}"
            for name, service in ((never, SERVICE), (asks, ASKING_SERVICE)):
                before = counter.snapshot()
                processor.process(_intake(number, "Hello", service))
                calls[name].append(sum((counter.snapshot() - before).values()))
            question = _ask(number, env["SMARTDIALOG_CUSTOMER_ID"])
            before = counter.snapshot()
            processor.process(_intake(number, "yes", ASKING_SERVICE))
            calls[answers].append(sum((counter.snapshot() - before).values()))
            if not _answered(question):  # a reply that answers nothing would cost less
                raise RuntimeError(f"the reply from {number} did not answer its question")
        return calls


def measure(
    events: int = 1200, rounds: int = 3, warmup: int = 200, e2e_events: int = 600
) -> list[FigureRow]:
    """Start Azurite and the dev host; compare the two ingest rates; then the end-to-end rate."""
    from azure.storage.queue import QueueClient

    from devhost.azurite import start_azurite
    from devhost.stack import REPO_ROOT, free_port, start_devhost
    from shared.names import INBOUND_INTAKE_QUEUE, INBOUND_QUEUE

    azurite = start_azurite()
    children: list[Child] = []
    try:
        port = free_port()
        env = {
            "AzureWebJobsStorage": azurite.connection_string,
            "SMARTDIALOG_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
            "SMARTDIALOG_CALLBACK_SECRETS": "bench-callback-secret-of-at-least-32-bytes",
            "SMARTDIALOG_CUSTOMER_ID": "1001",
        }
        devhost = start_devhost(
            port=port,
            env={**os.environ, **env},
            log_path=REPO_ROOT / ".run" / "bench-webhook-devhost.log",
            extra_args=("--no-queues", "--no-access-log"),
        )
        children.append(devhost)
        _past_upgrade_window(env)
        url = _webhook_url(env)
        conn = azurite.connection_string
        raw_queue = QueueClient.from_connection_string(conn, RAW_QUEUE)
        raw_queue.create_queue()
        _concurrently(warmup, _webhook_worker(url))
        peeked = QueueClient.from_connection_string(conn, INBOUND_QUEUE).peek_messages(1)
        if not peeked:
            raise RuntimeError("the webhook answered 202 but nothing reached smartdialog-inbound")
        event_text = str(peeked[0].content)
        _concurrently(warmup, _raw_worker(conn, event_text))
        raw_rates: list[float] = []
        raw_cpu: list[float] = []  # this process's CPU ms per raw send_message
        hook_rates: list[float] = []
        for _ in range(rounds):
            cpu_before = time.process_time()
            raw_rates.append(_concurrently(events, _raw_worker(conn, event_text)))
            raw_cpu.append((time.process_time() - cpu_before) * 1000 / events)
            hook_rates.append(_concurrently(events, _webhook_worker(url)))
        arrived = _queue_count(conn, INBOUND_QUEUE) - warmup
        stored = _queue_count(conn, RAW_QUEUE) - warmup
        intake_meanwhile = _queue_count(conn, INBOUND_INTAKE_QUEUE)
        if arrived != events * rounds or stored != events * rounds or intake_meanwhile:
            raise RuntimeError(
                f"lost or extra messages: {arrived}/{events * rounds} webhook calls on "
                f"{INBOUND_QUEUE} ({intake_meanwhile} on {INBOUND_INTAKE_QUEUE}), "
                f"{stored}/{events * rounds} raw messages on {RAW_QUEUE}"
            )

        # End to end: the same app with its queue triggers running, each service on an Azurite
        # of its own. Azurite's queue clean-up (every 60 s) deletes the stored text of each
        # message consumed since, one at a time, and re-sorts its index of all stored texts for
        # each: after the ingest rounds' ~7,400 messages its one thread was busy for minutes
        # (profiled: lokijs ensureIndex under deleteExtents), every client waiting, and a
        # webhook POST timed out. (Azurite also slows with every message it holds.)
        devhost.stop()
        children.remove(devhost)
        e2e: dict[str, tuple[list[float], list[tuple[int, int]], list[float]]] = {}
        for name, service in (("plain", SERVICE), ("asks", ASKING_SERVICE)):
            azurite.stop()
            azurite = start_azurite()
            conn = env["AzureWebJobsStorage"] = azurite.connection_string
            _past_upgrade_window(env)
            full = start_devhost(
                port=port,
                env={**os.environ, **env},
                log_path=REPO_ROOT / ".run" / f"bench-webhook-devhost-e2e-{name}.log",
                extra_args=("--no-access-log",),
            )
            children.append(full)
            url = _webhook_url(env, service)
            e2e[name] = _end_to_end_rounds(conn, url, full, rounds, e2e_events, warmup)
            full.stop()
            children.remove(full)
        calls = processor_calls(env)
    finally:
        for child in reversed(children):
            child.stop()
        azurite.stop()
    expected = events * rounds
    raw = statistics.median(raw_rates)
    rows: list[FigureRow] = [
        {
            "figure": (
                f"webhook ingest: events/s, webhook (http.client load generator) vs raw "
                f"send_message ({CLIENTS} clients)"
            ),
            "value": statistics.median(hook_rates),
            "anchor": raw,
            "unit": "ev/s",
            "target": TARGET,
            "note": (
                f"median of {rounds} alternating rounds of {events} events; webhook side posted "
                f"by a stdlib http.client load generator (one persistent keep-alive connection "
                f"per client thread; it stands in for SmartDialog's servers), raw side "
                f"QueueClient.send_message with the same {CLIENTS} threads; dev host run with "
                f"--no-access-log (its per-request access line; the app's own logs stay on); "
                f"{arrived}/{expected} webhook calls on smartdialog-inbound (published by the "
                f"webhook: plain messages) and {stored}/{expected} raw messages counted on "
                f"their queues, none on the intake queue; message size "
                f"{len(event_text.encode())} bytes; webhook rounds "
                f"{', '.join(f'{r:.0f}' for r in hook_rates)} ev/s, raw "
                f"{', '.join(f'{r:.0f}' for r in raw_rates)} ev/s"
            ),
        },
    ]
    for name, (figure, target) in {
        "plain": ("end to end onto smartdialog-inbound (plain messages) vs the same raw rate",
                  E2E_TARGET),
        "asks": ("informational, no target: end to end, a service that asks questions "
                 "(webhook + InboundProcessor)", INFORMATIONAL),
    }.items():  # fmt: skip
        rates, counts, cpu = e2e[name]
        rows.append(
            {
                "figure": f"  {figure}",
                "value": statistics.median(rates),
                "anchor": raw,
                "unit": "ev/s",
                "target": target,
                "note": (
                    f"median of {rounds} runs of {e2e_events} events POSTed by {CLIENTS} clients "
                    f"to a dev host running its queue triggers, each timed from the first POST "
                    f"until all were on smartdialog-inbound: "
                    f"{', '.join(f'{r:.0f}' for r in rates)} ev/s; (messages, distinct event "
                    f"ids) {', '.join(str(c) for c in counts)}; dev host CPU per event "
                    f"{', '.join(f'{c:.1f}' for c in cpu) or 'n/a'} ms, in one Python process, "
                    f"vs {statistics.median(raw_cpu):.1f} ms per raw send_message"
                ),
            }
        )
    for name, samples in calls.items():
        rows.append(
            {
                "figure": f"  processor storage calls/event ({name})",
                "value": statistics.median(samples),
                "anchor": CALLS_TARGETS[name],
                "unit": "calls",
                "target": "<= 1.0",
                "note": (
                    f"median of {len(samples)} events processed in this process, counted by "
                    f"shared.storage.count_round_trips; max {max(samples)}; anchor = the "
                    f"target ({CALLS_TARGETS[name]:g})"
                ),
            }
        )
    return rows


def main() -> None:
    """Print the rows of this figure alone."""
    for row in measure():
        print(row)


if __name__ == "__main__":
    main()
