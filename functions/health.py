"""A liveness probe: answers without touching storage or SmartDialog."""

import json

import azure.functions as func

bp = func.Blueprint()


@bp.function_name("Health")
@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    """``GET /api/health``: 200 with ``{"status": "ok"}`` while the app can serve; 503 with a
    problem document naming each misconfigured setting (``errors[].field``) otherwise."""
    from shared.health import configuration_problem
    from shared.problems import PROBLEM_CONTENT_TYPE

    problem = configuration_problem()
    if problem is not None:
        return func.HttpResponse(problem.to_json(), status_code=503, mimetype=PROBLEM_CONTENT_TYPE)
    return func.HttpResponse(
        json.dumps({"status": "ok"}), status_code=200, mimetype="application/json"
    )
