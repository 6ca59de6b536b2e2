"""Logging set in code at start-up, because host.json cannot do it for Python.

The Functions host's ``logging.logLevel`` keys filter the host's own categories (``Function``,
``Host.Results``); they do not reach the Python worker's loggers, so the HTTP libraries' loggers
are set here, once, when ``function_app`` is imported (and by the test run, which must log as the
app does):

- ``httpx`` and ``httpcore`` log each request's full URL (a caller's ``?sig=``, our ``?token=``,
  phone numbers in paths) at INFO and DEBUG: WARNING and above only.
- ``urllib3`` and azure-core's HTTP logging policy log every storage request, whose URL holds
  table keys (a phone number is a suppression's key): WARNING and above only.
- Whatever these loggers still emit, and anything logged on them later at a lower level by an
  operator, passes :class:`RedactUrls`: query strings are cut from URLs and phone numbers masked.

Our own log calls name a caller's URL by its host, never the URL itself; text that may quote a
secret is logged :func:`redacted` (an error), :func:`loggable_text` (what a caller or upstream
sent) or :func:`redacted_traceback` (a traceback, never ``exc_info``).
Importing this module is cheap (standard library only).
"""

from __future__ import annotations

import logging
import re
import threading
import traceback

__all__ = [
    "HTTP_LIBRARY_LEVELS",
    "LOGGABLE_CHARS",
    "REDACTED_CHARS",
    "URL_LOGGERS",
    "HeldSends",
    "RedactUrls",
    "configure_logging",
    "cut_secrets",
    "cut_text",
    "loggable_id",
    "loggable_text",
    "redacted",
    "redacted_traceback",
]

#: The third-party loggers set at start-up, and their level.
HTTP_LIBRARY_LEVELS: dict[str, int] = {
    "httpx": logging.WARNING,
    "httpcore": logging.WARNING,
    "urllib3": logging.WARNING,
    "azure.core.pipeline.policies.http_logging_policy": logging.WARNING,
}

#: The loggers that write URLs (a filter applies to its own logger's records, not its children's).
URL_LOGGERS = (
    "httpx",
    "urllib3.connectionpool",
    "azure.core.pipeline.policies.http_logging_policy",
)

# A URL's query (and fragment), up to the next blank or quote: what carries tokens and keys.
_URL_QUERY = re.compile(r"(?P<url>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s?#\"'<>]*)[?#][^\s\"'<>]*")


# A bearer token, or a value that carries a secret: a query parameter's (plain or URL-encoded)
# or a quoted key's (JSON, a dict's repr), named *token or *secret (ours in status and DLR URLs,
# OAuth's, a SAS token), *password, *apikey, *api_key or accesstoken, code (a function key) or
# sig (a SAS signature, also a quoted key's); an x-functions-key header's; a connection string's
# AccountKey= or SharedAccessKey=. The value ends at a blank, a quote, & (or %26), a comma, ;
# or }.
_SENSITIVE_NAMES = r"(?:\w*_)?(?:token|secret|password|api_?key|accesstoken)"
_SECRET = re.compile(
    r"(?i)(bearer\s+|\bx-functions-key[\"']?\s*[:=]\s*[\"']?"
    rf"|[\"'](?:{_SENSITIVE_NAMES}|sig)[\"']\s*:\s*[\"']?"
    rf"|(?:(?:\b|(?<=%3f)|(?<=%26))(?:{_SENSITIVE_NAMES}|code|accountkey|sharedaccesskey)|sig)"
    r"(?:=|%3d))(?:(?!%26)[^\s&\"',;}])+"
)


# A URL's userinfo password (scheme://user:password@host), which a DlrUrl may carry.
# Up to the authority's last "@" (an "@" or a quote may be in the password, as the guard sends it).
_USERINFO = re.compile(
    r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/?#@:\"'<>]*:)[^\s/?#\"<>]+"
    r"(?=@[^\s/?#@\"'<>]*(?:[/?#\s\"'<>]|$))"
)


def cut_secrets(text: str) -> str:
    """``text`` with secrets cut to ``***``: bearer tokens, ``x-functions-key`` values, a URL's
    userinfo password (``https://user:***@host``), and the values of ``token=``, ``*_token=``,
    ``*_secret=``, ``password=``, ``api_key=``, ``code=``, ``sig=`` (also URL-encoded,
    ``token%3D``), ``AccountKey=``, ``SharedAccessKey=`` and of quoted keys such as
    ``"access_token": "..."`` or ``"sig": "..."``."""
    return _USERINFO.sub(r"\1***", _SECRET.sub(r"\1***", text))


def redacted(text: str, limit: int | None = None) -> str:
    """An error's text (it may quote an upstream's refusal, a value a caller sent) fit for a
    log line: :func:`loggable_text` cut to ``limit`` characters, :data:`REDACTED_CHARS`
    unless given. Not for what a caller is answered: that keeps upstream's words, secrets cut
    (:func:`cut_secrets`)."""
    return loggable_text(text, REDACTED_CHARS if limit is None else limit)


def redacted_traceback(exc: BaseException) -> str:
    """``exc``'s traceback (with its causes) with secrets cut and phone numbers masked: its
    messages may quote a URL with its token, a header, a phone number. Its lines stay lines.
    Only its type when that fails (the masking's own import may be what failed)."""
    try:
        text = "".join(traceback.format_exception(exc)).rstrip()
        return _mask_phone_numbers(cut_secrets(text))
    except Exception:
        return type(exc).__name__


def _mask_phone_numbers(text: str) -> str:
    from shared.smartdialog import mask_phone_numbers  # on first use: it imports httpx

    return mask_phone_numbers(text)


# Line breaks and other control characters: a caller's text with one could forge a log line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
#: The most of a caller's text one log line quotes.
LOGGABLE_CHARS = 200
#: The most of an error's text one log line quotes (:func:`redacted`).
REDACTED_CHARS = 1_000


def loggable_text(text: str, limit: int = LOGGABLE_CHARS) -> str:
    """Text we were given (a field name a caller sent, an upstream's refusal) fit for a log
    line: :func:`cut_secrets`, cut to ``limit`` characters (the rest counted), control
    characters escaped (none can forge a line), phone numbers masked."""
    text = cut_text(cut_secrets(text), limit)
    return _mask_phone_numbers(_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text))


def loggable_id(tracking_id: str) -> str:
    """A request's tracking id (or one of our ids) for a log line's text, where it must be found
    whole by the problem's ``instance`` (or by a search for the id): as it is when it has an
    id's shape (``shared.smartdialog.has_id_shape``: a UUID's first group of 8 digits read as a
    phone number, so about 2 % of generated ids were masked), else :func:`loggable_text` (a
    caller's id may hold a phone number)."""
    from shared.smartdialog import has_id_shape, mask_phone_numbers_in_id

    if has_id_shape(tracking_id):
        return tracking_id
    return loggable_text(mask_phone_numbers_in_id(tracking_id))


def cut_text(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, the rest counted (``... (N more characters)``)."""
    return (
        text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"
    )


class RedactUrls(logging.Filter):
    """Rewrites a record's message with every URL's query string cut, other secrets cut
    (:func:`cut_secrets`: a URL's userinfo password) and phone numbers masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:
            return True
        redacted = _mask_phone_numbers(cut_secrets(_URL_QUERY.sub(r"\g<url>", text)))
        if redacted != text:
            record.msg, record.args = redacted, ()
        return True


def configure_logging() -> None:
    """Set the HTTP libraries' loggers (idempotent; call once at start-up)."""
    for name, level in HTTP_LIBRARY_LEVELS.items():
        logging.getLogger(name).setLevel(level)
    for name in URL_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactUrls) for f in logger.filters):
            logger.addFilter(RedactUrls())


class HeldSends:
    """The warning of sends (``what``) held by something only an operator can fix (a broken
    setting, refused credentials, an identity provider down, a routing error), said once a
    minute per ``reason`` however many wait, rather than once per send at every recheck: the first
    at once, then at most one per ``every`` seconds, counting the waits since the last (each
    wait's own line is its caller's, at DEBUG, with its message id). Per process; the time is
    :func:`shared.clock.current`'s. A reason whose waits stop says nothing more; one whose
    waits come again after a pause of two ``every`` is a new episode, said at once as the
    first (the pause's uncounted waits are not reported as the new one's)."""

    def __init__(self, logger: logging.Logger, every: float = 60.0, level: int = logging.WARNING,
                 what: str = "send") -> None:  # fmt: skip
        self._log, self._every, self._level, self._what = logger, every, level, what
        self._lock = threading.Lock()
        # reason: (last line at, waits since, last wait at)
        self._lines: dict[str, tuple[float, int, float]] = {}

    def wait(self, reason: str, detail: str, hint: str) -> None:
        """Count one send waiting for ``reason`` (``detail``: what is wrong, ``hint``: what to
        do), and say so if its last line is ``every`` seconds old (or there was none)."""
        from shared.clock import current

        now = current().now()
        with self._lock:
            last, count, waited = self._lines.get(reason, (-1.0, 0, -1.0))
            if last >= 0 and now - waited >= 2 * self._every:  # the earlier episode ended
                last, count = -1.0, 0
            due = last < 0 or now - last >= self._every
            self._lines[reason] = (now, 0, now) if due else (last, count + 1, now)
        if last < 0:
            self._log.log(self._level, "a %s is waiting for %s: %s (%s); more such waits "
                          "are counted, one line a minute", self._what, reason, detail,
                          hint)  # fmt: skip
        elif due:
            self._log.log(self._level, "%d %s(s) waiting for %s in the last %.0f s: %s (%s)",
                          count + 1, self._what, reason, now - last, detail, hint)  # fmt: skip
