"""Storage answers' headers read without the e-mail parser (shared/http_headers.py): the same
``HTTPMessage`` as the standard library's parser makes, or the standard library's own."""

from __future__ import annotations

import email.message
import email.parser
import http.client
import io
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import http_headers, storage

#: Header blocks as Azurite and Azure Storage answer (a table transaction's, a queue put's, a
#: query's with its continuation), and as a transaction's parts carry them.
PLAIN = [
    b"Server: Azurite-Table/3.34.0\r\n"
    b"content-type: multipart/mixed; boundary=batchresponse_5a1f1e2c-8d55-4c1b-9f2e-0c7c0e2b\r\n"
    b"x-ms-client-request-id: 0f6e8a54-1b0e-11ef-9c1b-0242ac120002\r\n"
    b"x-ms-request-id: 8c5f4a3e-7d0e-4b7a-9a54-3d2c1b0a9f8e\r\n"
    b"x-ms-version: 2019-02-02\r\n"
    b"date: Mon, 07 Dec 2026 15:01:02 GMT\r\n"
    b"Connection: keep-alive\r\n"
    b"Keep-Alive: timeout=5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n",
    b"Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n",
    b"X-Content-Type-Options: nosniff\r\nCache-Control: no-cache\r\n"
    b"DataServiceVersion: 3.0;\r\nETag: W/\"datetime'2026-12-07T15%3A01%3A02.123Z'\"\r\n"
    b"Location: http://127.0.0.1:10002/devstoreaccount1/T(PartitionKey='a',RowKey='b')\r\n\r\n",
    b"Content-Length: 0\r\nx-ms-continuation-NextPartitionKey: 1!8!YQ--\r\n"
    b"x-ms-continuation-NextRowKey: 1!8!Yg--\r\n\r\n",
    b"Server: Azurite-Queue/3.34.0\r\ncontent-type: application/xml\r\nx-ms-version: 2021-12-02\r\n"
    b"Date: Mon, 07 Dec 2026 15:01:02 GMT\r\nContent-Length: 412\r\n\r\n",
    b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-Empty:\r\nX-Spaces:   \r\nX-Tab:\tv\tw \r\n\r\n",
    b"X-Colons: a:b::c\r\nX-Trailing: value  \r\nX-Bare-LF: yes\n\n",
    b'Content-Type: multipart/mixed; boundary="quoted boundary"\r\n\r\n',
    b"Content-Type: multipart/mixed; boundary=b1\r\nContent-Transfer-Encoding: 7BIT\r\n\r\n",
    b"\r\n",  # no headers at all
    b"X-At-End-Of-Stream: yes\r\n",  # the stream ended before the blank line
]
#: Header blocks ours leaves to the e-mail parser.
LEFT = [
    b"X-Folded: first\r\n second\r\n\r\n",  # an obsolete folded line
    b"X-Latin: caf\xe9\r\n\r\n",  # not ASCII
    b"X-Nel: a\x85b\r\n\r\n",  # a line end to str.splitlines, not to HTTP
    b"X-Cr: a\rb\r\n\r\n",  # a bare CR in a value
    b": no name\r\n\r\n",
    b"no colon at all\r\nX-After: 1\r\n\r\n",
    b"From someone\r\nX-After: 1\r\n\r\n",
    b"X Space: in the name\r\n\r\n",
    b"Content-Type: multipart/mixed\r\n\r\n",  # no boundary
    b"Content-Type: multipart/mixed; boundary=b1\r\nContent-Transfer-Encoding: base64\r\n\r\n",
    b"Content-Type: message/rfc822\r\n\r\n",
    b"Content-Type: message/delivery-status\r\n\r\n",
    b"X-No-Line-End: yes",
]


def stdlib(block: bytes) -> Any:
    """What the standard library's ``parse_headers`` makes of ``block``."""
    lines = http.client._read_headers(io.BytesIO(block))  # type: ignore[attr-defined]
    text = b"".join(lines).decode("iso-8859-1")
    return email.parser.Parser(_class=http.client.HTTPMessage).parsestr(text)


def shape(msg: Any) -> tuple[Any, ...]:
    """Everything of a parsed message that ``http.client`` and ``urllib3`` may read."""
    return (
        type(msg),
        msg.items(),
        [type(d) for d in msg.defects],
        [shape(part) for part in payload]
        if isinstance(payload := msg.get_payload(), list)
        else payload,
        msg.is_multipart(),
        msg.preamble,
        msg.epilogue,
        msg.get_content_type(),
        msg.get_default_type(),
        msg.get_unixfrom(),
    )


def parsed_by_the_parser(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The texts the e-mail parser is given from here on."""
    real, given = email.parser.Parser.parsestr, []

    def parsestr(self: email.parser.Parser, text: str, headersonly: bool = False) -> Any:
        given.append(text)
        return real(self, text, headersonly)

    monkeypatch.setattr(email.parser.Parser, "parsestr", parsestr)
    return given


@pytest.mark.parametrize("block", PLAIN)
def test_a_plain_block_is_built_directly_as_the_parser_builds_it(
    block: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = shape(stdlib(block))
    given = parsed_by_the_parser(monkeypatch)
    ours = http_headers.parse_headers(io.BytesIO(block))
    assert given == []  # built directly, the empty block too
    assert shape(ours) == expected


@pytest.mark.parametrize("block", LEFT)
def test_any_other_block_is_left_to_the_parser(block: bytes) -> None:
    text = block.decode("iso-8859-1")
    assert http_headers._built(text, http.client.HTTPMessage) is None
    assert shape(http_headers.parse_headers(io.BytesIO(block))) == shape(stdlib(block))


def test_long_lines_it_cannot_take_are_left_in_linear_time() -> None:
    """A value of 65,000 spaces, then something not plain: the first pattern tried the spaces in
    every way two of its parts could share them before it gave up (~1 minute a line on an idle
    core, every other thread of the process waiting; these four then outlast the test timeout);
    now there is one way."""
    for end in (b"\x7f\r\n\r\n", b"\r\r\n\r\n", b"\xe9\r\n\r\n", b""):
        block = b"X:" + b" " * 65_000 + end
        assert shape(http_headers.parse_headers(io.BytesIO(block))) == shape(stdlib(block))


class _PolicyRequired(http.client.HTTPMessage):
    def __init__(self, policy: Any) -> None:
        super().__init__(policy)


@pytest.mark.parametrize(
    "cls", [email.message.Message, email.message.EmailMessage, _PolicyRequired]
)
def test_another_class_is_left_to_the_parser(
    cls: type[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server's ``MessageClass`` (http.server passes it) gets what the parser makes of it:
    an ``EmailMessage`` has its own policy, another class may need ``policy``."""
    block = b'To: _<\r\nContent-Type: multipart/mixed; boundary="a b"; x=(\r\n\r\n'
    expected = email.parser.Parser(_class=cls).parsestr(block.decode("iso-8859-1"))
    given = parsed_by_the_parser(monkeypatch)
    ours = http_headers.parse_headers(io.BytesIO(block), cls)
    assert len(given) == 1
    assert type(ours) is cls
    assert [(k, str(v)) for k, v in ours.items()] == [(k, str(v)) for k, v in expected.items()]


def test_urllib3_finds_the_same_defects_acceptable() -> None:
    """urllib3 raises ``HeaderParsingError`` for defects other than a body-less multipart's;
    a transaction's answer passes, as it does with the parser's message."""
    from urllib3.util.response import assert_header_parsing

    for block in PLAIN:
        assert_header_parsing(http_headers.parse_headers(io.BytesIO(block)))


def test_the_reads_limits_stay_the_standard_librarys() -> None:
    most = http.client._MAXHEADERS  # type: ignore[attr-defined]
    too_many = b"".join(b"X-%d: v\r\n" % i for i in range(most + 1))
    with pytest.raises(http.client.HTTPException, match="more than"):
        http_headers.parse_headers(io.BytesIO(too_many + b"\r\n"))
    longest = http.client._MAXLINE  # type: ignore[attr-defined]
    too_long = b"X-Long: " + b"v" * (longest + 1) + b"\r\n\r\n"
    with pytest.raises(http.client.LineTooLong):
        http_headers.parse_headers(io.BytesIO(too_long))


_NAME = st.text(st.sampled_from("ABCXaz-_:0 \t!~"), min_size=0, max_size=8)
_VALUE = st.text(st.sampled_from('av:; \t="\r\x0b\x85\xe9/-'), min_size=0, max_size=12)
_LINE = st.builds(lambda n, v, end: f"{n}:{v}{end}", _NAME, _VALUE, st.sampled_from(["\r\n", "\n"]))
_CONT = st.builds(lambda v: f" {v}\r\n", _VALUE)
_TYPE = st.sampled_from([
    "Content-Type: multipart/mixed; boundary=b\r\n",
    "Content-Type: multipart/mixed\r\n",
    "Content-Type: message/rfc822\r\n",
    "Content-Type: text/plain\r\n",
    "Content-Transfer-Encoding: quoted-printable\r\n",
])  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_LINE, _LINE, _CONT, _TYPE), max_size=6), st.booleans())
def test_any_block_gives_what_the_parser_gives(lines: list[str], ended: bool) -> None:
    block = ("".join(lines) + ("\r\n" if ended else "")).encode("iso-8859-1")
    assert shape(http_headers.parse_headers(io.BytesIO(block))) == shape(stdlib(block))


def test_azurites_answers_are_read_the_direct_way(
    storage_env: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Building a storage client puts ours in place, and every answer of a real transaction,
    its parts included, is built directly (none is left to the e-mail parser)."""
    table = storage.table_client(unique_name)
    assert http.client.parse_headers is http_headers.parse_headers
    table.create_table()
    real, built = http_headers._built, []

    def counted(text: str, cls: Any) -> Any:
        built.append(msg := real(text, cls))
        return msg

    monkeypatch.setattr(http_headers, "_built", counted)
    table.submit_transaction(
        [("create", {"PartitionKey": "p", "RowKey": str(i)}) for i in range(2)]
    )
    assert len(list(table.query_entities("PartitionKey eq 'p'"))) == 2

    assert len(built) == 4  # the transaction's answer and its two parts, the query's answer
    assert all(msg is not None for msg in built)
    assert built[0].get_content_type() == "multipart/mixed"


def test_an_http_client_not_as_expected_keeps_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    def parse_headers(fp: Any, _class: Any = None, extra: int = 0) -> Any:  # a new signature
        raise AssertionError("not called here")

    monkeypatch.setattr(http_headers, "_state", {})  # as in a fresh process
    monkeypatch.setattr(http.client, "parse_headers", parse_headers)
    assert not http_headers.install()
    assert http.client.parse_headers is parse_headers
    assert not http_headers.install()  # decided once

    def wrapped(fp: Any, _class: Any = http.client.HTTPMessage) -> Any:  # someone's wrapper
        raise AssertionError("not called here")

    monkeypatch.setattr(http_headers, "_state", {})
    monkeypatch.setattr(http.client, "parse_headers", wrapped)
    assert not http_headers.install()
    assert http.client.parse_headers is wrapped

    monkeypatch.setattr(http_headers, "_state", {})
    monkeypatch.delattr(http.client, "_read_headers")
    monkeypatch.setattr(http.client, "parse_headers", http_headers.parse_headers)
    assert not http_headers.install()
