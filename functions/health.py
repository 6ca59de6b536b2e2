"""A liveness probe: answers without touching storage or SmartDialog."""

import json

import azure.functions as func

bp = func.Blueprint()


@bp.function_name("Health")
@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    """``GET /api/health``: 200 with ``{"status": "ok"}`` while the app can serve."""
    return func.HttpResponse(
        json.dumps({"status": "ok"}), status_code=200, mimetype="application/json"
    )
