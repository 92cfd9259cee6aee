# Sourced by scripts/test and scripts/mnv2-fast: make sure .venv exists and holds the pinned
# development environment with this checkout installed (editable), then set $VENV.
# Reinstalls only when requirements-dev.txt or pyproject.toml changed.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${MNV2_VENV:-$ROOT/.venv}
stamp="$VENV/.mnv2-fast-setup"
want=$(cat "$ROOT/requirements-dev.txt" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)
if [[ ! -x $VENV/bin/python || ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    echo "setting up $VENV (first run, or the requirements changed) ..." >&2
    python3 -m venv "$VENV"
    # No pip cache: the CUDA build of torch would sit on disk twice (a CI run once ran out of space).
    export PIP_NO_CACHE_DIR=1
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -r "$ROOT/requirements-dev.txt"
    # --no-build-isolation: build with the pinned setuptools above, no extra download.
    "$VENV/bin/python" -m pip install --quiet --no-build-isolation --no-deps -e "$ROOT"
    echo "$want" >"$stamp"
fi
