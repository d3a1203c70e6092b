#!/usr/bin/env bash
# Idempotent set-up: a project-local virtual environment holding PyPI's torch wheel pinned to the
# version tch expects (its libtorch is what the worker links), plus the Python packages the tests
# and benchmarks use. A second run checks the stamp and returns at once.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
req="$root/scripts/requirements.txt"
stamp="$venv/.cbsweep-stamp"
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ] && [ -e "$venv/libtorch/lib" ]; then
  exit 0
fi
echo "cbsweep setup: creating $venv (torch wheel pinned for tch; first run downloads ~3 GB)" >&2
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
"$venv/bin/python" -c 'import torch, duckdb, pyarrow, scipy; print("cbsweep setup: torch", torch.__version__, "duckdb", duckdb.__version__, "pyarrow", pyarrow.__version__)' >&2
# .cargo/config.toml points LIBTORCH at this link, so a plain `cargo build` finds libtorch
ln -sfn "$("$venv/bin/python" -c 'import torch, os; print(os.path.dirname(torch.__file__))')" "$venv/libtorch"
echo "$want" > "$stamp"
