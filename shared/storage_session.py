"""The ``requests`` session behind the app's storage clients (``shared.storage``).

azure-core's ``RequestsTransport`` calls ``Session.request`` for every storage round trip, and
a plain ``requests.Session`` spends about a seventh of a local queue put there on things no
storage request uses: merging session cookies, auth and hooks into the request, the cookie jar
after the answer, and looking for a redirect that ``allow_redirects=False`` never follows. This
session prepares the SDK's request as it is (plus the session's default headers, as requests
adds them) and hands it to the mounted adapter, which pools the connections, picks the proxy
and checks TLS exactly as before. The SDK signs every request itself and never sends cookies;
answers are read the same way (whole, unless the SDK streams a download). The session's own
``verify``, ``cert``, ``proxies``, ``auth`` and ``params`` attributes are not used: azure-core
passes what each request needs.

Measured against Azurite, one ``QueueClient.send_message`` of 600 bytes: 0.76-0.85 ms of CPU
with a plain session, 0.65-0.75 ms with this one (``bench.webhook_ingest`` counts what it
changes end to end). Imported only when ``shared.storage`` builds its first client.
"""

from __future__ import annotations

from typing import Any

import requests
from requests.adapters import HTTPAdapter
from requests.models import PreparedRequest
from urllib3.util.retry import Retry


class StorageSession(requests.Session):
    """A session whose :meth:`request` goes straight to the adapter (module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.trust_env = False  # the environment is read once, by shared.storage
        # Retries are the SDK's (its retry policy), never urllib3's, as in RequestsTransport.
        adapter = HTTPAdapter(max_retries=Retry(total=False, redirect=False, raise_on_status=False))
        self.mount("http://", adapter)
        self.mount("https://", adapter)

    def request(  # type: ignore[override]  # the keywords azure-core passes, no more
        self,
        method: str,
        url: str,
        *,
        headers: Any = None,
        data: Any = None,
        files: Any = None,
        verify: bool | str | None = True,
        timeout: Any = None,
        cert: Any = None,
        allow_redirects: bool = False,
        proxies: Any = None,
        stream: bool = False,
        **unknown: Any,
    ) -> requests.Response:
        if unknown:  # as Session.request: an option nobody reads is a mistake, not a no-op
            raise TypeError(f"unexpected keyword arguments: {', '.join(sorted(unknown))}")
        if allow_redirects:  # azure-core follows redirects in its own policy
            raise ValueError("the storage session does not follow redirects")
        if verify is None:  # as Session: None is the default (check), never "do not check"
            verify = True
        prepared = PreparedRequest()
        prepared.prepare(method=method, url=url, headers=headers, data=data, files=files)
        for name, value in self.headers.items():
            prepared.headers.setdefault(name, value)
        response = self.get_adapter(url).send(
            prepared,
            stream=stream,
            timeout=timeout,
            verify=verify,
            cert=cert,
            proxies=proxies or {},
        )
        if not stream:
            _ = response.content  # read the whole answer now, as Session.send does
        return response
