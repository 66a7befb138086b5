"""Where tokometer keeps its files."""

from __future__ import annotations

import os
from pathlib import Path

DB_FILENAME = "spend.duckdb"


def data_dir() -> Path:
    """``$XDG_DATA_HOME/tokometer``, else ``~/.local/share/tokometer``."""
    xdg = os.environ.get("XDG_DATA_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "tokometer"


def resolve_db_path(option_value: str = "") -> Path:
    """The database file: the option if set, else ``$TOKOMETER_DB``, else ``data_dir()/spend.duckdb``."""
    for value in (option_value, os.environ.get("TOKOMETER_DB", "")):
        if value and value.strip():
            return Path(value.strip()).expanduser()
    return data_dir() / DB_FILENAME


def default_policies_path() -> Path:
    """The checkout's ``policies.yaml`` (next to ``addon/``), what the proxy uses by default."""
    return Path(__file__).resolve().parent.parent / "policies.yaml"


def resolve_policies_path(option_value: str = "") -> Path:
    """The policy file: the option if set, else ``$TOKOMETER_POLICIES``, else ``default_policies_path()``."""
    for value in (option_value, os.environ.get("TOKOMETER_POLICIES", "")):
        if value and value.strip():
            return Path(value.strip()).expanduser()
    return default_policies_path()
