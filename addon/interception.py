"""Which connections mitmproxy intercepts: provider hosts only, on loopback."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable

from mitmproxy import ctx

from addon.providers import allow_host_patterns

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
    so a call the proxy answers itself never opens an upstream connection. An
    unset ``listen_host`` becomes 127.0.0.1 (mitmproxy may already have bound
    its listener by the time a script loads, so ``running`` also warns when the
    actual listener is not loopback; scripts/proxy passes --listen-host).
    """

    def __init__(self, patterns: Callable[[], list[str]] = allow_host_patterns) -> None:
        self._patterns = patterns  # the provider hosts in force (policies.yaml may add some)

    def refresh(self) -> None:
        """Intercept any provider host added since (policies.yaml ``providers:`` edited)."""
        self.configure(set())

    def running(self) -> None:
        """Warn when the proxy actually listens beyond loopback."""
        proxyserver = ctx.master.addons.get("proxyserver")
        addrs = proxyserver.listen_addrs() if proxyserver is not None else []
        exposed = sorted({addr[0] or "*" for addr in addrs if not _is_loopback(addr[0])})
        if exposed:
            log.warning(
                "tokometer: listening on %s, not loopback: other machines can use this proxy "
                "and meter calls as you. Pass --listen-host 127.0.0.1 (scripts/proxy does).",
                ", ".join(exposed),
            )

    def configure(self, updated: set[str]) -> None:
        changes: dict[str, object] = {}
        current = list(ctx.options.allow_hosts)
        missing = [p for p in self._patterns() if p not in current]
        if missing:
            changes["allow_hosts"] = current + missing
        if ctx.options.connection_strategy != "lazy":
            changes["connection_strategy"] = "lazy"
        if ctx.options.listen_host == "":
            changes["listen_host"] = "127.0.0.1"
        if changes:
            ctx.options.update(**changes)
