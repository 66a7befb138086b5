"""tokometer: a local LLM cost meter that runs as a mitmproxy addon."""

__version__ = "0.1.0"
