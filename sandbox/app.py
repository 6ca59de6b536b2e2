"""The sandbox application: one HTTP request in, one response out, independent of the server.

Order of checks on an API call (``/api-integrations/v1/...``): bearer token (401), quota (429),
route (404/405), contract validation (400), then the operation itself (404/403/400/409 and the
magic recipient numbers). A customer of another account than the token's is a 403 (see
sandbox/accounts.py).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import phonenumbers

from sandbox.accounts import Account, load_accounts
from sandbox.callbacks import DeferredCalls, http_call
from sandbox.contract import BASE_PATH, Contract, Operation, load_contract
from sandbox.faults import FaultInjector, FaultKind, FaultPlan
from sandbox.oauth import Principal, TokenStore, discovery_document
from sandbox.quota import Clock, SlidingWindowQuota
from sandbox.sms import part_count, personalize
from sandbox.state import SandboxState

__all__ = [
    "DLR_STATUS_CODES",
    "MAGIC_NUMBERS",
    "ApiError",
    "Request",
    "Response",
    "Sandbox",
    "SandboxConfig",
]

log = logging.getLogger("sandbox")

SEED_PATH = Path(__file__).with_name("seed.json")
# As upstream: a number without a country code is Finnish unless a region says otherwise.
DEFAULT_REGION = "FI"
REQUEST_ID_MEMORY = 7 * 24 * 3600.0  # upstream remembers a RequestId for 7 days
TEMPORARY_FAILURES = 2  # +358400000004 fails this many attempts of the same request, then succeeds
PIPELINE_PATH = "/service/{Service}/pipelines/actions"

# Magic recipient numbers (E.164) and what the sandbox does with them.
MAGIC_NUMBERS = {
    "+358400000001": "delivered",
    "+358400000002": "rejected",  # 400 at send
    "+358400000003": "undeliverable",  # accepted, DLR failed
    "+358400000004": "temporary",  # 503 twice, then accepted
    "+358400000005": "throttled",  # 429 Retry-After: 1, always
    "+358400000006": "error",  # 500, always
    "+358400000007": "slow",  # answers after slow_seconds
    "+358400000008": "refused",  # 400 naming nobody, as a service might answer a repeat
}
# DLR statusCode per status: Kannel's DLR event numbers (1 delivered to phone, 2 not delivered).
DLR_STATUS_CODES = {"delivered": 1, "failed": 2}

REDACTED_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
REDACTED_FORM_FIELDS = frozenset(
    {"client_secret", "refresh_token", "code", "client_assertion", "password"}
)
CONTACT_FIELDS = (
    "email",
    "firstName",
    "lastName",
    "gender",
    "birthYear",
    "streetAddress",
    "zipCode",
    "city",
    "countryCode",
    "customContactProperties",
)
OAUTH_ROUTE = re.compile(
    r"^/(?P<tenant>[^/]+)/(?P<policy>[^/]+)/"
    r"(?P<endpoint>v2\.0/\.well-known/openid-configuration|oauth2/v2\.0/token|oauth2/v2\.0/authorize"
    r"|discovery/v2\.0/keys)$"
)


@dataclass
class SandboxConfig:
    """Everything ``python -m sandbox`` flags can change."""

    quota_calls: int = 100
    quota_period: float = 60.0
    dlr_delay: float = 0.2
    slow_seconds: float = 3.0
    #: Added to every API answer, to model the network hop to the real service (0: none).
    latency_ms: float = 0.0
    static_token: str | None = "sandbox-token"  # noqa: S105 - public test token
    token_ttl: int = 3600
    #: Seconds a refresh token is accepted, the seed's from the start (0: for ever).
    refresh_token_ttl: int = 0
    public_url: str | None = None
    seed_path: Path = SEED_PATH
    log_limit: int = 10_000
    #: The seeded random fault mode (off unless its rate is above 0); see sandbox/faults.py.
    faults: FaultPlan = field(default_factory=FaultPlan)
    #: Extra static tokens by account id (``--account-token``); an unknown id is a new account.
    account_tokens: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Request:
    """One HTTP request as received; ``target`` is the raw path and query, percent-encoded."""

    method: str
    target: str
    headers: Mapping[str, str]
    body: bytes = b""
    operation_id: str | None = None
    redact: bool = False  # OAuth traffic: the log keeps no secrets and no token responses
    account: str | None = None  # the account of an authenticated API call
    fault: FaultKind | None = None  # what the fault mode did to it

    @functools.cached_property
    def path(self) -> str:
        return urlsplit(self.target).path

    @functools.cached_property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.target).query, keep_blank_values=True))

    @functools.cached_property
    def lower_headers(self) -> dict[str, str]:
        return {k.lower(): v for k, v in self.headers.items()}

    def header(self, name: str) -> str | None:
        return self.lower_headers.get(name.lower())

    def json(self) -> Any:
        """The body as JSON (None when empty); invalid JSON is a 400."""
        if not self.body.strip():
            return None
        try:
            return json.loads(self.body)
        except ValueError:
            raise ApiError(400, "Request body is not valid JSON") from None


@dataclass
class Response:
    """One HTTP response; ``body`` is JSON-serialisable, or None for no body."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    #: Reset the connection instead of answering (the fault mode's reset and lost answer).
    drop: bool = False

    def content(self) -> bytes:
        if self.body is None:
            return b""
        return json.dumps(self.body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class ApiError(Exception):
    """An error answer: ``{"errorMessage": message, **extra}``, ``status`` and optional headers."""

    def __init__(
        self,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.extra = extra or {}

    def response(self) -> Response:
        return Response(
            self.status, {"errorMessage": self.message, **self.extra}, dict(self.headers)
        )


@dataclass(frozen=True)
class Call:
    """A validated API call, as the operation handlers see it."""

    principal: Principal
    operation: Operation
    params: Mapping[str, str]
    query: Mapping[str, str]
    headers: Mapping[str, str]  # lower-cased names
    body: Any


def utc_now() -> str:
    """ISO 8601 UTC timestamp with milliseconds and a ``Z``."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def e164(raw: str, regions: list[str] | None = None) -> str | None:
    """``raw`` as an E.164 number, parsed in the first region where it is a possible number; None
    if nowhere.
    """
    return _e164(raw, tuple(regions or (DEFAULT_REGION,)))


@functools.lru_cache(maxsize=4096)  # parsing dominates a send's cost; benchmarks reuse numbers
def _e164(raw: str, regions: tuple[str, ...]) -> str | None:
    for region in regions:
        try:
            number = phonenumbers.parse(raw, region.upper())
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_possible_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return None


def _absolute_http_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


class Sandbox:
    """The SmartDialog stand-in. Thread-safe: one instance serves every connection of the HTTP
    server.
    """

    def __init__(self, config: SandboxConfig | None = None, clock: Clock = time.monotonic) -> None:
        self.config = config or SandboxConfig()
        self.clock = clock
        self.contract: Contract = load_contract()
        self.seed: dict[str, Any] = json.loads(
            Path(self.config.seed_path).read_text(encoding="utf-8")
        )
        self.customers = {c["customerId"]: c for c in self.seed["customers"]}
        self.services = {s["id"]: (c, s) for c in self.seed["customers"] for s in c["services"]}
        self.accounts: dict[str, Account] = {
            a.id: a
            for a in load_accounts(self.seed, self.config.static_token, self.config.account_tokens)
        }
        self.quotas = {
            a.id: SlidingWindowQuota(
                self.config.quota_calls if a.quota_calls is None else a.quota_calls,
                self.config.quota_period if a.quota_period is None else a.quota_period,
                clock,
            )
            for a in self.accounts.values()
        }
        self.tokens = TokenStore(
            {},
            None,
            self.config.token_ttl,
            accounts=list(self.accounts.values()),
            refresh_ttl=self.config.refresh_token_ttl,
        )
        self.state = SandboxState(self.seed, self.config.log_limit)
        self.faults = FaultInjector(self.config.faults)
        self.callbacks = DeferredCalls()
        self.stopping = threading.Event()
        self.operations: dict[str, Callable[[Call], Response]] = {
            "GetUserCustomers": self.get_user_customers,
            "GetCustomerServices": self.get_customer_services,
            "GetPhoneNumberRegions": self.get_phone_number_regions,
            "GetWhatsappTemplateCategories": self.get_whatsapp_template_categories,
            "GetCustomerWhatsappIdentities": self.get_customer_whatsapp_identities,
            "GetCustomerWhatsAppTemplates": self.get_customer_whatsapp_templates,
            "CreateWhatsappTemplate": self.create_whatsapp_template,
            "WhatsAppOptIn": self.whatsapp_opt_in,
            "WhatsAppOptOut": self.whatsapp_opt_out,
            "SendMessage": self.send_message,
            "SendReplyMessage": self.send_message,
            "SendWhatsappTemplateMessage": self.send_whatsapp_template_message,
            "SendDiscussionReplyMessage": self.send_discussion_reply_message,
            "NewMessage": self.new_message,
            "DeleteTrigger": self.delete_trigger,
            "CreateGroupContact": self.create_group_contact,
            "GetGroupContact": self.get_group_contact,
            "UpdateGroupContact": self.update_group_contact,
            "DeleteGroupContact": self.delete_group_contact,
            "DeleteAllGroupContacts": self.delete_all_group_contacts,
        }
        missing = set(self.contract.by_id) - set(self.operations)
        assert not missing, f"operations without a handler: {sorted(missing)}"

    # --- lifecycle ---

    def reset(self) -> None:
        """Back to the seed: contacts, templates, opt-ins, quota log, RequestIds, pipelines, logs,
        pending DLRs.
        """
        self.callbacks.cancel_all()
        for quota in self.quotas.values():
            quota.reset()
        self.tokens.reset()
        self.state.reset()
        self.faults.reset()

    def close(self) -> None:
        self.stopping.set()
        self.callbacks.stop()

    # --- entry point ---

    def handle(self, request: Request) -> Response:
        """Answer one request; never raises. A response with ``drop`` set must not be written:
        the server resets the connection instead."""
        path = request.path
        if path == BASE_PATH or path.startswith(BASE_PATH + "/"):
            request.fault = self.faults.decide(request.method, path, request.body)
        try:
            response = self._faulty(request.fault) or self._dispatch(request)
        except ApiError as exc:
            response = exc.response()
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            response = Response(500, {"errorMessage": "Sandbox internal error"})
        if request.fault is not None and request.fault.drops_connection:
            response.drop = True
        if not request.path.startswith("/sandbox/"):
            self._log_request(request, response)
        return response

    def _faulty(self, fault: FaultKind | None) -> Response | None:
        """The answer of a call the fault mode stops before it is handled, or None (after
        holding a ``timeout`` call) to handle it as usual."""
        plan = self.faults.plan
        if fault is FaultKind.THROTTLED:
            raise ApiError(
                429,
                "Too many requests (sandbox fault mode)",
                {"Retry-After": str(plan.retry_after)},
            )
        if fault is FaultKind.UNAVAILABLE:
            raise ApiError(503, "Service temporarily unavailable (sandbox fault mode)")
        if fault is FaultKind.RESET:
            return Response(0, drop=True)
        if fault is FaultKind.TIMEOUT:
            self.stopping.wait(plan.hold_seconds)
        return None

    def _dispatch(self, request: Request) -> Response:
        path = request.path
        if path == BASE_PATH or path.startswith(BASE_PATH + "/"):
            return self._api(request)
        if path.startswith("/sandbox/"):
            return self._control(request)
        oauth = OAUTH_ROUTE.match(path)
        if oauth:
            request.redact = True
            return self._oauth(request, oauth["tenant"], oauth["policy"], oauth["endpoint"])
        raise ApiError(404, f"Not found: {path}")

    def _api(self, request: Request) -> Response:
        if self.config.latency_ms > 0:
            self.stopping.wait(self.config.latency_ms / 1000)
        principal = self.tokens.authenticate(request.header("Authorization"))
        if principal is None:
            raise ApiError(
                401,
                "Missing, invalid or expired bearer token",
                {"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        request.account = principal.account
        quota = self.quotas[principal.account]
        retry_after = quota.acquire(principal.subject)
        if retry_after is not None:
            raise ApiError(
                429,
                f"Rate limit exceeded: at most {quota.calls} calls per "
                f"{quota.period:g} seconds per connection; retry after {retry_after} seconds",
                {"Retry-After": str(retry_after)},
            )
        found = self.contract.match(request.method, request.path)
        if found is None:
            allowed = self.contract.allowed_methods(request.path)
            if allowed:
                raise ApiError(
                    405, f"Method {request.method} not allowed", {"Allow": ", ".join(allowed)}
                )
            raise ApiError(404, f"No operation at {request.path}")
        operation, params = found
        request.operation_id = operation.operation_id  # None in the log: refused before routing
        body = request.json() if operation.body is not None else None
        errors = self.contract.check(operation, params, request.headers, request.query, body)
        if errors:
            raise ApiError(400, "; ".join(errors))
        call = Call(principal, operation, params, request.query, request.lower_headers, body)
        return self.operations[operation.operation_id](call)

    # --- look-ups ---

    def customer(self, call: Call, customer_id: str) -> dict[str, Any]:
        """The customer, if the caller's account serves it: else 403 (another account's) or 404."""
        if customer_id == "forbidden":
            raise ApiError(403, f"Access to customer '{customer_id}' is denied")
        found: dict[str, Any] | None = self.customers.get(customer_id)
        if found is None:
            raise ApiError(404, f"Customer '{customer_id}' not found")
        if customer_id not in self.accounts[call.principal.account].customers:
            raise ApiError(403, f"Access to customer '{customer_id}' is denied")
        return found

    def service(
        self, call: Call, customer_id: str, service_id: str, service_type: str | None = None
    ) -> dict[str, Any]:
        customer = self.customer(call, customer_id)
        found: dict[str, Any] | None = next(
            (s for s in customer["services"] if s["id"] == service_id), None
        )
        if found is None:
            raise ApiError(404, f"Service '{service_id}' not found for customer '{customer_id}'")
        if service_type is not None and found["type"] != service_type:
            raise ApiError(400, f"Service '{service_id}' is not a {service_type} service")
        return found

    def get_user_customers(self, call: Call) -> Response:
        users = [
            {"customerId": c["customerId"], "customerName": c["customerName"]}
            for c in self.seed["customers"]
            if c["customerId"] in self.accounts[call.principal.account].customers
        ]
        return Response(200, {"customerUsers": users})

    def get_customer_services(self, call: Call) -> Response:
        customer = self.customer(call, call.params["Customer-Id"])
        wanted = call.headers["servicetype"].lower()
        reply = call.headers.get("allowreplymessage")
        services = [
            {"id": s["id"], "name": s["name"]}
            for s in customer["services"]
            if s["type"].lower() == wanted
            and (reply is None or s["allowReplyMessage"] == (reply.lower() == "true"))
        ]
        return Response(200, services)

    def get_phone_number_regions(self, call: Call) -> Response:
        return Response(200, self.seed["phoneNumberRegions"])

    def get_whatsapp_template_categories(self, call: Call) -> Response:
        return Response(200, self.seed["whatsappTemplateCategories"])

    def get_customer_whatsapp_identities(self, call: Call) -> Response:
        customer = self.customer(call, call.params["Customer-Id"])
        return Response(
            200, [{"inputSource": {"address": a}} for a in customer["whatsappIdentities"]]
        )

    # --- WhatsApp templates and opt-ins ---

    def get_customer_whatsapp_templates(self, call: Call) -> Response:
        customer_id = self.customer(call, call.params["Customer-Id"])["customerId"]
        wanted = call.query.get("TemplateId")
        with self.state.lock:
            templates = [
                {
                    "id": t["id"],
                    "displayName": t["displayName"],
                    "extensionParameters": {"rawContent": t["rawContent"]},
                }
                for t in self.state.templates[customer_id]
                if not wanted or t["id"] == wanted
            ]
        return Response(200, templates)

    def create_whatsapp_template(self, call: Call) -> Response:
        customer = self.customer(call, call.params["Customer-Id"])
        identity = e164(call.params["IdentityNumber"])
        if identity is None or identity not in customer["whatsappIdentities"]:
            raise ApiError(404, f"WhatsApp identity '{call.params['IdentityNumber']}' not found")
        body = call.body
        if body["Category"] not in self.seed["whatsappTemplateCategories"]:
            raise ApiError(400, f"Unknown template Category '{body['Category']}'")
        template_id = re.sub(r"[^a-z0-9]+", "_", body["DisplayName"].lower()).strip("_")
        if not template_id:
            raise ApiError(400, "DisplayName must contain letters or digits")
        template = {
            "id": template_id,
            "displayName": body["DisplayName"],
            "rawContent": body["RawContent"],
            "category": body["Category"],
            "language": body["Language"],
            "identity": identity,
            "buttons": body.get("Buttons", []),
            "attachmentUrl": body.get("AttachmentUrl"),
        }
        with self.state.lock:
            templates = self.state.templates[customer["customerId"]]
            if any(t["id"] == template_id for t in templates):
                raise ApiError(400, f"A template named '{template_id}' already exists")
            templates.append(template)
        return Response(204)

    def _opt_in_pair(self, call: Call) -> tuple[str, str]:
        sender, recipient = e164(call.params["Sender"]), e164(call.params["Recipient"])
        if sender is None or recipient is None:
            raise ApiError(400, "Sender and Recipient must be phone numbers")
        return sender, recipient

    def whatsapp_opt_in(self, call: Call) -> Response:
        pair = self._opt_in_pair(call)
        with self.state.lock:
            self.state.opt_ins.add(pair)
        return Response(204)

    def whatsapp_opt_out(self, call: Call) -> Response:
        pair = self._opt_in_pair(call)
        with self.state.lock:
            self.state.opt_ins.discard(pair)
        return Response(204)

    # --- sends ---

    def send_message(self, call: Call) -> Response:
        service = self.service(call, call.headers["customer-id"], call.headers["service-id"])
        if call.operation.operation_id == "SendReplyMessage" and not service["allowReplyMessage"]:
            raise ApiError(400, f"Service '{service['id']}' does not allow reply messages")
        body = call.body
        if body["Protocol"] == "WhatsApp":
            parts = 1  # WhatsApp messages are not split into parts
        else:
            parts = max(
                (
                    part_count(personalize(body["Content"], r.get("Personalization")))
                    for r in body["Recipients"]
                ),
                default=1,
            )
        return self._send(call, parts, pascal_case=True)

    def send_whatsapp_template_message(self, call: Call) -> Response:
        customer = self.customer(call, call.headers["customer-id"])
        self.service(call, customer["customerId"], call.headers["service-id"])
        name = call.body["TemplateName"]
        with self.state.lock:
            known = any(t["id"] == name for t in self.state.templates[customer["customerId"]])
        if not known:
            raise ApiError(
                400, f"Unknown TemplateName '{name}' for customer '{customer['customerId']}'"
            )
        return self._send(call, 1, pascal_case=False)

    def send_discussion_reply_message(self, call: Call) -> Response:
        self.customer(call, call.headers["customerid"])
        body = call.body
        answer = {
            "MessageId": str(uuid.uuid4()),
            "MessagePartCount": part_count(body["Content"]),
            "Recipients": [],
            "ThreadId": body["ThreadId"],
        }
        self._record_message(call, answer, [], body["Content"])
        return Response(200, answer)

    def _send(self, call: Call, parts: int, pascal_case: bool) -> Response:
        body = call.body
        subject = call.principal.key
        if not body["Recipients"]:
            raise ApiError(400, "body.Recipients must not be empty")
        addresses = []
        for recipient in body["Recipients"]:
            address = e164(recipient["Address"])
            if address is None:
                raise ApiError(400, f"Invalid recipient address '{recipient['Address']}'")
            addresses.append(address)
        dlr_url = body.get("DlrUrl")
        if dlr_url and not _absolute_http_url(dlr_url):
            raise ApiError(400, "body.DlrUrl must be an absolute http(s) URL")
        request_id = body.get("RequestId") or None
        if request_id is not None:
            earlier = self.state.remembered(subject, request_id, self.clock(), REQUEST_ID_MEMORY)
            if earlier is not None:
                raise self._duplicate(request_id, earlier)
        self._magic_outcome(call, addresses, request_id)

        message_id = str(uuid.uuid4())
        recipients = [(str(uuid.uuid4()), address) for address in addresses]
        if pascal_case:
            answer = {
                "MessageId": message_id,
                "MessagePartCount": parts,
                "Recipients": [{"Address": a, "Id": i} for i, a in recipients],
            }
        else:
            answer = {
                "messageId": message_id,
                "messagePartCount": parts,
                "recipients": [{"address": a, "id": i} for i, a in recipients],
            }
        if request_id is not None:
            earlier = self.state.remember(
                subject, request_id, answer, self.clock(), REQUEST_ID_MEMORY
            )
            if earlier is not None:  # a concurrent duplicate won
                raise self._duplicate(request_id, earlier)
        content = body.get("Content", body.get("TemplateName", ""))
        self._record_message(call, answer, recipients, content)
        if dlr_url:
            for recipient_id, address in recipients:
                failed = MAGIC_NUMBERS.get(address) == "undeliverable"
                report = functools.partial(
                    self._deliver_report, dlr_url, message_id, recipient_id, address, failed
                )
                self.callbacks.schedule(self.config.dlr_delay, report)
        return Response(200, answer)

    @staticmethod
    def _duplicate(request_id: str, earlier: dict[str, Any]) -> ApiError:
        return ApiError(
            409,
            f"Duplicate RequestId '{request_id}': the message was already accepted "
            "and is not sent again",
            extra=earlier,
        )

    def _magic_outcome(self, call: Call, addresses: list[str], request_id: str | None) -> None:
        """Apply the magic recipient numbers: slow first, then 500, 429, 503 and 400 in order."""
        magic = {MAGIC_NUMBERS[a] for a in addresses if a in MAGIC_NUMBERS}
        if not magic:
            return
        if "slow" in magic:
            self.stopping.wait(self.config.slow_seconds)
        if "error" in magic:
            raise ApiError(500, "Internal server error")
        if "throttled" in magic:
            raise ApiError(429, "Too many requests", {"Retry-After": "1"})
        if "temporary" in magic:
            key = (
                request_id
                or hashlib.sha256(
                    json.dumps(
                        [call.operation.operation_id, call.params, call.body], sort_keys=True
                    ).encode()
                ).hexdigest()
            )
            if self.state.attempt(call.principal.key, key) <= TEMPORARY_FAILURES:
                raise ApiError(503, "Service temporarily unavailable")
        if "rejected" in magic:
            rejected = next(a for a in addresses if MAGIC_NUMBERS.get(a) == "rejected")
            raise ApiError(400, f"recipient rejected: {rejected}")
        if "refused" in magic:
            raise ApiError(400, "The request was refused")

    def _record_message(
        self, call: Call, answer: Mapping[str, Any], recipients: list[tuple[str, str]], content: str
    ) -> None:
        self.state.log(
            "messages",
            {
                "direction": "outbound",
                "time": utc_now(),
                "operationId": call.operation.operation_id,
                "subject": call.principal.subject,
                "account": call.principal.account,
                "customerId": call.headers.get("customer-id") or call.headers.get("customerid"),
                "serviceId": call.headers.get("service-id"),
                "messageId": answer.get("MessageId") or answer.get("messageId"),
                "partCount": answer.get("MessagePartCount") or answer.get("messagePartCount"),
                "recipients": [{"id": i, "address": a} for i, a in recipients],
                "content": content,
                "request": call.body,
                "response": dict(answer),
            },
        )

    def _deliver_report(
        self, dlr_url: str, message_id: str, recipient_id: str, address: str, failed: bool
    ) -> None:
        status = "failed" if failed else "delivered"
        params = {
            "messageId": message_id,
            "recipientId": recipient_id,
            "recipient": address,
            "status": status,
            "statusCode": str(DLR_STATUS_CODES[status]),
            "timestamp": utc_now(),
        }
        parts = urlsplit(dlr_url)
        query = "&".join(q for q in (parts.query, urlencode(params, quote_via=quote)) if q)
        url = parts._replace(query=query).geturl()
        result = http_call("GET", url)
        if result.status is None or result.status >= 400:
            log.warning(
                "DLR callback for message %s answered %s", message_id, result.status or result.error
            )
        self.state.log(
            "delivery_reports",
            {
                **params,
                "url": url,
                "httpStatus": result.status,
                "error": result.error,
                "time": utc_now(),
            },
        )

    # --- pipelines (the New Message trigger) ---

    def new_message(self, call: Call) -> Response:
        service = self.service(call, call.headers["customer"], call.params["Service"], "TwoWay")
        body = call.body
        endpoint = body["options"]["endpointUrl"]
        if not _absolute_http_url(endpoint):
            raise ApiError(400, "body.options.endpointUrl must be an absolute http(s) URL")
        action = self.state.add_action(
            call.headers["customer"],
            service["id"],
            {
                "name": body["name"],
                "actionType": body["actionType"],
                "description": body.get("description"),
                "endpointUrl": endpoint,
                "httpVerb": body["options"]["httpVerb"].upper(),
            },
        )
        location = f"{BASE_PATH}/pipelines/{action['pipelineId']}/actions/{action['id']}"
        return Response(
            201, {"id": action["id"], "pipelineId": action["pipelineId"]}, {"Location": location}
        )

    def delete_trigger(self, call: Call) -> Response:
        found = self.state.actions.get(call.params["Action-Id"])
        if found is not None:
            self.customer(call, found["customerId"])  # another account's action: 403
        if not self.state.remove_action(call.params["Pipeline-Id"], call.params["Action-Id"]):
            pipeline, action = call.params["Pipeline-Id"], call.params["Action-Id"]
            raise ApiError(
                404,
                f"Action '{action}' not found in pipeline '{pipeline}'",
            )
        return Response(204)

    # --- group contacts ---

    def _contact_key(self, call: Call, regions: list[str] | None = None) -> tuple[str, str, str]:
        customer, service = call.params["Customer"], call.params["Group Service"]
        self.service(call, customer, service, "Group")
        phone = e164(call.params["Phone"], regions)
        if phone is None:
            raise ApiError(400, f"Invalid phone number '{call.params['Phone']}'")
        return customer, service, phone

    @staticmethod
    def _contact_view(contact: Mapping[str, Any]) -> dict[str, Any]:
        view = {"phone": contact["phone"]}
        view.update({k: contact[k] for k in CONTACT_FIELDS if contact.get(k) is not None})
        view["failedMessages"] = contact["failedMessages"]
        view.setdefault("customContactProperties", [])
        return view

    def create_group_contact(self, call: Call) -> Response:
        customer, service = call.params["Customer"], call.params["Group Service"]
        self.service(call, customer, service, "Group")
        body = call.body
        phone = e164(body["phone"], body.get("phoneNumberRegions"))
        if phone is None:
            raise ApiError(400, f"Invalid phone number '{body['phone']}'")
        contact = {k: body[k] for k in CONTACT_FIELDS if k in body}
        contact.update(
            id=str(uuid.uuid4()), phone=phone, active=body.get("active", True), failedMessages=0
        )
        with self.state.lock:
            if (customer, service, phone) in self.state.contacts:
                raise ApiError(400, f"Contact {phone} already exists in group service '{service}'")
            self.state.contacts[(customer, service, phone)] = contact
        return Response(200, contact["id"])

    def get_group_contact(self, call: Call) -> Response:
        region = call.query.get("Region")
        key = self._contact_key(call, [region] if region else None)
        with self.state.lock:
            contact = self.state.contacts.get(key)
            if contact is None:
                raise ApiError(404, f"Contact {key[2]} not found")
            return Response(200, self._contact_view(contact))

    def update_group_contact(self, call: Call) -> Response:
        body = call.body
        key = self._contact_key(call, body.get("phoneNumberRegions"))
        with self.state.lock:
            contact = self.state.contacts.get(key)
            if contact is None:
                raise ApiError(404, f"Contact {key[2]} not found")
            contact.update({k: body[k] for k in (*CONTACT_FIELDS, "active") if k in body})
        return Response(200, True)

    def delete_group_contact(self, call: Call) -> Response:
        key = self._contact_key(call)
        with self.state.lock:
            if self.state.contacts.pop(key, None) is None:
                raise ApiError(404, f"Contact {key[2]} not found")
        return Response(200, True)

    def delete_all_group_contacts(self, call: Call) -> Response:
        customer, service = call.params["Customer"], call.params["Group Service"]
        self.service(call, customer, service, "Group")
        with self.state.lock:
            for key in [k for k in self.state.contacts if k[:2] == (customer, service)]:
                del self.state.contacts[key]
        return Response(200, True)

    # --- the control and inspection API (/sandbox/...) ---

    def _control(self, request: Request) -> Response:
        route = (request.method, request.path.rstrip("/"))
        if route == ("GET", "/sandbox/health"):
            return Response(200, {"status": "ok"})
        if route == ("POST", "/sandbox/reset"):
            self.reset()
            return Response(200, {"status": "reset"})
        if route == ("POST", "/sandbox/revoke-tokens"):
            return self._revoke(request)
        if route == ("GET", "/sandbox/accounts"):
            return Response(200, self.accounts_view())
        if route == ("POST", "/sandbox/inbound"):
            return self.inbound(request.json())
        logs = {
            "/sandbox/requests": "requests",
            "/sandbox/messages": "messages",
            "/sandbox/delivery-reports": "delivery_reports",
        }
        if request.method == "GET" and route[1] in logs:
            entries = self.state.snapshot(logs[route[1]])
            wanted = request.query.get("operationId")
            return Response(
                200, [e for e in entries if not wanted or e.get("operationId") == wanted]
            )
        if route == ("GET", "/sandbox/pipelines"):
            return Response(200, self.state.actions_for(None))
        if route[1] == "/sandbox/faults":
            return self._fault_control(request)
        raise ApiError(404, f"Not found: {request.method} {request.path}")

    def accounts_view(self) -> list[dict[str, Any]]:
        """The accounts, their customers, client ids and quota limits; never a secret."""
        return [
            a.public(
                self.quotas[a.id].calls, self.quotas[a.id].period, self.quotas[a.id].used_total()
            )
            for a in self.accounts.values()
        ]

    def _revoke(self, request: Request) -> Response:
        """Drop issued access tokens: ``?account=ID`` of one account only, ``&static=true`` also
        refuses its static tokens until reset."""
        account = request.query.get("account") or None
        if account is not None and account not in self.accounts:
            raise ApiError(404, f"Account '{account}' not found")
        static = request.query.get("static", "").lower() in ("1", "true", "yes")
        revoked = self.tokens.revoke_access_tokens(account, static=static)
        return Response(200, {"revoked": revoked, "account": account, "static": static})

    def _fault_control(self, request: Request) -> Response:
        """``GET``: the plan and counts; ``PUT``: a new plan (counts from zero); ``DELETE``:
        faults off."""
        if request.method == "PUT":
            try:
                plan = FaultPlan.from_json(request.json())
            except ValueError as exc:
                raise ApiError(400, f"Invalid fault plan: {exc}") from None
            self.faults.configure(plan)
        elif request.method == "DELETE":
            self.faults.configure(FaultPlan())
        elif request.method != "GET":
            raise ApiError(
                405, f"Method {request.method} not allowed", {"Allow": "GET, PUT, DELETE"}
            )
        return Response(200, self.faults.snapshot())

    def inbound(self, spec: Any) -> Response:
        """Simulate an inbound message: POST the New Message payload to the registered actions."""
        if not isinstance(spec, dict):
            raise ApiError(400, "Expected a JSON object with sender, recipient and content")
        missing = [
            k for k in ("sender", "recipient", "content") if not isinstance(spec.get(k), str)
        ]
        if missing:
            raise ApiError(400, f"Missing or non-string field(s): {', '.join(missing)}")
        service_id = spec.get("service")
        if service_id is not None and service_id not in self.services:
            raise ApiError(404, f"Service '{service_id}' not found")
        payload = {
            "sender": spec["sender"],
            "recipient": spec["recipient"],
            "content": spec["content"],
            "timestamp": utc_now(),
            "protocol": spec.get("protocol") or "SMS",
            "attachments": [
                {
                    "name": a.get("name"),
                    "mimeType": a.get("mimeType"),
                    "resourceLocation": a.get("resourceLocation"),
                }
                for a in spec.get("attachments") or []
            ],
            "messageId": str(uuid.uuid4()),
        }
        errors = list(
            self.contract.validator(self.contract.notification_schema(PIPELINE_PATH)).iter_errors(
                payload
            )
        )
        if errors:
            raise ApiError(400, "; ".join(e.message for e in errors))
        content = json.dumps(payload).encode("utf-8")
        deliveries = []
        for action in self.state.actions_for(service_id):
            result = http_call(
                action["httpVerb"],
                action["endpointUrl"],
                content,
                {"Content-Type": "application/json"},
            )
            if result.status is None or result.status >= 400:
                log.warning(
                    "inbound delivery to action %s answered %s",
                    action["id"],
                    result.status or result.error,
                )
            deliveries.append(
                {
                    "actionId": action["id"],
                    "pipelineId": action["pipelineId"],
                    "serviceId": action["serviceId"],
                    "endpointUrl": action["endpointUrl"],
                    "status": result.status,
                    "error": result.error,
                }
            )
        self.state.log(
            "messages",
            {
                "direction": "inbound",
                "time": payload["timestamp"],
                "serviceId": service_id,
                "payload": payload,
            },
        )
        return Response(200, {"payload": payload, "deliveries": deliveries})

    # --- OAuth 2.0 / OpenID Connect, B2C-shaped ---

    def _oauth(self, request: Request, tenant: str, policy: str, endpoint: str) -> Response:
        if endpoint.endswith("openid-configuration") and request.method == "GET":
            return Response(200, discovery_document(self._public_base(request), tenant, policy))
        if endpoint.endswith("keys") and request.method == "GET":
            return Response(200, {"keys": []})
        if endpoint.endswith("token") and request.method == "POST":
            form = dict(parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True))
            status, body = self.tokens.token_response(form, request.header("Authorization"))
            return Response(status, body, {"Cache-Control": "no-store", "Pragma": "no-cache"})
        if endpoint.endswith("authorize") and request.method == "GET":
            redirect_uri = request.query.get("redirect_uri")
            if not redirect_uri or not _absolute_http_url(redirect_uri):
                return Response(
                    400,
                    {"error": "invalid_request", "error_description": "redirect_uri is required"},
                )
            answer = {"code": self.tokens.issue_code()}
            if "state" in request.query:
                answer["state"] = request.query["state"]
            separator = "&" if urlsplit(redirect_uri).query else "?"
            return Response(302, None, {"Location": redirect_uri + separator + urlencode(answer)})
        raise ApiError(405, f"Method {request.method} not allowed")

    def _public_base(self, request: Request) -> str:
        """Base URL advertised in the discovery document: --public-url, else forwarded headers, else
        https://Host.
        """
        if self.config.public_url:
            return self.config.public_url.rstrip("/")
        host = request.header("X-Forwarded-Host") or request.header("Host") or "localhost"
        # msal only accepts https endpoints; the client's http_client maps them back to the
        # sandbox's http URL.
        return f"{request.header('X-Forwarded-Proto') or 'https'}://{host}"

    # --- the request log ---

    def _log_request(self, request: Request, response: Response) -> None:
        body: Any
        if request.redact and request.body:
            form = parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True)
            body = {k: "***" if k in REDACTED_FORM_FIELDS else v for k, v in form}
        else:
            try:
                body = json.loads(request.body) if request.body.strip() else None
            except ValueError:
                body = request.body.decode("utf-8", "replace")
        self.state.log(
            "requests",
            {
                "time": utc_now(),
                "method": request.method,
                "path": request.path,
                "query": request.query,
                "headers": {
                    k: v for k, v in request.headers.items() if k.lower() not in REDACTED_HEADERS
                },
                "body": body,
                "status": None if request.fault is FaultKind.RESET else response.status,
                "operationId": request.operation_id,
                "account": request.account,
                "response": None if request.redact else response.body,
                **({"fault": request.fault.value} if request.fault is not None else {}),
            },
        )
