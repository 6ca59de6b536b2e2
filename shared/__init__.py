"""SmartDialog Functions: the logic behind the Azure Functions blueprints.

Everything here is importable and testable without the Functions host. Heavy
dependencies (msal, azure-data-tables, phonenumbers, ...) are imported lazily,
inside the functions that need them, so importing ``function_app`` stays cheap.
"""
