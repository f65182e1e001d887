"""One request to a registry, following redirects under our own policy.

httpx's `follow_redirects` would carry `Authorization` to whatever host a
registry names; ours never goes from https to http, never to another host's
internal address, and never carries `Authorization` off the registry's origin
(S3, GCS and Azure SAS URLs reject it, and it is not theirs to see).
"""

from __future__ import annotations

from typing import Dict
from urllib.parse import urljoin, urlsplit

import httpx

from ..errors import RegistryError
from .addresses import HostRule, host_port

_REDIRECT_STATUSES = {301, 302, 303, 307, 308}
_MAX_REDIRECTS = 10


class RedirectingSender:
    """Sends one request for one registry host, following redirects safely."""

    def __init__(self, registry: str, base_url: str, http: httpx.Client, hosts: HostRule) -> None:
        self._registry = registry
        self._http = http
        self._hosts = hosts
        self._origin = urlsplit(base_url)[:2]

    def on_registry(self, url: str) -> bool:
        """Whether `url` is on the registry's own origin (the only one that gets credentials)."""
        return urlsplit(url)[:2] == self._origin

    def send(self, method: str, url: str, headers: Dict[str, str], stream: bool) -> httpx.Response:
        """One request, following redirects: never to http from https, never
        to another host's internal address (`_judge_redirect`), and never
        carrying Authorization off the registry's origin. The response's
        `url` is the one that answered."""
        for _ in range(_MAX_REDIRECTS + 1):
            request = self._http.build_request(method, url, headers=headers)
            response = self._http.send(request, stream=stream, follow_redirects=False)
            location = response.headers.get("location")
            if response.status_code not in _REDIRECT_STATUSES or not location:
                return response
            response.close()
            target = urljoin(url, location)
            if urlsplit(url).scheme == "https" and urlsplit(target).scheme != "https":
                raise RegistryError(f"{self._registry}: refusing redirect from https to {urlsplit(target).scheme} "
                                    f"({urlsplit(target).netloc})")
            if not self.on_registry(target):
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
                self._judge_redirect(url, target)
            url = target
        raise RegistryError(f"{self._registry}: more than {_MAX_REDIRECTS} redirects for {urlsplit(url).path}")

    def _judge_redirect(self, url: str, target: str) -> None:
        """Refuse a redirect off the registry's origin to an internal address
        (in any spelling, or a name resolving to one) that is not the
        registry's own nor allowed in `token_realms`, unless the registry is
        itself on an internal address: a registry on the internet must not
        lead the service to its own network (127.0.0.1, 169.254.169.254).
        The rule of token realms (addresses.HostRule), judged by what the
        target resolves to now; no credentials follow a redirect either way."""
        inside = self._hosts.foreign_internal(target, inward_ok=True)
        if inside:
            path = ascii(urlsplit(url).path)[1:-1]  # a redirect's path is the registry's text
            raise RegistryError(
                f"{self._registry}: refusing the redirect of {path} to {host_port(target)}: a private "
                f"address ({', '.join(str(ip) for ip in inside)}), and the registry is on a public one; if that host "
                f'serves this registry\'s storage, allow it in the watchlist: token_realms = ["{host_port(target)}"] '
                f'under [registries."{self._registry}"]'
            )
