#!/usr/bin/env bash
# Re-fetches the uPlot files the dashboard embeds (coordinator/assets/uplot/, compiled into the
# cbsweep binary with include_bytes!) from npm with `npm pack`, exactly the version in
# coordinator/assets/uplot/VERSION, and checks the package's SHA-256 before copying. Nothing is
# fetched when cbsweep runs; this is only for updating or re-checking the vendored copy.
# Usage: bash scripts/fetch-uplot.sh [--check]   (--check: compare with the vendored files only)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
dest="$here/coordinator/assets/uplot"
version=$(cat "$dest/VERSION")
# sha256 of uplot-$version.tgz as npm serves it
expect=4b8a8191e425658e3ea8c8c1314b0fc679c861ee3a1af2b20c7b16ba50b5133d
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "uplot@$version" >/dev/null)
got=$(sha256sum "$tmp/uplot-$version.tgz" | cut -d' ' -f1)
if [ "$got" != "$expect" ]; then
  echo "fetch-uplot: uplot-$version.tgz has sha256 $got, expected $expect: not using it" >&2
  exit 1
fi
tar -xzf "$tmp/uplot-$version.tgz" -C "$tmp"
files=(dist/uPlot.iife.min.js dist/uPlot.min.css LICENSE)
if [ "${1:-}" = "--check" ]; then
  for f in "${files[@]}"; do
    cmp "$tmp/package/$f" "$dest/$(basename "$f")" || { echo "fetch-uplot: $dest/$(basename "$f") differs from uplot $version's $f" >&2; exit 1; }
  done
  echo "fetch-uplot: the vendored files are uplot $version's"
  exit 0
fi
for f in "${files[@]}"; do cp "$tmp/package/$f" "$dest/"; done
echo "fetch-uplot: copied uplot $version (sha256 $got) into $dest"
