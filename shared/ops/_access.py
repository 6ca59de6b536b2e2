"""Who may use the operations page, and the anti-CSRF token of its buttons.

In Azure the page is behind App Service Authentication (Easy Auth, ``infra/app/auth.bicep``):
the platform signs the user in with Entra ID and passes the principal to the app in
``X-MS-CLIENT-PRINCIPAL`` (base64 JSON: ``auth_typ``, ``claims`` [{``typ``, ``val``}],
``role_typ``), stripping that header from anything a client sends. The function itself is
anonymous (the other functions keep their keys: unauthenticated requests are let through), so
this module is the gate: a principal whose ``groups`` claim holds one of
``SMARTDIALOG_OPS_ALLOWED_GROUPS`` or whose roles hold one of ``SMARTDIALOG_OPS_ALLOWED_ROLES``
(a user in too many groups gets no ``groups`` claim, only a pointer to Graph, which the page does
not call: such a user is told to use an app role).
With authentication off (``WEBSITE_AUTH_ENABLED`` not true) the header could be forged, so
the page refuses everyone, and so it does off App Service (a container, say). Only in local
development (``AZURE_FUNCTIONS_ENVIRONMENT=Development``, not on App Service) is it open, like
every function.

Buttons that change state POST a token signed with the callback secrets (:mod:`shared.signing`)
for ``ops-form/<principal id>``, valid :data:`FORM_TOKEN_SECONDS`: a page served to one user
cannot be replayed by another, nor long after.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.problems import Problem, ProblemType
from shared.signing import TokenPurpose, sign, verify

if TYPE_CHECKING:
    from shared.settings import Settings

__all__ = [
    "FORM_TOKEN_SECONDS",
    "PRINCIPAL_HEADER",
    "Principal",
    "authorize",
    "form_token",
    "on_app_service",
    "verify_form_token",
]

PRINCIPAL_HEADER = "x-ms-client-principal"
#: How long a served page's buttons work.
FORM_TOKEN_SECONDS = 15 * 60
_GROUP_CLAIMS = frozenset(
    {"groups", "http://schemas.microsoft.com/ws/2008/06/identity/claims/groups"}
)
_ROLE_CLAIMS = frozenset({"roles", "http://schemas.microsoft.com/ws/2008/06/identity/claims/role"})
_ID_CLAIMS = ("http://schemas.microsoft.com/identity/claims/objectidentifier", "oid", "sub")
_NAME_CLAIMS = (
    "name",
    "preferred_username",
    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name",
)
# Token subjects live in the webhook purpose's namespace scheme (see shared.inbound._registry):
# no webhook or subscription subject starts with this, so no token opens both.
_FORM_SUBJECT = "ops-form/{}"
_NOTICE_SUBJECT = "ops-notice/{}/{}"


@dataclass(frozen=True)
class Principal:
    """The user the page serves: ``local`` in local development."""

    id: str
    name: str
    groups: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()
    #: The token listed no groups, only that there are too many (Entra ID's groups overage).
    groups_overage: bool = False


LOCAL = Principal("local", "local developer")


def on_app_service(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the app runs on App Service (the platform sets ``WEBSITE_INSTANCE_ID`` and
    ``WEBSITE_HOSTNAME``; the dev host and ``func start`` set neither)."""
    env = os.environ if environ is None else environ
    return bool(env.get("WEBSITE_INSTANCE_ID") or env.get("WEBSITE_HOSTNAME"))


def _split(raw: str) -> frozenset[str]:
    return frozenset(part.strip() for part in raw.split(",") if part.strip())


def parse_principal(header: str | None) -> Principal | None:
    """The principal Easy Auth passed, or None when absent or unreadable."""
    if not header:
        return None
    try:
        document: Any = json.loads(base64.b64decode(header + "=" * (-len(header) % 4)))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(document, dict) or not isinstance(document.get("claims"), list):
        return None
    claims: list[tuple[str, str]] = [
        (str(c.get("typ", "")), str(c.get("val", "")))
        for c in document["claims"]
        if isinstance(c, dict)
    ]
    role_type = str(document.get("role_typ") or "")
    by_type: dict[str, list[str]] = {}
    for typ, val in claims:
        by_type.setdefault(typ, []).append(val)
    ident = next((by_type[t][0] for t in _ID_CLAIMS if by_type.get(t)), None)
    if not ident:
        return None
    name = next((by_type[t][0] for t in _NAME_CLAIMS if by_type.get(t)), ident)
    return Principal(
        id=ident,
        name=name,
        groups=frozenset(v for t, v in claims if t in _GROUP_CLAIMS),
        roles=frozenset(
            v for t, v in claims if t in _ROLE_CLAIMS or (role_type and t == role_type)
        ),
        groups_overage=any(_overage(t, v) for t, v in claims),
    )


def _overage(typ: str, val: str) -> bool:
    """Whether claim ``typ`` says the groups were left out: over 200 (150 in SAML) Entra ID
    sends ``_claim_names`` pointing at Graph instead, an implicit flow's over 6 ``hasgroups``."""
    if typ == "hasgroups":
        return val.lower() == "true"
    if typ != "_claim_names":
        return False
    try:
        names = json.loads(val)
    except (ValueError, RecursionError):
        return False
    return isinstance(names, dict) and "groups" in names


def authorize(
    settings: Settings, headers: Mapping[str, str], environ: Mapping[str, str] | None = None
) -> Principal:
    """The principal allowed to use the page; raises a 401 or 403 :class:`Problem` otherwise.
    ``headers`` are lower-cased."""
    env = os.environ if environ is None else environ
    if settings.local_development and not on_app_service(env):
        return LOCAL
    if not on_app_service(env) or str(env.get("WEBSITE_AUTH_ENABLED", "")).lower() != "true":
        # Anywhere else (a container, say) nobody vouches for the principal header either.
        raise Problem(
            403,
            "The operations page needs App Service Authentication",
            "Authentication is off for this app, or it does not run on App Service, so no "
            "signed-in user can be trusted: deploy infra/app/auth.bicep (docs/operations.md). "
            "Only local development (AZURE_FUNCTIONS_ENVIRONMENT=Development) opens the page "
            "without it.",
            type=ProblemType.FORBIDDEN,
        )
    principal = parse_principal(headers.get(PRINCIPAL_HEADER))
    if principal is None:
        raise Problem(
            401,
            "Sign in to use the operations page",
            "Open /.auth/login/aad?post_login_redirect_uri=/api/ops to sign in with Entra ID.",
            type=ProblemType.UNAUTHORIZED,
        )
    groups, roles = _split(settings.ops_allowed_groups), _split(settings.ops_allowed_roles)
    if not (principal.groups & groups or principal.roles & roles):
        if not groups and not roles:
            why = "Nobody may: set SMARTDIALOG_OPS_ALLOWED_GROUPS or SMARTDIALOG_OPS_ALLOWED_ROLES."
        elif principal.groups_overage and not principal.groups:
            why = (
                "Your sign-in carried no group list: your account is in more groups than Entra "
                "ID puts in a token (groups overage), and the page does not ask Microsoft Graph. "
                "Assign yourself an app role listed in SMARTDIALOG_OPS_ALLOWED_ROLES instead "
                "(docs/operations.md)."
            )
        else:
            why = "Your account is in none of the allowed groups and holds none of the roles."
        raise Problem(
            403, "Not allowed to use the operations page", why, type=ProblemType.FORBIDDEN
        )
    return principal


def form_token(settings: Settings, principal: Principal) -> str:
    """The anti-CSRF token of a page served to ``principal``."""
    return _signed(settings, _FORM_SUBJECT.format(principal.id))


def verify_form_token(settings: Settings, principal: Principal, token: str | None) -> bool:
    """Whether ``token`` was served to ``principal`` within :data:`FORM_TOKEN_SECONDS`."""
    return _verified(settings, _FORM_SUBJECT.format(principal.id), token)


def notice_token(settings: Settings, principal: Principal, notice: str) -> str:
    """The signature of a button's outcome shown to ``principal`` after its redirect: a link
    made elsewhere cannot put its own text on the page."""
    return _signed(settings, _NOTICE_SUBJECT.format(principal.id, notice))


def verify_notice(settings: Settings, principal: Principal, notice: str, token: str | None) -> bool:
    """Whether ``token`` is :func:`notice_token` of ``notice`` for ``principal``."""
    return _verified(settings, _NOTICE_SUBJECT.format(principal.id, notice), token)


def _signed(settings: Settings, subject: str) -> str:
    return sign(
        TokenPurpose.WEBHOOK,
        subject,
        ttl_seconds=FORM_TOKEN_SECONDS,
        secrets=settings.callback_secret_list,
    )


def _verified(settings: Settings, subject: str, token: str | None) -> bool:
    return verify(token, TokenPurpose.WEBHOOK, subject, secrets=settings.callback_secret_list)
