"""mitmdump entry point: ``mitmdump -s addon/tokometer.py``.

Only wiring. mitmproxy loads this file as a script (not as part of a package),
so make the checkout's ``addon`` package importable whether or not the project
is installed, then hand mitmproxy the addons.
"""

import sys
from pathlib import Path

_CHECKOUT = str(Path(__file__).resolve().parent.parent)
if _CHECKOUT not in sys.path:
    sys.path.insert(0, _CHECKOUT)

from addon.interception import Interception  # noqa: E402
from addon.meter import Meter  # noqa: E402
from addon.websocket_memory import WebSocketMemory  # noqa: E402

meter = Meter()
interception = Interception(lambda: meter.registry.allow_host_patterns())
meter.on_providers_changed = interception.refresh
addons = [interception, meter, WebSocketMemory()]
