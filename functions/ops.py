"""The operations page and the dead-letter actions.

``OpsPage`` and its buttons are anonymous at the Functions level: in Azure, App Service
Authentication signs the user in with Entra ID and :mod:`shared.ops.page` checks the principal
it passes (a function key in a browser's URL would leak). The dead-letter actions are pipeline
actions behind the function key, like every other action, and appear in the connector.
``PoisonKeeper`` (a timer; the dev host does not run timers) keeps poison messages for good
(a poisoned send's message is failed instead, with its dead letter).
"""

from __future__ import annotations

import azure.functions as func

from functions.actions import serve

bp = func.Blueprint()
FUNCTION = func.AuthLevel.FUNCTION
ANONYMOUS = func.AuthLevel.ANONYMOUS
#: Every 6 hours: far inside the 7 days a poison message lives before it is kept.
POISON_KEEPER_SCHEDULE = "0 17 */6 * * *"


def _html(response: object) -> func.HttpResponse:
    from shared.ops.page import PageResponse

    assert isinstance(response, PageResponse)
    return func.HttpResponse(
        body=response.body, status_code=response.status, headers=dict(response.headers)
    )


@bp.function_name("OpsPage")
@bp.route(route="ops", methods=["GET"], auth_level=ANONYMOUS)
def ops_page(req: func.HttpRequest) -> func.HttpResponse:
    from urllib.parse import urlsplit

    from shared.ops.page import handle_page

    return _html(handle_page(dict(req.headers), dict(req.params), urlsplit(req.url).path))


@bp.function_name("OpsPageAction")
@bp.route(route="ops/{Action}", methods=["POST"], auth_level=ANONYMOUS)
def ops_page_action(req: func.HttpRequest) -> func.HttpResponse:
    from shared.ops.page import handle_page_action

    action = req.route_params.get("Action", "")
    return _html(handle_page_action(action, dict(req.headers), req.get_body() or b""))


@bp.function_name("PoisonKeeper")
@bp.timer_trigger(arg_name="timer", schedule=POISON_KEEPER_SCHEDULE, run_on_startup=False)
def poison_keeper(timer: func.TimerRequest) -> None:
    """Keeps the host's poison messages until handled (the host gives them 7 days to live); a
    poisoned send's message is failed instead, with its event and dead letter."""
    from shared.ops import keep_poison

    keep_poison()


@bp.function_name("ListDeadLetters")
@bp.route(route="deadletters", methods=["GET"], auth_level=FUNCTION)
def list_dead_letters(req: func.HttpRequest) -> func.HttpResponse:
    return serve("ListDeadLetters", req)


@bp.function_name("GetDeadLetter")
@bp.route(route="deadletters/{DeadLetterId}", methods=["GET"], auth_level=FUNCTION)
def get_dead_letter(req: func.HttpRequest) -> func.HttpResponse:
    return serve("GetDeadLetter", req)


@bp.function_name("RedriveDeadLetter")
@bp.route(route="deadletters/{DeadLetterId}/redrive", methods=["POST"], auth_level=FUNCTION)
def redrive_dead_letter(req: func.HttpRequest) -> func.HttpResponse:
    return serve("RedriveDeadLetter", req)


@bp.function_name("PurgeDeadLetter")
@bp.route(route="deadletters/{DeadLetterId}", methods=["DELETE"], auth_level=FUNCTION)
def purge_dead_letter(req: func.HttpRequest) -> func.HttpResponse:
    return serve("PurgeDeadLetter", req)


@bp.function_name("RedriveDeadLetters")
@bp.route(route="deadletters/redrive", methods=["POST"], auth_level=FUNCTION)
def redrive_dead_letters(req: func.HttpRequest) -> func.HttpResponse:
    return serve("RedriveDeadLetters", req)


@bp.function_name("PurgeDeadLetters")
@bp.route(route="deadletters/purge", methods=["POST"], auth_level=FUNCTION)
def purge_dead_letters(req: func.HttpRequest) -> func.HttpResponse:
    return serve("PurgeDeadLetters", req)
