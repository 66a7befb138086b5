# Sourced by scripts/*: finds Python >= 3.12, creates .venv, installs the project when needed.
# Usage: TOKOMETER_EXTRA=test . scripts/_venv.sh   (TOKOMETER_EXTRA=test installs the test extras too).
# Takes no arguments: a sourced file would see the calling script's arguments as its own.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
EXTRA="${TOKOMETER_EXTRA:-}"

_python_ok() {
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1
}

_find_python() {
    local cand
    for cand in ${TOKOMETER_PYTHON:-} python3.13 python3.12 python3; do
        if command -v "$cand" >/dev/null 2>&1 && _python_ok "$cand"; then
            command -v "$cand"
            return 0
        fi
    done
    local root
    root="$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")"
    for cand in $(ls -d "$root"/versions/3.1[2-9]*/bin/python3 2>/dev/null | sort -rV); do
        if _python_ok "$cand"; then
            echo "$cand"
            return 0
        fi
    done
    return 1
}

if [ ! -x "$VENV/bin/python" ] || ! _python_ok "$VENV/bin/python"; then
    if ! PY="$(_find_python)"; then
        echo "tokometer needs Python >= 3.12 (mitmproxy 12 requires it)." >&2
        echo "Tried: python3.13, python3.12, python3 on PATH and pyenv's versions folder; none runs as >= 3.12." >&2
        echo "Install one (e.g. 'pyenv install 3.12' or your OS package), or set TOKOMETER_PYTHON=/path/to/python3.12." >&2
        exit 1
    fi
    echo "tokometer: creating .venv with $PY ($("$PY" --version 2>&1))" >&2
    rm -rf "$VENV"
    "$PY" -m venv "$VENV" || exit 1
fi

# Reinstall only when pyproject.toml changed (or the extras asked for are missing).
# An install with the test extras also satisfies a plain one.
_want="$(cksum <"$ROOT/pyproject.toml")"
_stamp="$VENV/.tokometer-installed${EXTRA:+-$EXTRA}"
_have=""
for _s in "$_stamp" "$VENV/.tokometer-installed-test"; do
    if [ -f "$_s" ] && [ "$(cat "$_s")" = "$_want" ]; then _have=1; fi
    [ -n "$EXTRA" ] && break
done
if [ -z "$_have" ]; then
    echo "tokometer: installing the project into .venv${EXTRA:+ (with $EXTRA extras)}" >&2
    spec="$ROOT"
    [ -n "$EXTRA" ] && spec="$ROOT[$EXTRA]"
    # pip's notes about unreadable local index folders are noise here: keep real errors only.
    if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$spec" \
        2> >(grep -v -e "^WARNING: Location" -e "BuildBackendWarning" >&2); then
        echo "tokometer: installing into .venv failed (see above)." >&2
        exit 1
    fi
    echo "$_want" >"$_stamp"
fi
