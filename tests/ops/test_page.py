"""The operations page through the real functions: what it shows, who may see it in Azure (the
Easy Auth principal against the allowed groups and roles), and its buttons' form token."""

from __future__ import annotations

import base64
import json
import logging
import re
from typing import Any
from urllib.parse import urlencode

import azure.functions as func
import pytest

from shared.deadletters import write_dead_letter
from shared.names import OUTBOUND_DEAD_LETTER_QUEUE
from shared.ops._access import LOCAL, form_token
from shared.settings import get_settings, reset_settings_cache
from shared.storage import queue_client
from tests.ops.conftest import Outbound, letter
from tests.outbound.conftest import app_function

GROUP = "6a1f0c6e-0000-4000-8000-000000000001"


def principal(
    oid: str = "user-1",
    *,
    groups: tuple[str, ...] = (),
    roles: tuple[str, ...] = (),
    more: tuple[tuple[str, str], ...] = (),
) -> str:
    claims: list[dict[str, Any]] = [
        {"typ": "http://schemas.microsoft.com/identity/claims/objectidentifier", "val": oid},
        {"typ": "name", "val": "Ada Operator"},
    ]
    claims += [{"typ": "groups", "val": g} for g in groups]
    claims += [{"typ": "roles", "val": r} for r in roles]
    claims += [{"typ": typ, "val": val} for typ, val in more]
    document = {"auth_typ": "aad", "claims": claims, "role_typ": "roles", "name_typ": "name"}
    return base64.b64encode(json.dumps(document).encode()).decode()


def get_page(headers: dict[str, str] | None = None, query: str = "") -> func.HttpResponse:
    from urllib.parse import parse_qsl

    request = func.HttpRequest(
        "GET",
        f"http://localhost/api/ops{query}",
        headers=headers or {},
        params=dict(parse_qsl(query.removeprefix("?"))),
        body=b"",
    )
    return app_function("OpsPage")(request)  # type: ignore[no-any-return]


def press(
    action: str, form: dict[str, str], headers: dict[str, str] | None = None
) -> func.HttpResponse:
    request = func.HttpRequest(
        "POST",
        f"http://localhost/api/ops/{action}",
        headers={"Content-Type": "application/x-www-form-urlencoded", **(headers or {})},
        route_params={"Action": action},
        body=urlencode(form).encode(),
    )
    return app_function("OpsPageAction")(request)  # type: ignore[no-any-return]


def csrf_of(page: func.HttpResponse) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page.get_body().decode())
    assert match, "the page has no form token"
    return match.group(1)


@pytest.fixture
def in_azure(monkeypatch: pytest.MonkeyPatch, ops: Outbound) -> Outbound:
    """App Service with authentication on, the page allowed to GROUP."""
    monkeypatch.setenv("WEBSITE_INSTANCE_ID", "0123456789abcdef")
    monkeypatch.setenv("WEBSITE_AUTH_ENABLED", "True")
    monkeypatch.setenv("SMARTDIALOG_OPS_ALLOWED_GROUPS", GROUP)
    reset_settings_cache()
    return ops


def one_letter() -> None:
    write_dead_letter(
        queue_client(OUTBOUND_DEAD_LETTER_QUEUE),
        letter(messageId="page-1", detail="Not sent <b>in time</b>"),
        queue_name=OUTBOUND_DEAD_LETTER_QUEUE,
    )


def test_locally_the_page_is_open_and_shows_queues_quota_and_dead_letters(ops: Outbound) -> None:
    one_letter()

    page = get_page()

    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    html = page.get_body().decode()
    for section in ('id="quota"', 'id="queues"', 'id="deadletters"', 'id="sends"'):
        assert section in html
    assert "smartdialog-outbound-poison" in html
    assert "page-1" in html
    assert 'id="unconfigured"' not in html  # (named at the top only while one does not validate)
    # Autoescaped: a letter's text never becomes markup.
    assert "&lt;b&gt;in time&lt;/b&gt;" in html


def test_a_failing_configuration_check_leaves_the_page_without_its_banner_not_a_500(
    ops: Outbound, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Found in review: the check runs before the page's own guard, so its failure escaped the
    function (a bare 500, its traceback unredacted)."""
    from shared.ops import page

    def broken() -> None:
        raise RuntimeError("table down: https://q.test/t?sv=1&sig=SECRETSIGNATURE")

    monkeypatch.setattr(page, "configuration_problem", broken)
    with caplog.at_level(logging.ERROR, logger="shared.ops"):
        answer = get_page()

    assert answer.status_code == 200
    assert 'id="unconfigured"' not in answer.get_body().decode()
    assert "the configuration check failed" in caplog.text
    assert "SECRETSIGNATURE" not in caplog.text


def test_a_500s_traceback_is_logged_with_the_secrets_it_quotes_cut(
    ops: Outbound, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The page logged the traceback whole: an error quoting a URL logged its sig=."""
    from shared.ops import page
    from tests.crash import crash_once

    crash_once(
        monkeypatch,
        page,
        "overview",
        "table down: https://q.test/intake?sv=1&sig=SASsignatureQUOTED1",
    )
    with caplog.at_level(logging.ERROR, logger="shared"):
        assert get_page().status_code == 500
    assert "table down: https://q.test/intake?sv=1&sig=***" in caplog.text
    assert "SASsignaturehttps://q.test/intake?sv=1&sig=SASsignatureQUOTED1D1" not in caplog.text


@pytest.mark.parametrize("sent", [{"x-request-id": "page-run-7"}, {}])
def test_a_500_names_its_instance_and_the_log_line_its_request(
    ops: Outbound,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    sent: dict[str, str],
) -> None:
    """The body said "Quote the instance when you report it." and had none, and the log line
    named no request to find it by: as the actions, the caller's tracking id or a fresh one."""
    from shared.ops import page
    from tests.crash import crash_once

    crash_once(monkeypatch, page, "overview", "table down")
    with caplog.at_level(logging.ERROR, logger="shared"):
        answer = get_page(headers=sent)

    assert answer.status_code == 500
    instance = json.loads(answer.get_body())["instance"]
    request = instance.removeprefix("urn:smartdialog-functions:request:")
    assert request != instance
    assert request == sent.get("x-request-id", request)
    [line] = [r.getMessage() for r in caplog.records if "ops page failed" in r.getMessage()]
    assert f"request {request}:" in line


@pytest.mark.parametrize("environment", ["Production", None])
def test_hosted_off_app_service_the_page_and_its_buttons_answer_403_to_everyone(
    ops: Outbound, monkeypatch: pytest.MonkeyPatch, environment: str | None
) -> None:
    """Not local development and not App Service (a container, say): nobody vouches for the
    principal header, so nothing is open, whatever header comes."""
    if environment is None:
        monkeypatch.delenv("AZURE_FUNCTIONS_ENVIRONMENT")
    else:
        monkeypatch.setenv("AZURE_FUNCTIONS_ENVIRONMENT", environment)
    for name in ("WEBSITE_INSTANCE_ID", "WEBSITE_HOSTNAME"):
        monkeypatch.delenv(name, raising=False)
    reset_settings_cache()
    one_letter()
    forged = {"X-MS-CLIENT-PRINCIPAL": principal(groups=(GROUP,))}

    page = get_page(forged)
    pressed = press("redrive", {"id": "x", "csrf": form_token(get_settings(), LOCAL)}, forged)

    assert page.status_code == 403
    assert "page-1" not in page.get_body().decode()
    assert pressed.status_code == 403


def test_in_azure_without_a_principal_the_page_answers_401(in_azure: Outbound) -> None:
    page = get_page()
    assert page.status_code == 401
    assert json.loads(page.get_body())["type"].endswith(":unauthorized")


def test_in_azure_a_principal_in_no_allowed_group_or_role_gets_403(in_azure: Outbound) -> None:
    page = get_page({"X-MS-CLIENT-PRINCIPAL": principal(groups=("another-group",))})
    assert page.status_code == 403


@pytest.mark.parametrize("overage", [("_claim_names", '{"groups":"src1"}'), ("hasgroups", "true")])
def test_in_azure_a_token_with_too_many_groups_to_list_is_told_so_and_the_workaround(
    in_azure: Outbound, overage: tuple[str, str]
) -> None:
    """Entra ID sends no groups claim for a user in over 200 groups (150 in a SAML token, 6 in
    an implicit flow's), only where to ask Graph: the 403 said the user was in none of the
    allowed groups, which may be false."""
    page = get_page({"X-MS-CLIENT-PRINCIPAL": principal(more=(overage,))})

    assert page.status_code == 403
    detail = json.loads(page.get_body())["detail"]
    assert "none of the allowed groups" not in detail
    assert "groups overage" in detail
    assert "SMARTDIALOG_OPS_ALLOWED_ROLES" in detail


def test_in_azure_a_member_of_an_allowed_group_sees_the_page(in_azure: Outbound) -> None:
    page = get_page({"X-MS-CLIENT-PRINCIPAL": principal(groups=(GROUP,))})
    assert page.status_code == 200
    assert "Ada Operator" in page.get_body().decode()


def test_an_allowed_role_is_enough(in_azure: Outbound, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTDIALOG_OPS_ALLOWED_ROLES", "Ops.Operator")
    reset_settings_cache()
    page = get_page({"X-MS-CLIENT-PRINCIPAL": principal(roles=("Ops.Operator",))})
    assert page.status_code == 200


def test_with_authentication_off_a_forged_principal_is_refused(
    in_azure: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WEBSITE_AUTH_ENABLED")
    page = get_page({"X-MS-CLIENT-PRINCIPAL": principal(groups=(GROUP,))})
    assert page.status_code == 403


def test_a_button_without_a_valid_form_token_changes_nothing(ops: Outbound) -> None:
    one_letter()
    [row_id] = re.findall(r'data-id="([^"]+)"', get_page().get_body().decode())

    for form in ({"id": row_id}, {"id": row_id, "csrf": "v1.0.forged"}):
        answer = press("redrive", form)
        assert answer.status_code == 403
    assert len(queue_client(OUTBOUND_DEAD_LETTER_QUEUE).peek_messages()) == 1


def test_a_form_token_served_to_one_user_does_not_work_for_another(in_azure: Outbound) -> None:
    one_letter()
    alice = {"X-MS-CLIENT-PRINCIPAL": principal("alice", groups=(GROUP,))}
    bob = {"X-MS-CLIENT-PRINCIPAL": principal("bob", groups=(GROUP,))}
    page = get_page(alice)
    [row_id] = re.findall(r'data-id="([^"]+)"', page.get_body().decode())

    refused = press("purge", {"id": row_id, "csrf": csrf_of(page)}, bob)
    assert refused.status_code == 403
    assert len(queue_client(OUTBOUND_DEAD_LETTER_QUEUE).peek_messages()) == 1

    done = press("purge", {"id": row_id, "csrf": csrf_of(page)}, alice)
    assert done.status_code == 303
    assert done.headers["Location"].startswith("../ops?done=")
    assert queue_client(OUTBOUND_DEAD_LETTER_QUEUE).peek_messages() == []


def test_a_button_without_an_id_answers_400_naming_it(ops: Outbound) -> None:
    answer = press("redrive", {"csrf": form_token(get_settings(), LOCAL)})

    assert answer.status_code == 400
    assert [e["field"] for e in json.loads(answer.get_body())["errors"]] == ["id"]


def test_an_unknown_button_answers_404_and_changes_nothing(ops: Outbound) -> None:
    one_letter()
    form = {"csrf": form_token(get_settings(), LOCAL), "id": "x"}
    answer = press("explode", form, headers={"x-request-id": "page-run-9"})
    assert answer.status_code == 404
    assert answer.headers["Content-Type"] == "application/problem+json"
    # It names its request, as the page's other problems do.
    instance = json.loads(answer.get_body())["instance"]
    assert instance == "urn:smartdialog-functions:request:page-run-9"
    assert len(queue_client(OUTBOUND_DEAD_LETTER_QUEUE).peek_messages()) == 1


def test_without_callback_secrets_the_page_answers_503_naming_the_setting(
    ops: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SMARTDIALOG_CALLBACK_SECRETS")
    reset_settings_cache()

    page = get_page()

    assert page.status_code == 503
    problem = json.loads(page.get_body())
    assert "SMARTDIALOG_CALLBACK_SECRETS" in problem["detail"]
    assert problem["type"].endswith(":configuration"), problem
    assert [e["field"] for e in problem.get("errors", [])] == ["SMARTDIALOG_CALLBACK_SECRETS"], (
        problem
    )


def test_the_page_shows_the_oldest_dead_letters_of_all_queues(ops: Outbound) -> None:
    """The index lists oldest first within one queue: read unfiltered, one queue's 60 letters
    (its name sorts first) filled the page and hid an older failed send of another."""
    import datetime as dt

    from shared.deadletters import DeadLetterIndex
    from shared.names import CLOUD_EVENTS_DEAD_LETTER_QUEUE
    from shared.ops.page import PAGE_DEAD_LETTERS

    now = dt.datetime.now(dt.UTC)
    index = DeadLetterIndex.from_settings()
    events = queue_client(CLOUD_EVENTS_DEAD_LETTER_QUEUE)
    for n in range(PAGE_DEAD_LETTERS + 10):
        write_dead_letter(
            events,
            letter(messageId=f"event-{n}"),
            queue_name=CLOUD_EVENTS_DEAD_LETTER_QUEUE,
            index=index,
            now=now - dt.timedelta(seconds=60 - n),
        )
    write_dead_letter(
        queue_client(OUTBOUND_DEAD_LETTER_QUEUE),
        letter(messageId="oldest-send"),
        queue_name=OUTBOUND_DEAD_LETTER_QUEUE,
        index=index,
        now=now - dt.timedelta(hours=1),
    )

    html = get_page().get_body().decode()

    assert "oldest-send" in html
    assert "event-0" in html
    assert f"event-{PAGE_DEAD_LETTERS + 9}" not in html
    assert "More dead letters than shown" in html


def test_the_page_names_each_button_its_letter_and_lands_on_the_outcome(ops: Outbound) -> None:
    """On a phone the page showed at 40% (no viewport), every button was announced as the same
    "Purge", two headers were empty, and an action's outcome was neither announced nor focused:
    a screen-reader user could not tell which letter a button purges, nor what it did."""
    one_letter()
    page = get_page()
    html = page.get_body().decode()
    [row_id] = re.findall(r'name="id" value="([^"]+)"', html)[:1]
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert "<main>" in html
    assert "<th></th>" not in html
    assert len(re.findall(r'aria-label="Purge dead letter [^"]+"', html)) == 1
    assert 'aria-labelledby="deadletters-heading"' in html
    done = press("purge", {"id": row_id, "csrf": csrf_of(page)})
    assert done.headers["Location"].endswith("#notice")
    back = done.headers["Location"].removeprefix("../ops").removesuffix("#notice")
    shown = get_page(query=back).get_body().decode()
    assert re.search(
        r'<p class="notice" id="notice" role="status" tabindex="-1">[^<]*purged', shown
    )
    assert re.search(r"<title>[^<]*purged[^<]*</title>", shown)


def test_only_a_buttons_own_outcome_is_shown_not_a_links_text(ops: Outbound) -> None:
    """A crafted ?done= would put any text on the trusted page (say, where to sign in)."""
    one_letter()
    page = get_page()
    [row_id] = re.findall(r'name="id" value="([^"]+)"', page.get_body().decode())[:1]
    done = press("purge", {"id": row_id, "csrf": csrf_of(page)})
    location = done.headers["Location"]

    shown = (
        get_page(query=location.removeprefix("../ops").removesuffix("#notice")).get_body().decode()
    )
    crafted = get_page(query="?done=Session+expired:+sign+in+at+evil.example").get_body().decode()

    assert f"{row_id}: purged" in shown
    assert "evil.example" not in crafted


def test_a_button_on_a_letter_another_call_is_redriving_says_so_on_the_page(
    ops: Outbound,
) -> None:
    """A re-drive that can do nothing now (409: busy) is a notice, not a JSON problem page."""
    import datetime as dt

    from shared.deadletters import DeadLetterIndex

    one_letter()
    page = get_page()
    [row_id] = re.findall(r'name="id" value="([^"]+)"', page.get_body().decode())[:1]
    index = DeadLetterIndex.from_settings()
    entry = index.get(row_id)
    assert entry is not None
    now = dt.datetime.now(dt.UTC)
    claimed, _ = index.claim(entry, now=now, until=now + dt.timedelta(minutes=5))
    assert claimed  # another caller holds it

    done = press("redrive", {"id": row_id, "csrf": csrf_of(page)})

    assert done.status_code == 303
    back = done.headers["Location"].removeprefix("../ops").removesuffix("#notice")
    shown = get_page(query=back).get_body().decode()
    assert f"{row_id}: not done:" in shown
    assert index.get(row_id) is not None  # the letter stays
    assert len(queue_client("smartdialog-outbound").peek_messages()) == 0  # nothing sent


def test_the_recent_sends_read_a_bounded_part_of_the_message_table_and_say_so(
    ops: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FinishedAt is no key: every GET /api/ops had the service scan the whole message table,
    page after page, whatever it held (the cap counted only the rows it matched)."""
    from shared.clock import utcnow
    from shared.ops import _overview
    from tests.outbound.conftest import DELIVERED, sms

    for n in range(5):
        ops.enqueue({"operation": "SendMessage", "messageId": f"fig-{n}", "body": sms(DELIVERED)})
    ops.drain()
    monkeypatch.setattr(_overview, "SENDS_PAGE_ROWS", 2, raising=False)
    monkeypatch.setattr(_overview, "SENDS_PAGES", 2, raising=False)

    figures = _overview.send_figures(get_settings(), utcnow())
    html = get_page().get_body().decode()

    assert figures.truncated
    assert 0 < sum(figures.by_status.values()) <= 4
    assert "&ge; " in html


def test_a_button_with_an_id_longer_than_any_dead_letters_answers_400_naming_it(
    ops: Outbound,
) -> None:
    """Any length was taken and sent back in the Location header's notice."""
    long_id = f"{OUTBOUND_DEAD_LETTER_QUEUE}~{'a' * 500}"
    answer = press("purge", {"csrf": form_token(get_settings(), LOCAL), "id": long_id})

    assert answer.status_code == 400
    assert "Location" not in answer.headers
    [error] = json.loads(answer.get_body())["errors"]
    assert error["field"] == "id"
    assert "400 characters" in error["message"]


def test_a_button_logs_no_line_break_an_id_or_a_user_carried(
    in_azure: Outbound, caplog: pytest.LogCaptureFixture
) -> None:
    """A poison id with a line break passed for a GUID (``uuid.UUID`` strips blanks), was
    looked for, and its notice logged with the line break, as was the user's id: forged log
    lines."""
    one_letter()
    user = {"X-MS-CLIENT-PRINCIPAL": principal("ada\nforged", groups=(GROUP,))}
    page = get_page(user)
    [row_id] = re.findall(r'data-id="([^"]+)"', page.get_body().decode())
    caplog.set_level("INFO", logger="shared.ops")

    forged = f"smartdialog-dlr-forward-poison~\n{'a' * 31}"
    odd = press("redrive", {"csrf": csrf_of(page), "id": forged}, user)
    purged = press("purge", {"csrf": csrf_of(page), "id": row_id}, user)

    assert odd.status_code == 303
    assert "already+handled" in odd.headers["Location"]
    assert purged.status_code == 303
    logged = [r.getMessage() for r in caplog.records if r.name == "shared.ops"]
    assert any("by ada\\x0aforged" in line for line in logged), logged
    assert all("\n" not in line for line in logged), logged


def test_a_buttons_audit_line_names_an_entra_object_id_whole(
    in_azure: Outbound, caplog: pytest.LogCaptureFixture
) -> None:
    """Found in review: the operator's id went through the phone-number masking, which took
    the first group of about 2.5 % of random GUIDs (this one's) for a number: "purged by
    ***17-bd14-...", so who purged a letter could not be searched for."""
    oid = "11030917-bd14-4ad9-be7f-8a91699c9d63"
    one_letter()
    user = {"X-MS-CLIENT-PRINCIPAL": principal(oid, groups=(GROUP,))}
    page = get_page(user)
    [row_id] = re.findall(r'data-id="([^"]+)"', page.get_body().decode())
    caplog.set_level("INFO", logger="shared.ops")
    assert press("purge", {"csrf": csrf_of(page), "id": row_id}, user).status_code == 303
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ops page:")]
    assert line.endswith(f"purged by {oid}"), line
