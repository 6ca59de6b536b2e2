"""SmartDialog sandbox: a local stand-in for the SmartDialog API that speaks its published wire
contract.

- ``python -m sandbox --help``: run it (see ``docs/sandbox.md``).
- ``sandbox.server.SandboxServer``: run it in-process from tests and benchmarks.
- ``sandbox.contract``: the contract (``contract.json``) and a request validator, importable
  without a server.

Nothing is imported here, so ``import sandbox.contract`` stays light.
"""
