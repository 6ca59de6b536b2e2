"""The operations page in a real headless browser: Debian's chromium driven by Playwright, against
the real app in the dev host. A failed send's dead letter is re-driven by clicking its button;
it leaves the list and the sandbox receives the send. A screenshot goes to test-output/.

Playwright's own browser downloads are not used: the test launches the system's chromium and
is skipped, naming the Debian package, where there is none."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.deadletters import DEAD_LETTER_QUEUES, write_dead_letter
from shared.names import (
    DEAD_LETTERS_TABLE,
    DLR_FORWARD_DEAD_LETTER_QUEUE,
    OUTBOUND_DEAD_LETTER_QUEUE,
    OUTBOUND_QUEUE,
    poison_queue,
)
from shared.ops._deadletters import POISON_SOURCES
from shared.ops.actions import desk
from shared.storage import ensured_queue, ensured_table
from tests.e2e.conftest import DELIVERED_NUMBER, REPO, Stack, poll, stack
from tests.ops.conftest import index_written_dead_letters, letter

__all__ = ["stack"]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = REPO / "test-output" / "ops-page.png"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists() and shutil.which("chromium") is None,
        reason="no chromium: install Debian's package `chromium` (apt-get install chromium)",
    ),
]


@pytest.fixture
def browser_page() -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = str(CHROMIUM) if CHROMIUM.exists() else shutil.which("chromium")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 900})
        finally:
            browser.close()


def test_redriving_a_dead_letter_by_clicking_sends_it(stack: Stack, browser_page: object) -> None:
    from playwright.sync_api import Page

    page = browser_page
    assert isinstance(page, Page)
    message_id = "ops-browser-1"
    # The page shows the oldest 50: start from no dead letters (other tests share this Azurite).
    for queue in [*DEAD_LETTER_QUEUES, *(poison_queue(q) for q in POISON_SOURCES)]:
        ensured_queue(queue).clear_messages()
    table = ensured_table(DEAD_LETTERS_TABLE)
    for entity in list(table.list_entities(select=["PartitionKey", "RowKey"])):
        table.delete_entity(entity["PartitionKey"], entity["RowKey"])
    stack.queue(OUTBOUND_QUEUE).send_message(
        json.dumps(
            {
                "operation": "SendMessage",
                "messageId": message_id,
                "validUntil": "2020-01-01T00:00:00Z",
                "body": {
                    "Sender": "Sandbox",
                    "Content": "Hello from the operations page",
                    "Recipients": [{"Address": DELIVERED_NUMBER}],
                },
            }
        )
    )
    poll(lambda: stack.peek(OUTBOUND_DEAD_LETTER_QUEUE), what="the expired send's dead letter")
    desk.cache_clear()
    index_written_dead_letters(OUTBOUND_DEAD_LETTER_QUEUE)

    page.goto(f"{stack.api}/ops")
    row = page.locator("#deadletters tr", has_text=message_id)
    assert row.count() == 1
    row.get_by_role("button", name="Re-drive").click()
    page.wait_for_url("**/api/ops?done=*")

    assert "redriven" in page.locator("#notice").inner_text()
    assert page.evaluate("document.activeElement.id") == "notice"  # a keyboard user is there
    assert page.locator("#deadletters tr", has_text=message_id).count() == 0
    sent = poll(
        lambda: [
            r
            for r in stack.sandbox_get("/sandbox/requests?operationId=SendMessage")
            if (r.get("body") or {}).get("RequestId") == message_id
        ],
        what="the re-driven send at the sandbox",
    )
    assert len(sent) == 1
    page.reload()
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 0


def test_the_buttons_work_on_the_page_opened_with_a_trailing_slash(
    stack: Stack, browser_page: object
) -> None:
    """The host serves ``/api/ops/`` as the page too: its forms posted to ``ops/purge`` relative
    to it, ``/api/ops/ops/purge``, a 404 for every button."""
    from playwright.sync_api import Page

    page = browser_page
    assert isinstance(page, Page)
    write_dead_letter(
        ensured_queue(DLR_FORWARD_DEAD_LETTER_QUEUE),
        letter(queue="smartdialog-dlr-forward", reason="malformed", detail="trailing slash"),
        queue_name=DLR_FORWARD_DEAD_LETTER_QUEUE,
    )
    desk.cache_clear()

    page.goto(f"{stack.api}/ops/")
    row = page.locator("#deadletters tr", has_text="trailing slash")
    assert row.count() == 1
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        row.get_by_role("button", name="Purge").click()
    assert posted.value.url == f"{stack.api}/ops/purge"
    page.wait_for_url("**/api/ops?done=*")
    assert "purged" in page.locator("#notice").inner_text()
    assert page.locator("#deadletters tr", has_text="trailing slash").count() == 0
