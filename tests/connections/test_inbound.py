"""Inbound per connection: a named connection's webhook is registered with its own account, its
URL says which connection (signed into its token), and the events it produces say so."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import uuid
from urllib.parse import parse_qsl, urlsplit

from azure.functions.queue import QueueMessage

from shared import names
from shared.clock import utcnow
from shared.connections import CONNECTION_HEADER
from shared.inbound._answers import reprompt_command, reprompt_message_id
from shared.messages import QuestionRecord, QuestionStore, new_question_id
from shared.storage import queue_client
from shared.suppressions import SuppressionStore
from tests.connections.conftest import SECOND_CUSTOMER, SECOND_TWO_WAY, TwoConnections
from tests.outbound.conftest import app_function, call_http


def fresh_inbound_queues() -> None:
    for name in (names.INBOUND_INTAKE_QUEUE, names.INBOUND_QUEUE):
        queue = queue_client(name)
        with contextlib.suppress(Exception):
            queue.create_queue()
        queue.clear_messages()


def process_intake() -> None:
    intake = queue_client(names.INBOUND_INTAKE_QUEUE)
    for message in intake.receive_messages(messages_per_page=16, visibility_timeout=30):
        app_function("InboundProcessor")(
            QueueMessage(id=message.id, body=message.content.encode(), dequeue_count=1)
        )
        intake.delete_message(message)


def test_a_named_connections_webhook_and_its_events_say_which_connection(
    two: TwoConnections,
) -> None:
    fresh_inbound_queues()
    query = second_webhook(two)
    assert two.env.sandbox.state.actions_for(SECOND_TWO_WAY) == []
    assert query["connection"] == "second"

    message_id = str(uuid.uuid4())
    body = {"sender": "+358401234567", "recipient": "+358501234567", "content": "Hi",
            "messageId": message_id}  # fmt: skip
    route = {"Service": SECOND_TWO_WAY}
    # The connection is signed into the token: another label (or none) does not open it.
    for forged in ({"token": query["token"]}, {**query, "connection": "default"}):
        answer = call_http("InboundWebhook", "POST", route_params=route, params=forged, body=body)
        assert answer.status == 401
    answer = call_http("InboundWebhook", "POST", route_params=route, params=query, body=body)
    assert answer.status == 202, answer.body
    process_intake()
    [event] = [e for e in two.env.read(names.INBOUND_QUEUE) if e["subject"] == message_id]
    assert event["data"]["connection"] == "second"
    assert event["data"]["service"] == SECOND_TWO_WAY


def test_every_connection_shares_the_apps_subscriber_index(two: TwoConnections) -> None:
    """A subscription made through ``second`` is seen at once by this instance's notifier,
    which the processor and the fan-out read (they use the app's settings)."""
    from shared.connections import connection_settings
    from shared.settings import get_settings
    from shared.triggers import TriggerNotifier

    second = TriggerNotifier.for_settings(connection_settings("second"))
    assert second is TriggerNotifier.for_settings(get_settings())


def second_webhook(two: TwoConnections) -> dict[str, str]:
    """Register ``second``'s webhook of its two-way service; its URL's query."""
    registered = call_http(
        "RegisterInboundWebhook",
        "POST",
        route_params={"Service": SECOND_TWO_WAY},
        headers={CONNECTION_HEADER: "second"},
    )
    assert registered.status == 201, registered.body
    [action] = two.second.state.actions_for(SECOND_TWO_WAY)
    return dict(parse_qsl(urlsplit(action["endpointUrl"]).query))


def opt_out_of(two: TwoConnections, query: dict[str, str], content: str) -> str | None:
    """Post ``content`` from SENDER to the webhook ``query`` opens, process it: its event's
    ``optOut``."""
    message_id = str(uuid.uuid4())
    body = {"sender": SENDER, "recipient": "+358501234567", "content": content,
            "messageId": message_id}  # fmt: skip
    route = {"Service": SECOND_TWO_WAY}
    answer = call_http("InboundWebhook", "POST", route_params=route, params=query, body=body)
    assert answer.status == 202, answer.body
    process_intake()
    [event] = [e for e in two.env.read(names.INBOUND_QUEUE) if e["subject"] == message_id]
    opt_out: str | None = event["data"].get("optOut")
    return opt_out


SENDER = "+358401234599"


def suppressed() -> bool:
    return SuppressionStore.from_settings().get(SECOND_TWO_WAY, SENDER) is not None


def test_a_connections_own_opt_out_keywords_apply_to_its_inbound_messages(
    two: TwoConnections,
) -> None:
    """Its STOP_KEYWORDS and START_KEYWORDS replace the app-wide ones for the messages of its
    webhook: the webhook hands such a message to the processor, which applies it."""
    two.set_connection("SECOND", STOP_KEYWORDS="PERU", START_KEYWORDS="JATKA")
    fresh_inbound_queues()
    query = second_webhook(two)
    assert opt_out_of(two, query, "STOP") is None  # the app-wide word is not its keyword
    assert not suppressed()
    assert opt_out_of(two, query, "peru!") == "stop"
    assert suppressed()
    assert opt_out_of(two, query, "Jatka") == "start"
    assert not suppressed()


def test_a_connection_with_a_broken_setting_still_reads_its_keywords(
    two: TwoConnections,
) -> None:
    """Inbound messages need no credentials or quota: a broken setting of the connection does
    not make its opt-outs go unseen; a removed connection's webhook reads the app's keywords."""
    two.set_connection("SECOND", STOP_KEYWORDS="PERU")
    fresh_inbound_queues()
    query = second_webhook(two)
    two.set_connection("SECOND", QUOTA_CALLS="0")
    assert opt_out_of(two, query, "PERU") == "stop"
    two.remove_connection("SECOND")
    assert opt_out_of(two, query, "PERU") is None
    assert opt_out_of(two, query, "START") == "start"


def test_a_webhook_registered_by_customer_routing_is_unregistered_through_its_connection(
    two: TwoConnections,
) -> None:
    """Unregistering has no Customer-Id to route by: without the connection header it went to
    the default connection, which took the record for another connection's and answered a false
    404. It goes through the connection that registered it; a header naming another one still
    finds nothing of its own, and a connection removed since is named, its record kept."""
    from shared.inbound import WebhookRegistry

    def register() -> str:
        headers = {"Customer-Id": SECOND_CUSTOMER}  # claimed by second: no connection header
        answer = call_http("RegisterInboundWebhook", "POST", route_params=route, headers=headers)
        assert answer.status == 201, answer.body
        return str(answer.body["ActionId"])

    def unregister(action_id: str, **headers: str) -> int:
        params = {**route, "ActionId": action_id}
        return call_http("UnregisterInboundWebhook", "DELETE", route_params=params,
                         headers=headers).status  # fmt: skip

    route = {"Service": SECOND_TWO_WAY}
    action_id = register()
    assert unregister(action_id, **{CONNECTION_HEADER: "default"}) == 404
    assert [a["id"] for a in two.second.state.actions_for(SECOND_TWO_WAY)] == [action_id]
    assert unregister(action_id) == 204
    assert two.second.state.actions_for(SECOND_TWO_WAY) == []
    assert WebhookRegistry.from_settings().get(SECOND_TWO_WAY, action_id) is None
    assert [r for r in two.env.sandbox.state.snapshot("requests")
            if r.get("operationId") == "DeleteTrigger"] == []  # fmt: skip

    kept = register()
    two.set_connection("SECOND", ACCESS_TOKEN="refused-token")  # its failure names its setting
    params = {**route, "ActionId": kept}
    refused = call_http("UnregisterInboundWebhook", "DELETE", route_params=params)
    assert refused.status == 503, refused.body
    assert [e["field"] for e in refused.body["errors"]] == [
        "SMARTDIALOG_CONNECTIONS__SECOND__ACCESS_TOKEN"
    ]
    two.remove_connection("SECOND")
    assert unregister(kept) == 409
    assert WebhookRegistry.from_settings().get(SECOND_TWO_WAY, kept) is not None


def ask_through_second(two: TwoConnections, recipient: str) -> QuestionRecord:
    """Asks ``recipient`` a question with a re-prompt through ``second`` (its replies come back
    through second's webhook) and clears the question's own send off the queue."""
    second_webhook(two)
    headers = {CONNECTION_HEADER: "second", "Customer-Id": SECOND_CUSTOMER,
               "Service-Id": SECOND_TWO_WAY}  # fmt: skip
    body = {"Sender": "Clinic", "Content": "Reply YES or NO", "Recipient": recipient,
            "Options": ["Yes", "No"], "RepromptContent": "Please reply YES or NO",
            "ReplaceOpenQuestion": True}  # fmt: skip
    asked = call_http("SendMessageAndWaitForReply", "POST", headers=headers, body=body)
    assert asked.status == 202, asked.body
    question = QuestionStore.from_settings().get(asked.body["QuestionId"])
    assert question is not None
    queue_client(names.OUTBOUND_QUEUE).clear_messages()  # the question's own send: not here
    return question


def test_a_questions_re_prompt_goes_through_the_connection_it_was_asked_on(
    two: TwoConnections,
) -> None:
    """Its re-prompt named no connection: the sender routed it by whichever connection claimed
    the customer when it came off the queue, so once ``second`` was removed (or the customer
    moved) it went out through the default account. It fails ``connection-removed`` instead."""
    question = ask_through_second(two, "+358400000011")
    assert question.connection == "second"
    two.env.enqueue(reprompt_command(question))  # as the reply's processor queues it
    two.remove_connection("SECOND")

    two.env.drain()

    assert two.env.upstream() == []  # never through the default account
    [event] = [
        e for e in two.env.events() if e["subject"] == reprompt_message_id(question.question_id)
    ]
    assert event["type"] == "fi.arena.smartdialog.message.failed"
    assert (event["data"]["connection"], event["data"]["error"]["code"]) == (
        "second",
        "connection-removed",
    )


def test_a_questions_re_prompt_still_goes_out_after_its_customer_moves_off_its_connection(
    two: TwoConnections,
) -> None:
    """A re-prompt is queued without a record, naming its question's connection and customer:
    the check of queue-only commands (a named connection must serve the customer) took it for
    a producer's mistake once the customer moved, and it was dead-lettered ``malformed`` with
    no event: part of a question accepted over HTTP, lost. It goes out as it was asked."""
    question = ask_through_second(two, "+358400000012")
    two.set_connection("SECOND", CUSTOMERS="2999", CUSTOMER_ID="2999")  # the customer moves
    two.env.enqueue(reprompt_command(question))  # as the reply's processor queues it

    two.env.drain()

    assert two.env.dead_letters() == []
    [call] = two.second_upstream()
    assert call["status"] == 200
    [event] = [
        e for e in two.env.events() if e["subject"] == reprompt_message_id(question.question_id)
    ]
    assert event["type"] == "fi.arena.smartdialog.message.sent"


def test_a_question_on_a_service_whose_webhook_is_on_another_connection_is_asked(
    two: TwoConnections,
) -> None:
    """Its webhook was registered through the default connection (before ``second`` claimed the
    customer): replies reach the question whatever connection delivers them (a question is
    found by service and number), yet the ask through ``second`` was refused 400, and
    registering again through ``second`` added a second SmartDialog action (every reply twice)."""
    from shared.inbound import WebhookRegistration, WebhookRegistry

    WebhookRegistry.from_settings().add(
        WebhookRegistration(
            service=SECOND_TWO_WAY,
            action_id=f"a-{uuid.uuid4().hex}",
            pipeline_id="p1",
            customer_id=SECOND_CUSTOMER,
            created_at=utcnow(),
            nonce=uuid.uuid4().hex,
        )
    )  # connection: the default one
    headers = {CONNECTION_HEADER: "second", "Customer-Id": SECOND_CUSTOMER,
               "Service-Id": SECOND_TWO_WAY}  # fmt: skip
    body = {"Sender": "Clinic", "Content": "Reply YES or NO", "Recipient": "+358400000031"}

    asked = call_http("SendMessageAndWaitForReply", "POST", headers=headers, body=body)

    assert asked.status == 202, asked.body
    assert two.second.state.actions_for(SECOND_TWO_WAY) == []  # nothing registered again


def test_a_question_row_an_earlier_release_wrote_re_prompts_by_its_customer(
    two: TwoConnections,
) -> None:
    """A row without ``Connection`` (ec7daff's) re-prompts as that release did: by the
    connection that claims its customer."""
    question = QuestionRecord(
        question_id=new_question_id(SECOND_TWO_WAY, "+358400000012"), service_id=SECOND_TWO_WAY,
        address="+358400000012", message_id="m-q", created_at=utcnow(),
        expires_at=utcnow() + dt.timedelta(hours=1), reprompt="Please reply YES or NO",
        sender="Clinic", protocol="SMS", customer_id=SECOND_CUSTOMER,
    )  # fmt: skip
    entity = question.to_entity()
    assert "Connection" not in entity
    command = json.loads(reprompt_command(QuestionRecord.from_entity(entity)))
    assert "Connection" not in command
    two.env.enqueue(json.dumps(command))

    two.env.drain()

    assert len(two.second_upstream()) == 1
    assert two.env.upstream() == []


def test_another_customer_neither_sees_nor_replaces_a_question_nor_asks_on_its_service(
    two: TwoConnections,
) -> None:
    """Found by an attacker's look: an ask through ``second`` (customer 2001) naming the
    default customer's two-way service got a 409 naming that customer's open question, and
    with ReplaceOpenQuestion ended it (replaced) and queued its own send, refused upstream.
    Now it is a 400 on Service-Id (no webhook of this customer's on it): nothing is stored,
    queued or sent, and the question stays open. Should that customer have a webhook on it
    too, the other's question is still neither named nor replaced (409)."""
    from shared.inbound import WebhookRegistration, WebhookRegistry
    from shared.messages import QuestionStatus

    service = "s-1001-twoway"
    registered = call_http("RegisterInboundWebhook", "POST", route_params={"Service": service},
                           headers={"Customer-Id": "1001"})  # fmt: skip
    assert registered.status == 201, registered.body
    body = {"Sender": "Clinic", "Content": "Reply YES or NO", "Recipient": "+358400000041"}
    first = call_http("SendMessageAndWaitForReply", "POST", body=body,
                      headers={"Customer-Id": "1001", "Service-Id": service})  # fmt: skip
    assert first.status == 202, first.body
    question_id = first.body["QuestionId"]
    queued = two.env.queued()
    hostile = {CONNECTION_HEADER: "second", "Customer-Id": SECOND_CUSTOMER, "Service-Id": service}

    def ask(replace: bool, key: str | None = None) -> dict[str, object]:
        keyed = {"Idempotency-Key": key} if key else {}
        evil = {**body, "Content": "evil", "ReplaceOpenQuestion": replace}
        answer = call_http("SendMessageAndWaitForReply", "POST", body=evil,
                           headers={**hostile, **keyed})  # fmt: skip
        assert question_id not in json.dumps(answer.body)
        return {"status": answer.status, **answer.body}

    for replace, key in ((False, None), (True, None), (False, "k-1"), (True, "k-2")):
        refused = ask(replace, key)
        assert refused["status"] == 400, refused
        assert [e["field"] for e in refused["errors"]] == ["Service-Id"]  # type: ignore[attr-defined]
    theirs = WebhookRegistration(service=service, action_id=f"a-{uuid.uuid4().hex}",
                                 pipeline_id="p1", customer_id=SECOND_CUSTOMER,
                                 created_at=utcnow(), nonce=uuid.uuid4().hex)  # fmt: skip
    WebhookRegistry.from_settings().add(theirs)
    for replace, key in ((False, None), (True, None), (True, "k-3")):
        assert ask(replace, key)["status"] == 409

    assert two.env.queued() == queued
    assert two.second_upstream() == []
    open_one = QuestionStore.from_settings().get(question_id)
    assert open_one is not None
    assert open_one.status is QuestionStatus.OPEN
