"""Which connections mitmproxy intercepts: provider hosts only, on loopback."""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any

from mitmproxy import ctx

from addon.providers import allow_host_patterns
from addon.upstream_proxy import UPSTREAM_AUTH_VAR

log = logging.getLogger("tokometer")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Interception:
    """Intercepts TLS for LLM provider hosts only; every other host is tunneled.

    Sets mitmproxy's ``allow_hosts`` to anchored patterns of the provider
    registry (kept alongside any the user gave), ``connection_strategy=lazy``
    so a call the proxy answers itself never opens an upstream connection, and
    listens on 127.0.0.1 unless told otherwise: mitmproxy binds its listener
    before it loads a script, so when the addon had to change an unset
    ``listen_host`` it rebinds the listener at ``running``. A listener the user
    put on another interface is kept, with a warning. mitmdump's own flow dump
    is turned off (the addon prints one line per LLM call; mitmproxy's line
    would show a Gemini ``?key=``) unless a more detailed one is asked for. The
    credentials of a company proxy scripts/proxy chains to come from
    ``$TOKOMETER_UPSTREAM_AUTH`` into ``upstream_auth``.
    """

    def __init__(self, patterns: Callable[[], list[str]] = allow_host_patterns) -> None:
        self._patterns = patterns  # the provider hosts in force (policies.yaml may add some)
        self._chose_listen_host = False
        self._flow_detail_set = False  # only the first configure may turn mitmdump's flow dump off
        self._added: set[str] = set()  # allow_hosts patterns this addon put there (not the user's)

    def refresh(self) -> None:
        """Intercept the provider hosts in force now (policies.yaml ``providers:`` edited)."""
        self.configure(set())

    def running(self) -> Coroutine[Any, Any, None] | None:
        """Check (and at start, move) the listener. A plain method that returns a coroutine only
        when the listener must be bound again: when mitmproxy reloads the script it calls
        ``running`` from sync code, which refuses a coroutine function and then skips the
        addons after it (the Meter, whose store would never open)."""
        proxyserver = ctx.master.addons.get("proxyserver")
        if proxyserver is None:
            return None
        if self._chose_listen_host and self._exposed(proxyserver):
            return self._rebind(proxyserver)
        self._warn_if_exposed(proxyserver)
        return None

    async def _rebind(self, proxyserver: Any) -> None:
        try:  # bound before this script loaded: bind again, now on 127.0.0.1
            await proxyserver.servers.update([])
            await proxyserver.setup_servers()
        except Exception as exc:
            log.warning("tokometer: could not move the listener to 127.0.0.1: %s", exc)
        self._warn_if_exposed(proxyserver)

    def _warn_if_exposed(self, proxyserver: Any) -> None:
        exposed = self._exposed(proxyserver)
        if exposed:
            log.warning(
                "tokometer: listening on %s, not loopback: other machines can use this proxy "
                "and meter calls as you. Pass --listen-host 127.0.0.1 (scripts/proxy does).",
                ", ".join(exposed),
            )

    @staticmethod
    def _exposed(proxyserver: object) -> list[str]:
        addrs = proxyserver.listen_addrs()  # type: ignore[attr-defined]
        return sorted({addr[0] or "*" for addr in addrs if not _is_loopback(addr[0])})

    def configure(self, updated: set[str]) -> None:
        changes: dict[str, object] = {}
        current = list(ctx.options.allow_hosts)
        wanted = self._patterns()
        # A provider removed from policies.yaml: stop intercepting its host (unless the user asked).
        stale = self._added.difference(wanted)
        kept = [p for p in current if p not in stale]
        missing = [p for p in wanted if p not in kept]
        self._added = (self._added - stale) | set(missing)
        if missing or stale:
            changes["allow_hosts"] = kept + missing
        if ctx.options.connection_strategy != "lazy":
            changes["connection_strategy"] = "lazy"
        if ctx.options.listen_host == "":
            changes["listen_host"] = "127.0.0.1"
            self._chose_listen_host = True
        if "flow_detail" in ctx.options and ctx.options.flow_detail == 1 and not self._flow_detail_set:
            changes["flow_detail"] = 0
        self._flow_detail_set = True
        upstream_auth = os.environ.get(UPSTREAM_AUTH_VAR)
        if upstream_auth and "upstream_auth" in ctx.options and not ctx.options.upstream_auth:
            changes["upstream_auth"] = upstream_auth
        if changes:
            ctx.options.update(**changes)
