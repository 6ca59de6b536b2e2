"""Connection settings: parsed on first use; every configuration error makes /api/health answer
503 naming the connection, never fails an import."""

from __future__ import annotations

import re

import pytest

from shared.connections import (
    ConnectionNotConfigured,
    connection_settings,
    connections,
    list_connections,
    route,
)
from shared.health import holding
from tests.connections.conftest import (
    SECOND_CUSTOMER,
    SECOND_SERVICE,
    SECOND_TOKEN,
    TwoConnections,
    forget_settings,
)
from tests.outbound.conftest import call_http, sms


def health_errors() -> list[dict[str, str]]:
    answer = call_http("Health", "GET")
    if answer.status == 200:
        return []
    assert answer.status == 503
    return list(answer.body["errors"])


def test_a_named_connection_overlays_the_app_wide_settings(two: TwoConnections) -> None:
    second = connection_settings("second")
    default = connection_settings(None)
    assert second.connection == "second"
    assert default.connection == "default"
    assert second.access_token is not None
    assert second.access_token.get_secret_value() == SECOND_TOKEN
    assert (second.customer_id, second.quota_calls) == (SECOND_CUSTOMER, 2000)
    # Not given for the connection: the app-wide value.
    assert second.send_max_attempts == default.send_max_attempts
    assert health_errors() == []


def test_name_is_case_insensitive_and_underscores_become_dashes(two: TwoConnections) -> None:
    two.set_connection("Sales_EU", ACCESS_TOKEN="another-token", CUSTOMERS="3001, 3002")
    assert connection_settings("sales-eu").connection == "sales-eu"
    assert route("SALES_EU", None) == "sales-eu"
    assert route(None, "3002") == "sales-eu"
    assert [c["Name"] for c in list_connections(holding)] == ["default", "sales-eu", "second"]


def test_credentials_and_account_defaults_never_fall_back(two: TwoConnections) -> None:
    two.set_connection("THIRD", CUSTOMERS="3001")
    third = connections().by_name["third"]
    assert third.settings is not None
    assert third.settings.access_token is None
    assert third.settings.service_id is None
    [error] = health_errors()
    assert error["field"] == "SMARTDIALOG_CONNECTIONS__THIRD__ACCESS_TOKEN"
    assert "Connection third" in error["message"]


@pytest.mark.parametrize(
    ("settings", "field", "words"),
    [
        ({"ACCESS_TOKEN": "t3", "CUSTOMERS": SECOND_CUSTOMER}, "__CUSTOMERS", "claimed by"),
        (
            {"ACCESS_TOKEN": SECOND_TOKEN},
            "SMARTDIALOG_CONNECTIONS__THIRD",
            "same upstream identity",
        ),
        ({"ACCESS_TOKEN": "t3", "QUOTA_CALLS": "0"}, "__QUOTA_CALLS", "greater than 0"),
        # A rule across settings names its setting, not "settings".
        ({"ACCESS_TOKEN": "t3", "SEND_TIMEOUT_SECONDS": "200"}, "__SEND_LEASE_SECONDS", "longer"),
        ({"ACCESS_TOKEN": "t3", "ACESS_TOKEN": "typo"}, "__ACESS_TOKEN", "not a setting"),
        ({"ACCESS_TOKEN": "t3", "CUSTOMERS": "1001"}, "SMARTDIALOG_CUSTOMER_ID", "claimed by"),
        ({"ACCESS_TOKEN": "t3", "CALLBACK_SECRETS": "x" * 40}, "__CALLBACK_SECRETS", "app-wide"),
        # Read before routing, or only from the app's settings: a connection's own did nothing.
        ({"ACCESS_TOKEN": "t3", "MAX_REQUEST_BYTES": "2048"}, "__MAX_REQUEST_BYTES", "app-wide"),
        (
            {"ACCESS_TOKEN": "t3", "CALLBACK_ALLOWED_HOSTS": "10.0.0.0/8"},
            "__CALLBACK_ALLOWED_HOSTS",
            "app-wide",
        ),
        # Read by the app's dispatchers and its operations page, never routed: accepted and
        # ignored before (an ops access list narrowed per connection did not narrow anything).
        *(
            ({"ACCESS_TOKEN": "t3", setting: value}, f"__{setting}", "app-wide")
            for setting, value in (
                ("DISPATCH_MAX_ATTEMPTS", "2"),
                ("DISPATCH_RETRY_BASE_SECONDS", "5"),
                ("CALLBACK_TIMEOUT_SECONDS", "3"),
                ("OPS_ALLOWED_GROUPS", "g"),
                ("OPS_ALLOWED_ROLES", "r"),
            )
        ),
        # Re-read by every status poll, which is not routed (the app's value answers it): a
        # connection's own shaped at most the first 202.
        *(
            ({"ACCESS_TOKEN": "t3", setting: value}, f"__{setting}", "app-wide")
            for setting, value in (
                ("STATUS_TOKEN_TTL_SECONDS", "3600"),
                ("SEND_STATUS_RETRY_AFTER_SECONDS", "5"),
                ("QUESTION_POLL_SECONDS", "5"),
            )
        ),
    ],
)
def test_each_configuration_error_makes_health_503_naming_the_connection(
    two: TwoConnections, settings: dict[str, str], field: str, words: str
) -> None:
    two.set_connection("THIRD", **settings)
    errors = health_errors()
    assert errors, "health should answer 503"
    assert any(field in e["field"] and words in e["message"] for e in errors), errors
    assert any("third" in e["message"] for e in errors), errors


def test_an_empty_app_wide_setting_of_a_connection_is_not_given(two: TwoConnections) -> None:
    """Empty means not given, for a connection's app-only settings as for every other: a
    template that leaves ``OPS_ALLOWED_GROUPS`` blank does not take the connection down."""
    blank = (
        "DISPATCH_MAX_ATTEMPTS",
        "CALLBACK_TIMEOUT_SECONDS",
        "OPS_ALLOWED_GROUPS",
        "STATUS_TOKEN_TTL_SECONDS",
        "QUESTION_POLL_SECONDS",
    )
    two.set_connection("SECOND", **dict.fromkeys(blank, " "))
    assert health_errors() == []
    two.set_connection("SECOND", OPS_ALLOWED_GROUPS="g")
    assert [e["field"] for e in health_errors()] == [
        "SMARTDIALOG_CONNECTIONS__SECOND__OPS_ALLOWED_GROUPS"
    ]


def test_same_client_id_and_authority_is_the_same_identity(two: TwoConnections) -> None:
    two.set_connection("A", CLIENT_ID="client-x", CLIENT_SECRET="s1")
    two.set_connection("B", CLIENT_ID="client-x", CLIENT_SECRET="s2")
    assert any("same upstream identity" in e["message"] for e in health_errors())


def test_a_connection_without_usable_credentials_shares_no_identity(two: TwoConnections) -> None:
    """Its secret an unresolved Key Vault reference, it calls nothing upstream: its error alone,
    not one of the connections as a whole that would stop every connection."""
    two.set_connection("A", CLIENT_ID="client-x", CLIENT_SECRET="s1")
    reference = "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/b)"
    two.set_connection("B", CLIENT_ID="client-x", CLIENT_SECRET=reference)
    assert [e["field"] for e in health_errors()] == ["SMARTDIALOG_CONNECTIONS__B__CLIENT_SECRET"]
    assert call_http("ListConnections", "GET").status == 200


def test_two_users_of_one_app_registration_are_two_identities(two: TwoConnections) -> None:
    """Delegated sign-in: the refresh token says which user, so two connections with one
    CLIENT_ID and their own REFRESH_TOKENs are two accounts, and the app goes on routing."""
    two.set_connection("A", CLIENT_ID="app-1", REFRESH_TOKEN="rt-user-a", CUSTOMER_ID="3001")
    two.set_connection("B", CLIENT_ID="app-1", REFRESH_TOKEN="rt-user-b", CUSTOMER_ID="3002")
    assert health_errors() == []
    assert (route(None, "1001"), route("a", None), route(None, "3002")) == ("default", "a", "b")
    sent = call_http("SendMessage", "POST", body=sms("+358400000001"))
    assert sent.status == 202, sent.body


def test_one_user_twice_and_one_client_id_in_two_cases_are_the_same_identity(
    two: TwoConnections,
) -> None:
    two.set_connection("A", CLIENT_ID="app-1", REFRESH_TOKEN="rt-user-a")
    two.set_connection("B", CLIENT_ID="app-1", REFRESH_TOKEN="rt-user-a")
    assert any("same upstream identity" in e["message"] for e in health_errors())
    two.drop_connection("A", "CLIENT_ID", "REFRESH_TOKEN")
    two.drop_connection("B", "CLIENT_ID", "REFRESH_TOKEN")
    # A client id is a GUID: its case does not make it another client.
    guid = "5E3A1C2B-0000-4000-8000-00000000000A"
    two.set_connection("A", CLIENT_ID=guid, CLIENT_SECRET="s1")
    two.set_connection("B", CLIENT_ID=guid.lower(), CLIENT_SECRET="s2")
    [error] = health_errors()
    assert error["field"] == "SMARTDIALOG_CONNECTIONS__B"
    assert "same upstream identity as connection a" in error["message"]


def test_a_token_with_surrounding_whitespace_is_the_same_token(two: TwoConnections) -> None:
    """A pasted secret's newline is no part of it: the token is used without it, and it is
    the same upstream identity as the token written without it."""
    two.set_connection("THIRD", ACCESS_TOKEN=f" {SECOND_TOKEN}\n")
    errors = health_errors()
    assert [e["field"] for e in errors] == ["SMARTDIALOG_CONNECTIONS__THIRD"], errors
    assert "same upstream identity as connection second" in errors[0]["message"]
    two.set_connection("THIRD", ACCESS_TOKEN="t3\n")
    token = connection_settings("third").access_token
    assert token is not None
    assert token.get_secret_value() == "t3"
    assert health_errors() == []


def test_default_named_explicitly_is_an_error(two: TwoConnections) -> None:
    two.set_connection("DEFAULT", ACCESS_TOKEN="t3")
    [error] = health_errors()
    assert error["field"] == "SMARTDIALOG_CONNECTIONS__DEFAULT__ACCESS_TOKEN"
    assert "plain SMARTDIALOG_*" in error["message"]


def test_two_spellings_of_one_name_are_duplicates(two: TwoConnections) -> None:
    two.set_connection("SALES_EU", ACCESS_TOKEN="t3")
    two.set_connection("sales-eu", CUSTOMERS="3001")
    assert any("named twice" in e["message"] for e in health_errors())


def test_a_broken_connection_fails_routing_with_503_not_the_import(two: TwoConnections) -> None:
    two.set_connection("THIRD", ACCESS_TOKEN="t3", CUSTOMERS=SECOND_CUSTOMER)
    import function_app  # noqa: F401 - importing never fails

    sent = call_http("SendMessage", "POST", body={"Content": "x"})
    assert sent.status == 503
    assert sent.body["type"].endswith("configuration")
    assert sent.body["errors"][0]["field"] == "SMARTDIALOG_CONNECTIONS__THIRD__CUSTOMERS"
    assert two.env.queued() == 0


def test_a_key_naming_no_connection_holds_every_connection_as_the_readme_says(
    two: TwoConnections,
) -> None:
    """``SALES_CLIENT_ID`` (one ``__`` short) may have been meant as any connection's setting,
    a claim included: every HTTP action of every connection answers 503 naming the key, and
    the default's queued sends wait too (README, Connections, Errors)."""
    import json

    from shared.outbound import OutboundSender, OutcomeKind

    key = "SMARTDIALOG_CONNECTIONS__SALES_CLIENT_ID"
    two.env.monkeypatch.setenv(key, "sales-client")
    forget_settings()
    for operation, body in (("SendMessage", sms("+358400000018")), ("ListConnections", None)):
        answer = call_http(operation, "POST" if body else "GET", body=body)
        assert answer.status == 503, operation
        assert [e["field"] for e in answer.body["errors"]] == [key]
    text = json.dumps(
        {"operation": "SendMessage", "messageId": "typo", "body": sms("+358400000019")}
    )
    waited = OutboundSender.from_settings().process(text, queue_message_id="q1")
    assert (waited.kind, waited.detail) == (OutcomeKind.DEFERRED, "configuration")
    assert two.env.upstream() == []


@pytest.mark.parametrize(
    "key",
    [
        "SMARTDIALOG_CONNECTIONS",  # azd's JSON variable (docs/deploy.md), set as an app setting
        "SMARTDIALOG_CONNECTION__SALES__CUSTOMERS",  # singular
        "SMARTDIALOG_CONNECTIONS_SALES__CUSTOMERS",  # one underscore
    ],
)
def test_a_misspelt_connection_key_is_an_error_not_a_customer_sent_through_default(
    two: TwoConnections, key: str
) -> None:
    """Found in review: such keys were ignored (health 200), so the customer they meant to
    claim for its own account was sent through ``default``'s."""
    two.env.monkeypatch.setenv(key, "2001" if key.endswith("CUSTOMERS") else '[{"name": "s"}]')
    forget_settings()
    answer = call_http("SendMessage", "POST", body=sms("+358400000017"))
    assert answer.status == 503
    assert [e["field"] for e in answer.body["errors"]] == [key]
    assert two.env.queued() == 0


def test_list_connections_names_customers_and_never_secrets(two: TwoConnections) -> None:
    answer = call_http("ListConnections", "GET")
    assert answer.status == 200
    assert answer.body["value"] == [
        {
            "Name": "default",
            "Customers": ["1001"],
            "CustomerId": "1001",
            "ServiceId": "s-1001-oneway",
        },
        {
            "Name": "second",
            "Customers": [SECOND_CUSTOMER],
            "CustomerId": SECOND_CUSTOMER,
            "ServiceId": SECOND_SERVICE,
        },
    ]
    assert "token" not in str(answer.body).lower()


def test_list_connections_names_a_broken_connection_s_settings_and_keeps_its_defaults(
    two: TwoConnections,
) -> None:
    """An operator sees why a connection's sends wait, and its defaults all the same."""
    two.set_connection("SECOND", QUOTA_CALLS="0")
    answer = call_http("ListConnections", "GET")
    assert answer.status == 200
    [_, second] = answer.body["value"]
    assert second == {
        "Name": "second",
        "Customers": [SECOND_CUSTOMER],
        "CustomerId": SECOND_CUSTOMER,
        "ServiceId": SECOND_SERVICE,
        "BrokenSettings": ["SMARTDIALOG_CONNECTIONS__SECOND__QUOTA_CALLS"],
    }


def test_list_connections_names_the_app_s_broken_settings_on_every_connection_they_hold(
    two: TwoConnections,
) -> None:
    """A setting of the app's that does not validate holds every connection's sends, and the
    default's missing credentials hold the default's: each row names what holds it."""
    two.env.configure(QUOTA_CALLS="abc", ACCESS_TOKEN="")
    answer = call_http("ListConnections", "GET")
    assert answer.status == 200, answer.body
    default, second = answer.body["value"]
    assert default["BrokenSettings"] == ["SMARTDIALOG_QUOTA_CALLS", "SMARTDIALOG_ACCESS_TOKEN"]
    assert second["BrokenSettings"] == ["SMARTDIALOG_QUOTA_CALLS"]


def test_notification_rules_may_name_a_connection_the_app_has(two: TwoConnections) -> None:
    import json
    from pathlib import Path

    from shared.notify._intake import parse_object
    from shared.notify._notify import Notifier
    from shared.notify._rules import Rule, rule_errors
    from shared.settings import get_settings

    alert = json.loads(
        (
            Path(__file__).parent.parent / "events" / "fixtures" / "alert-activated.cloudevent.json"
        ).read_text()
    )
    document = {
        "Id": "cpu",
        "Match": {"EventType": "Microsoft.AlertsManagement.Alert.Activated"},
        "Message": {"Sender": "Ops", "Content": "fired"},
        "Recipients": {"Numbers": ["+358400000011"]},
        "Connection": "SECOND",
    }
    rule = Rule.model_validate(document)
    assert rule_errors(rule) == []
    assert rule_errors(Rule.model_validate({**document, "Connection": "sales"})) == [
        ("Connection", "No connection is named 'sales'.")
    ]
    [planned] = Notifier(get_settings()).plan(parse_object(alert), rules=[rule], dry_run=True).sends
    assert planned.command.Connection == "second"


def test_a_rule_saved_through_a_connection_sends_through_it_unless_its_body_names_one(
    two: TwoConnections,
) -> None:
    """A rule created through connection ``second`` (the connector names it on every call)
    without a Connection of its own was saved as the default account's. A body naming another
    connection than the request's was then a 400: editing a rule with what GetNotificationRule
    gave, through another connection, failed, and one connector connection could not manage
    the rules of several accounts. The body's Connection wins."""
    from shared.connections import CONNECTION_HEADER

    through = {CONNECTION_HEADER: "Second"}
    rule = {
        "Id": "routed",
        "Match": {"EventType": "x.y"},
        "Message": {"Sender": "Ops", "Content": "fired"},
        "Recipients": {"Numbers": ["+358400000011"]},
    }
    route = {"RuleId": "routed"}
    try:
        made = call_http("CreateNotificationRule", "POST", body=rule, headers=through)
        assert (made.status, made.body["Connection"]) == (201, "second"), made.body
        got = call_http("GetNotificationRule", "GET", route_params=route)  # the default's
        edited = {k: v for k, v in got.body.items() if k != "Id"} | {"Description": "edited"}
        kept = call_http("UpdateNotificationRule", "PUT", body=edited, route_params=route)
        assert (kept.status, kept.body["Connection"]) == (200, "second"), kept.body
        update = {k: v for k, v in rule.items() if k != "Id"}
        named = call_http("UpdateNotificationRule", "PUT", body={**update, "Connection":
                          "default"}, headers=through, route_params=route)  # fmt: skip
        assert (named.status, named.body["Connection"]) == (200, "default"), named.body
        routed = call_http(
            "UpdateNotificationRule", "PUT", body=update, headers=through, route_params=route
        )
        assert (routed.status, routed.body["Connection"]) == (200, "second"), routed.body
        plain = call_http("UpdateNotificationRule", "PUT", body=update, route_params=route)
        assert (plain.status, plain.body["Connection"]) == (200, "default"), plain.body
        other = call_http("CreateNotificationRule", "POST", body={**rule, "Id": "other",
                          "Connection": "x"}, headers=through)  # fmt: skip
        assert other.status == 400, other.body
        assert [e["field"] for e in other.body["errors"]] == ["Connection"]
    finally:
        call_http("DeleteNotificationRule", "DELETE", route_params=route)


def test_a_rules_connection_has_no_schema_default_a_designer_would_pre_fill() -> None:
    """The swagger said default "default": a designer pre-filling it saved every rule made
    through a named connection as the default account's (or, later, answered 400)."""
    from shared.notify import Rule

    connection = Rule.model_json_schema()["properties"]["Connection"]
    assert "default" not in connection
    assert "routed to when left out" in connection["description"]


@pytest.mark.parametrize("raw_name", ["X" * 65, "SALES.EU", "-SALES"])
def test_a_name_the_header_and_key_vault_cannot_carry_is_a_configuration_error(
    two: TwoConnections, raw_name: str
) -> None:
    two.set_connection(raw_name, ACCESS_TOKEN="t3", CUSTOMERS="3001")
    errors = health_errors()
    prefix = f"SMARTDIALOG_CONNECTIONS__{raw_name}__"
    assert sorted(e["field"] for e in errors) == [prefix + "ACCESS_TOKEN", prefix + "CUSTOMERS"]
    assert all("a name is 1-64 letters" in e["message"] for e in errors), errors
    with pytest.raises(ConnectionNotConfigured):  # its customers go nowhere else meanwhile
        route(None, "3001")


def test_a_connections_bad_setting_is_told_in_our_words_not_pydantics_prefix(
    two: TwoConnections,
) -> None:
    two.set_connection("THIRD", ACCESS_TOKEN="t3", BASE_URL="ftp://files.example/v1")
    [error] = [e for e in health_errors() if e["field"].endswith("__BASE_URL")]
    assert error["message"].startswith("Connection third: "), error
    assert "Value error" not in error["message"], error


def test_a_connection_with_a_bad_setting_keeps_its_customer_and_answers_503(
    two: TwoConnections,
) -> None:
    two.set_connection("THIRD", ACCESS_TOKEN="t3", CUSTOMER_ID="3001", QUOTA_CALLS="abc")
    assert route(None, "3001") == "third"  # not the default account
    sent = call_http(
        "SendMessage",
        "POST",
        body={"Sender": "S", "Content": "x", "Recipients": [{"Address": "+358400000013"}]},
        headers={"Customer-Id": "3001", "Service-Id": "s-3001"},
    )
    assert sent.status == 503, sent.body
    assert any("QUOTA_CALLS" in e["field"] for e in sent.body["errors"]), sent.body
    assert two.env.queued() == 0
    assert two.env.upstream() == []


def test_every_connection_shares_the_apps_storage_clients(two: TwoConnections) -> None:
    from shared import storage

    for name in ("third", "fourth", "fifth", "sixth"):
        two.set_connection(name, ACCESS_TOKEN=f"{name}-token", CUSTOMERS=f"4{len(name)}01")
    every = [connection_settings(n) for n in (None, "second", "third", "fourth", "fifth", "sixth")]
    assert len({id(s) for s in every}) == 6  # six settings objects
    # One client (one connection pool) per storage service, whichever connection asks, and it
    # stays cached however many connections there are (the caches hold four entries).
    for service in (storage.queue_service, storage.table_service, storage.blob_service):
        clients = {id(service(s)) for s in every + every}
        assert len(clients) == 1, service.__name__
    assert storage.queue_client("q", every[5]).url == storage.queue_client("q", every[0]).url


def test_the_readme_names_every_app_wide_setting_a_connection_may_not_set() -> None:
    """README's row for a connection's other settings listed the app-wide ones but left out
    TRACE_SAMPLING_RATIO: a reader expected it allowed and got a configuration error."""
    from pathlib import Path

    from shared.connections import APP_WIDE

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    [row] = [
        line
        for line in readme.splitlines()
        if line.startswith("| `SMARTDIALOG_CONNECTIONS__<NAME>__<SETTING>`")
    ]
    listed = set(re.findall(r"`([A-Z_]+)`", row.split("Not ", 1)[1].split(": they", 1)[0]))
    assert listed == set(APP_WIDE)
