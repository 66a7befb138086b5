"""policies.yaml: loading and validation (grows with the policy features)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

ENVIRONMENT_NAME_HINT = "a short name such as development, staging or production"


class PolicyError(ValueError):
    """policies.yaml cannot be used; the message says where and why."""


@dataclass(frozen=True, slots=True)
class Policies:
    """The parsed policy file."""

    default_environment: str = "development"
    source: Path | None = None


def load_policies(path: Path) -> Policies:
    """Read ``path``; a missing file means the defaults."""
    if not path.exists():
        return Policies(source=None)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise PolicyError(f"{path}: the top level must be a mapping, not {type(data).__name__}")
    default_env = data.get("default_environment", "development")
    if not isinstance(default_env, str) or not default_env.strip():
        raise PolicyError(f"{path}: default_environment must be {ENVIRONMENT_NAME_HINT}")
    return Policies(default_environment=default_env.strip(), source=path)
