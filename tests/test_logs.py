"""Logging set in code at start-up (shared/logs.py), and the test run's leak detector itself."""

from __future__ import annotations

import ast
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.clock import ManualClock
from shared.logs import (
    HTTP_LIBRARY_LEVELS,
    RedactUrls,
    configure_logging,
    cut_secrets,
    loggable_text,
    redacted,
    redacted_traceback,
)
from tests.fixtures.leaks import LeakDetector, findings_in, watch_content, watch_secret
from tests.fixtures.sandbox import SandboxServer

ROOT = Path(__file__).resolve().parent.parent

# --- shared/logs.py -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "cut"),
    [
        ("GET /api/dlr/m-1?token=v1.abc&code=KEY", "GET /api/dlr/m-1?token=***&code=***"),
        ("Authorization: Bearer eyJ.x.y", "Authorization: Bearer ***"),
        ("see https://q.test/x?sv=1&sig=SAS'", "see https://q.test/x?sv=1&sig=***'"),
        ("a_access_token=AT refresh_token=RT client_secret=CS", "a_access_token=*** "
         "refresh_token=*** client_secret=***"),
        ("zipcode=00100 errorcode=5 tokens=3", "zipcode=00100 errorcode=5 tokens=3"),
        # Left whole before: \b failed after _, and other than name= forms were not looked at.
        ("id_token=ID sas_token=SAS", "id_token=*** sas_token=***"),
        ('{"access_token":"AT","refresh_token": "RT","client_secret":CS}',
         '{"access_token":"***","refresh_token": "***","client_secret":***}'),
        ("dlr=https%3A%2F%2Fa.test%2Fdlr%3Ftoken%3DTOK%26code%3DKEY",
         "dlr=https%3A%2F%2Fa.test%2Fdlr%3Ftoken%3D***%26code%3D***"),
        ("x-functions-key: KEY== {'x-functions-key': 'KEY'}",
         "x-functions-key: *** {'x-functions-key': '***'}"),
        ('{"code": "rate-limited", "token_type": "Bearer", "tokens": 3} error_code=5 mytoken=1',
         '{"code": "rate-limited", "token_type": "Bearer", "tokens": 3} error_code=5 mytoken=1'),

        # Left whole before: a storage connection string's key, a SAS signature as a JSON key.
        ("DefaultEndpointsProtocol=https;AccountName=a;AccountKey=Zm9v+YmFy==;EndpointSuffix=x",
         "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=***;EndpointSuffix=x"),
        ("Endpoint=sb://n/;SharedAccessKeyName=k;SharedAccessKey=S3+c/r=",
         "Endpoint=sb://n/;SharedAccessKeyName=k;SharedAccessKey=***"),
        ('{"sv": "2024-08-04", "sig": "SAS+/sig=", "design": 1}',
         '{"sv": "2024-08-04", "sig": "***", "design": 1}'),

        # Left whole before: a URL's userinfo password (docs/inbound.md invites Basic credentials
        # in a DlrUrl), password=, api keys, accesstoken=.
        ("DlrUrl https://flow:S3cr:et@hooks.example.com/x failed; ftp://u:p@h/",
         "DlrUrl https://flow:***@hooks.example.com/x failed; ftp://u:***@h/"),
        # Cut to the first "@" before: the rest of a password with "@" or "'" was left.
        ("https://u:p@ss@host/x 'https://u:it's@h' https://u:p@h\n",
         "https://u:***@host/x 'https://u:***@h' https://u:***@h\n"),
        ('{"url":"https://u:p@h","email":"a@b"}', '{"url":"https://u:***@h","email":"a@b"}'),
        ("https://user@h.example/a:b@c mailto:a@b.example ratio 1:2@3",
         "https://user@h.example/a:b@c mailto:a@b.example ratio 1:2@3"),
        ('password=PW db_password=PW2 api_key=K {"apiKey": "K2"} accesstoken=AT',
         'password=*** db_password=*** api_key=*** {"apiKey": "***"} accesstoken=***'),
    ],
)  # fmt: skip
def test_cut_secrets_cuts_tokens_keys_and_signatures_but_not_lookalikes(
    text: str, cut: str
) -> None:
    """token= (our status and DLR URLs) and code= (a function key) were left whole, and later
    id_token=, sas_token=, JSON "access_token": "...", token%3D and x-functions-key: values."""
    assert cut_secrets(text) == cut


def test_loggable_text_cuts_secrets_before_it_shortens() -> None:
    """An upstream refusal quoting our DLR URL was logged with its token (the sender's pack
    and refusal lines log upstream's message through loggable_text)."""
    said = (
        "bad DlrUrl https://a.test/api/callbacks/dlr/p-1?token=v1.123.SECRETMAC\nfor +358401234567"
    )
    assert loggable_text(said) == (
        "bad DlrUrl https://a.test/api/callbacks/dlr/p-1?token=***\\x0afor ***4567"
    )
    assert loggable_text(f"x token={'S' * 300}", limit=20) == "x token=***"


def test_redacted_escapes_and_bounds_an_errors_text_but_a_traceback_keeps_its_lines() -> None:
    """redacted() cut secrets and masked numbers only: an upstream refusal (or an identity
    provider's error_description, with its \\r\\n) quoted in an error forged log lines, whole."""
    said = "refused 'UTILITY\r\nERROR forged' for +358401234567 token=SECRET " + "x" * 5_000
    line = redacted(said)
    assert line.startswith("refused 'UTILITY\\x0d\\x0aERROR forged' for ***4567 token=*** xx")
    assert line.endswith("x... (4060 more characters)")  # counted after the cut secret
    assert redacted(said, limit=10) == "refused 'U... (5050 more characters)"
    try:
        raise RuntimeError("first\nsecond +358401234567")
    except RuntimeError as exc:
        trace = redacted_traceback(exc)
    assert "first\nsecond ***4567" in trace


def test_every_traceback_we_log_goes_through_redacted_traceback() -> None:
    """exc_info=True and log.exception hand the host's handler a traceback it formats whole:
    a storage error naming its URL (a connection error does, query and keys included) logged
    a SAS sig= or a phone number. Only shared/logs.py formats tracebacks."""
    offenders = []
    code = [*(ROOT / "shared").rglob("*.py"), *(ROOT / "functions").rglob("*.py")]
    for path in [*code, ROOT / "function_app.py"]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            formats = node.func.attr.startswith(("format_exc", "format_tb", "print_exc"))
            if (
                (node.func.attr == "exception" and node.args)
                or any(k.arg in ("exc_info", "stack_info") for k in node.keywords)
                or (formats and path.name != "logs.py")
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


#: What makes an id fit for a log line (a queued command's own messageId may be a number).
_FIT = {"loggable_id", "loggable_text", "redacted"}


def _names_an_id_raw(node: ast.AST) -> bool:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FIT:
        return False
    if isinstance(node, ast.Attribute | ast.Name) and getattr(
        node, "attr", getattr(node, "id", None)
    ) in ("message_id", "messageId"):
        return True
    return any(_names_an_id_raw(child) for child in ast.iter_child_nodes(node))


def test_every_log_line_naming_a_message_id_makes_it_fit_first() -> None:
    """A queued command's own messageId (say 0401234567) went into lines raw: a review found
    six such lines after a fix of the others (MessageRecord.logged_id, loggable_id)."""
    levels = {"debug", "info", "warning", "error", "critical", "log"}
    offenders = []
    for path in sorted((ROOT / "shared").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = node.func.value
            if (
                node.func.attr in levels
                and isinstance(owner, ast.Name)
                and owner.id in ("log", "logger")
            ):
                offenders += [
                    f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(arg)}"
                    for arg in node.args[1:]
                    if _names_an_id_raw(arg)
                ]
    assert offenders == []
    assert _names_an_id_raw(ast.parse("f(record.message_id)"))  # the check checks


def test_a_failure_outside_the_action_pipeline_is_logged_redacted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """functions.actions.serve logged it with log.exception: the host formatted its traceback
    whole, a storage URL's sig= and a phone number in it."""
    import azure.functions as func

    import functions.actions
    import shared.actions

    said = "https://acc.queue.core.windows.net/q?sig=SECRETSIG for +358401234567"
    monkeypatch.setattr(shared.actions, "handle", lambda *a: _raise(ConnectionError(said)))
    request = func.HttpRequest(method="GET", url="http://localhost/api/customers", body=b"")

    with caplog.at_level(logging.ERROR, logger="smartdialog.actions"):
        answer = functions.actions.serve("GetUserCustomers", request)

    assert answer.status_code == 500
    [record] = [r for r in caplog.records if "outside the action pipeline" in r.getMessage()]
    assert record.exc_info is None
    assert "ConnectionError" in record.getMessage()
    assert "SECRETSIG" not in caplog.text
    assert "+358401234567" not in caplog.text


def _raise(exc: Exception) -> Any:
    raise exc


def test_importing_function_app_sets_the_http_libraries_loggers() -> None:
    import function_app  # noqa: F401 - importing it is the start-up

    for name, level in HTTP_LIBRARY_LEVELS.items():
        assert logging.getLogger(name).level == level, name
    assert logging.getLogger("httpx").getEffectiveLevel() == logging.WARNING


def test_host_json_sets_no_python_logger_it_cannot_reach() -> None:
    levels = json.loads((ROOT / "host.json").read_text())["logging"]["logLevel"]
    assert not {"httpx", "httpcore", "azure", "urllib3"} & {k.split(".")[0] for k in levels}


def test_an_httpx_info_line_carries_no_query_string(
    sandbox: SandboxServer, caplog: pytest.LogCaptureFixture
) -> None:
    configure_logging()
    caplog.set_level(logging.INFO, logger="httpx")  # as an operator might, to debug
    url = f"{sandbox.url}/sandbox/health?sig=0123456789abcdef&to=%2B358401234567"
    assert httpx.get(url, timeout=5).status_code == 200
    [line] = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert f"GET {sandbox.url}/sandbox/health " in line
    assert "?" not in line
    assert "sig=" not in line
    assert "358401234567" not in line


def test_redact_urls_cuts_the_query_the_userinfo_password_and_masks_numbers() -> None:
    record = logging.LogRecord(
        "httpx", logging.INFO, __file__, 1, "HTTP Request: %s %s", ("POST",
        "https://flow:PASS@hooks.example/+358401234567?sig=abc&code=k#frag"), None,
    )  # fmt: skip
    assert RedactUrls().filter(record)
    assert record.getMessage() == "HTTP Request: POST https://flow:***@hooks.example/***4567"


# --- the leak detector (tests/fixtures/leaks.py) ------------------------------------------------

TOKEN = "v2.0.AAAAAAAAAAAAAAAAAAAAAA.B2xhbmRvbS1tYWMtb2YtZm9ydHktdGhyZWUtY2hhcnM"


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        (f"GET /api/callbacks/inbound/s?token={TOKEN} 202", "token"),
        (
            "POST https://prod.westus.logic.azure.com/workflows/1?sig=Zm9vYmFyYmF6cXV4",
            "sig/token parameter",
        ),
        ("GET https://app.azurewebsites.net/api/services?code=abcdEFGH1234ijkl==", "function key"),
        ("Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.e30.sig", "Bearer credential"),
        ("sent to +358401234567", "phone number"),
        ("path /contacts/%2B358401234567", "phone number"),
        ("recipient 358401234567 delivered", "phone number"),
        ("national 0401234567", "phone number"),
    ],
)
def test_the_detector_finds_each_kind_of_leak(text: str, kind: str) -> None:
    assert kind in findings_in(text, secrets=set())


def test_the_detector_finds_configured_secrets_and_registered_contents() -> None:
    watch_secret("a-planted-secret-value-for-the-detector")
    watch_content("A planted message body for the detector")
    assert findings_in("x a-planted-secret-value-for-the-detector y", secrets=set()) == [
        "configured secret"
    ]
    assert findings_in("logged: A planted message body for the detector", secrets=set()) == [
        "message content"
    ]
    assert findings_in("k", secrets={"configured-callback-secret-value"}) == []
    assert findings_in(
        "the configured-callback-secret-value", secrets={"configured-callback-secret-value"}
    )


@pytest.mark.parametrize(
    "text",
    [
        "message 5f0c1d2e-0412-4567-8901-045123456789 sent",
        "upstream 04123456-aaaa-bbbb-cccc-dddddddddddd",
        "at 2026-01-31T12:00:00.123+00:00 expiry 1764806400 in 1234 ms",
        "recipient ***4567 delivered; status code 429; Retry-After 30",
        'Bearer realm="smartdialog-webhook"',
        "refresh_token=SecretStr('**********') token=None",
        "GET /api/callbacks/dlr/m-1 -> 200 (DeliveryReport, 3.1 ms)",
        "h-0a5f35840123456789abcdef0123456789abcdef0123456789abcdef01234567",
    ],
)
def test_the_detector_passes_ids_timestamps_and_masked_numbers(text: str) -> None:
    assert findings_in(text, secrets=set()) == []


def test_a_planted_leak_in_a_record_is_caught_with_its_logger_and_place() -> None:
    detector = LeakDetector()
    logger = logging.getLogger("tests.planted")
    logger.propagate = False  # the run's own detector must not see the planted leak
    logger.addHandler(detector)
    try:
        logger.warning("delivered to %s", "+358401234567", extra={"to": "safe"})
        logger.warning(
            "nothing to see", extra={"callback": "https://x.example/cb?sig=Zm9vYmFyYmF6"}
        )
        logger.info("message 5f0c1d2e-0412-4567-8901-045123456789 sent")
    finally:
        logger.removeHandler(detector)
        logger.propagate = True
    assert [(leak.logger, leak.kinds) for leak in detector.leaks] == [
        ("tests.planted", ("phone number",)),
        ("tests.planted", ("sig/token parameter",)),
    ]
    assert detector.leaks[0].where.endswith(
        f"test_logs.py:{detector.leaks[0].where.split(':')[-1]}"
    )
    assert detector.checked == 3


def _run_pytest_on(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    """A pytest run of one test module with the leak detector, in its own interpreter (a run
    inside this one would take the detector off this run's root logger)."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_planted.py").write_text(body)
    plugins = ["-p", "no:cacheprovider", "-p", "tests.fixtures.leaks"]
    command = [sys.executable, "-m", "pytest", "-q", *plugins, "-c", str(tmp_path / "pytest.ini")]
    return subprocess.run(
        [*command, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_leaking_record_fails_the_run_although_every_test_passed(tmp_path: Path) -> None:
    planted = _run_pytest_on(
        tmp_path,
        "import logging\n\n\ndef test_plant():\n"
        "    logging.getLogger('shared.planted').info('sent to %s', '+35840' + '1234567')\n",
    )
    assert "1 passed" in planted.stdout, planted.stdout
    assert "shared.planted" in planted.stdout
    assert "phone number" in planted.stdout
    assert planted.returncode == 1


def test_a_run_without_leaks_passes(tmp_path: Path) -> None:
    clean = _run_pytest_on(
        tmp_path,
        "import logging\n\n\ndef test_clean():\n"
        "    logging.getLogger('shared.planted').info('sent to %s', '***4567')\n",
    )
    assert "none leaked" in clean.stdout, clean.stdout
    assert clean.returncode == 0


def test_held_sends_say_so_at_once_then_once_a_minute_with_how_many_waited(
    manual_clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """10,000 queued sends rechecking a broken setting every minute wrote 10,000 lines a
    minute; now one per reason: the first at once, then the count since the last line."""
    from shared.logs import HeldSends

    held = HeldSends(logging.getLogger("held-test"))
    with caplog.at_level(logging.WARNING, logger="held-test"):
        for _ in range(1_000):
            held.wait("the settings of connection default", "setting X is not configured", "hint")
        held.wait("the identity provider of connection default", "timed out", "later")
        manual_clock.advance(59)
        held.wait("the settings of connection default", "setting X is not configured", "hint")
        manual_clock.advance(1)
        held.wait("the settings of connection default", "setting X is not configured", "hint")

    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "a send is waiting for the settings of connection default: setting X is not "
        "configured (hint); more such waits are counted, one line a minute",
        "a send is waiting for the identity provider of connection default: timed out (later); "
        "more such waits are counted, one line a minute",
        "1001 send(s) waiting for the settings of connection default in the last 60 s: "
        "setting X is not configured (hint)",
    ]
    assert {r.levelno for r in caplog.records} == {logging.WARNING}


def test_held_sends_start_a_new_episode_after_a_pause_not_the_old_count(
    manual_clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Five waits in an outage's first minute, fixed, then one wait three hours later: the new
    one is said as a first, not as '6 sends waiting in the last 10,800 s' under its new text."""
    from shared.logs import HeldSends

    held = HeldSends(logging.getLogger("held-episodes"))
    with caplog.at_level(logging.WARNING, logger="held-episodes"):
        for _ in range(5):
            held.wait("the settings of connection default", "problem A", "hint")
        manual_clock.advance(3 * 3600)
        held.wait("the settings of connection default", "problem B", "hint")

    assert [r.getMessage() for r in caplog.records] == [
        "a send is waiting for the settings of connection default: problem A (hint); more such "
        "waits are counted, one line a minute",
        "a send is waiting for the settings of connection default: problem B (hint); more such "
        "waits are counted, one line a minute",
    ]
