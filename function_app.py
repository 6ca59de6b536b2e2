"""The Azure Functions app: sets the HTTP libraries' loggers and registers the blueprints.

Importing this module must stay cheap (cold start): no I/O, no settings read, no
heavy SDK import. Each blueprint module in ``functions/`` imports its logic lazily.
"""

import azure.functions as func

from functions import BLUEPRINTS
from shared.logs import configure_logging

configure_logging()

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

for blueprint in BLUEPRINTS:
    app.register_functions(blueprint)
