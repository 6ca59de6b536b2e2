"""A setting that does not validate stops the functions that read it, not the others.

It used to answer 503 on every HTTP function but health: a typo in ``SMARTDIALOG_QUOTA_CALLS``
stopped SmartDialog's inbound messages and delivery reports, the status URLs and the
operator's page and dead-letter list along with the sends it should hold."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import pytest

from shared.callback_urls import delivery_report_url
from shared.health import configuration_problem
from shared.names import OUTBOUND_QUEUE
from shared.ops.page import handle_page
from shared.settings import SettingsInvalid, StorageSettings, get_settings
from shared.settings_leniency import PartlySettings, leniently
from shared.storage import queue_client
from shared.unconfigured import RECHECK_SECONDS
from tests.inbound.conftest import ONE_WAY, Inbound
from tests.inbound.test_delivery_reports import report
from tests.inbound.test_webhook import payload, post, take_intake, token_for

BROKEN = "SMARTDIALOG_QUOTA_CALLS"
SEND_TO = "+358401234567"
SEND = {"Sender": "Shop", "Content": "Hi", "Recipients": [{"Address": SEND_TO}]}


def _queued() -> int:
    queue = queue_client(OUTBOUND_QUEUE, StorageSettings())  # (read while the others are broken)
    return int(queue.get_queue_properties().approximate_message_count)


def test_a_broken_quota_setting_holds_the_sends_not_the_callbacks_status_urls_or_ops(
    inbound: Inbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_FUNCTIONS_ENVIRONMENT", "Development")  # (the page opens locally)
    accepted = inbound.call("SendMessage", "POST", headers={"Service-Id": ONE_WAY}, body=SEND)
    assert accepted.status == 202, accepted.body
    location = urlsplit(accepted.headers["Location"])
    message_id = location.path.rsplit("/", 1)[-1]
    token = token_for()  # (signed while the settings validate; checked after the break)
    dlr = dict(parse_qsl(urlsplit(delivery_report_url(get_settings(), message_id)).query))
    inbound.configure(QUOTA_CALLS="lots")
    queued = _queued()

    problem = configuration_problem()
    assert problem is not None
    assert [e.field for e in problem.errors] == [BROKEN]
    refused = inbound.call("SendMessage", "POST", headers={"Service-Id": ONE_WAY}, body=SEND)
    assert refused.status == 503, refused.body
    assert [e["field"] for e in refused.body["errors"]] == [BROKEN]
    assert _queued() == queued  # nothing accepted

    # SmartDialog's inbound message: on the intake queue, as ever (its processor, a queue
    # trigger, puts it back until the settings are fixed).
    assert post(inbound, payload(), token=token).status == 202
    with leniently():  # (the test's own read of the queue)
        assert len(take_intake(inbound)) == 1

    # Its delivery report (SmartDialog's other callback) is taken too.
    reported = report(inbound, message_id, dlr["token"], status="delivered", recipient=SEND_TO)
    assert reported.status == 200, reported.body

    # The status URL of the message accepted before: pending, back in a minute (its sender is
    # held by the broken setting), not a 503.
    status = inbound.call(
        "GetMessageStatus",
        "GET",
        route_params={"MessageId": message_id},
        params=dict(parse_qsl(location.query)),
    )
    assert status.status == 202, status.body
    with leniently():
        most = get_settings().send_status_retry_after_seconds
    assert status.headers["Retry-After"] == str(min(RECHECK_SECONDS, most))  # (else 1)

    # The operator's tools: the page names the broken quota in its row.
    assert inbound.call("ListDeadLetters", "GET").status == 200
    missing = inbound.call("GetDeadLetter", "GET", route_params={"DeadLetterId": "none"})
    assert missing.status == 404, missing.body
    assert inbound.call("ListConnections", "GET").status == 200
    page = handle_page({}, {}, "/api/ops")
    assert page.status == 200, page.body
    assert f"Fix these settings: {BROKEN}." in page.body.decode()


def test_outside_a_lenient_function_the_settings_still_refuse_as_a_whole(
    inbound: Inbound,
) -> None:
    inbound.configure(QUOTA_CALLS="lots")
    with pytest.raises(SettingsInvalid) as whole:
        get_settings()
    assert [e.field for e in whole.value.errors] == [BROKEN]

    with leniently():
        held = get_settings()
        assert isinstance(held, PartlySettings)
        assert held.customer_id == get_settings().customer_id  # the others as set
        with pytest.raises(SettingsInvalid) as read:
            held.quota_calls  # noqa: B018 - reading it is what refuses
        assert [e.field for e in read.value.errors] == [BROKEN]
        with leniently():  # nested: the same held settings
            assert get_settings() is held
    with pytest.raises(SettingsInvalid):
        get_settings()


def test_a_broken_setting_a_lenient_function_reads_is_its_503(inbound: Inbound) -> None:
    """The callback secrets (a Key Vault reference the platform did not resolve: they do not
    validate): the webhook checks its token with them, so it answers 503 naming them, and
    SmartDialog retries."""
    token = token_for()
    inbound.configure(
        CALLBACK_SECRETS="@Microsoft.KeyVault(SecretUri=https://v.vault.azure.net/secrets/s)"
    )
    with pytest.raises(SettingsInvalid):
        get_settings()  # (not valid as a whole: the webhook reads them leniently)
    answer = post(inbound, payload(), token=token)
    assert answer.status == 503, answer.body
    assert "SMARTDIALOG_CALLBACK_SECRETS" in {e["field"] for e in answer.body["errors"]}
    inbound.configure(CALLBACK_SECRETS="x" * 40)
    assert take_intake(inbound) == []


def test_a_named_connection_refuses_the_broken_setting_it_inherits_not_one_of_its_own(
    inbound: Inbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.connections import connections, reset_connections_cache

    for name, customer, own in (("SECOND", "2001", None), ("THIRD", "3001", "50")):
        monkeypatch.setenv(f"SMARTDIALOG_CONNECTIONS__{name}__ACCESS_TOKEN", f"{name}-token")
        monkeypatch.setenv(f"SMARTDIALOG_CONNECTIONS__{name}__CUSTOMER_ID", customer)
        if own is not None:
            monkeypatch.setenv(f"SMARTDIALOG_CONNECTIONS__{name}__QUOTA_CALLS", own)
    inbound.configure(QUOTA_CALLS="lots")
    reset_connections_cache()
    with leniently():
        by_name = connections().by_name
        second, third = by_name["second"].settings, by_name["third"].settings
        assert second is not None
        assert third is not None
        with pytest.raises(SettingsInvalid) as read:
            second.quota_calls  # noqa: B018 - the app's, which does not validate
        assert [e.field for e in read.value.errors] == [BROKEN]
        assert third.quota_calls == 50  # its own
        assert second.customer_id == "2001"
    reset_connections_cache()


def test_a_setting_that_does_not_validate_holds_the_sends_a_status_poll_sees(
    inbound: Inbound,
) -> None:
    """GetBulkStatus re-drove every idle pack of a batch (a pack not held looks stuck) while a
    quota setting that does not validate held them all: the poll must see them held."""
    from shared.outbound._ports import held_settings

    with leniently():
        assert held_settings(None, get_settings())[1] is False
    inbound.configure(QUOTA_CALLS="lots")
    with leniently():
        assert held_settings(None, get_settings())[1] is True


def test_a_broken_authority_leaves_the_connection_list_and_the_ops_page_answering(
    inbound: Inbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection that signs in with a client secret is known by its client id at its
    authority: with the app's authority broken, listing the connections read it and answered
    503 (the ops page and ListConnections, though neither calls SmartDialog)."""
    from shared.connections import reset_connections_cache

    monkeypatch.setenv("AZURE_FUNCTIONS_ENVIRONMENT", "Development")  # (the page opens locally)
    monkeypatch.setenv("SMARTDIALOG_CONNECTIONS__SECOND__CLIENT_ID", "client-x")
    monkeypatch.setenv("SMARTDIALOG_CONNECTIONS__SECOND__CLIENT_SECRET", "s-1")
    monkeypatch.setenv("SMARTDIALOG_CONNECTIONS__SECOND__CUSTOMER_ID", "2001")
    inbound.configure(AUTHORITY="not a url")
    reset_connections_cache()

    listed = inbound.call("ListConnections", "GET")

    assert listed.status == 200, listed.body
    assert "second" in {c["Name"] for c in listed.body["value"]}, listed.body
    page = handle_page({}, {}, "/api/ops")
    assert page.status == 200, page.body
    assert 'id="unconfigured"' in (html := page.body.decode())  # at the top, as health names it
    assert "Fix these settings: SMARTDIALOG_AUTHORITY." in html
    refused = inbound.call("SendMessage", "POST", headers={"Connection": "second"}, body=SEND)
    assert refused.status == 503, refused.body
    assert "SMARTDIALOG_AUTHORITY" in {e["field"] for e in refused.body["errors"]}
    reset_connections_cache()
