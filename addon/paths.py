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
