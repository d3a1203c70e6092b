#!/usr/bin/env bash
# Builds cbsweep-worker and cbsweep-bench against the torch that PYTHON has installed (a cluster
# module, a conda env, another virtual environment) instead of the project's pinned wheel, into a
# target folder of their own, so that the main build in target/ is left alone.
#
#   scripts/build-against-torch.sh PYTHON [--target-dir DIR] [--rpath DIR]...
#
# PYTHON's torch picks the tch release: torch 2.11 -> tch 0.24, torch 2.13 -> tch 0.26 (the
# workspace's). A torch of another release is refused. When the tch release differs from the
# workspace's, the build runs from a generated manifest (DIR/workspace: the workspace's
# Cargo.toml with the tch and torch-sys versions replaced, its own Cargo.lock, links to the
# sources), so the checked-in Cargo.toml and Cargo.lock are never touched. The binaries carry a
# run path to that torch's lib folder (and to each --rpath DIR, for a node where the same torch
# lies elsewhere), and the worker refuses to start against a libtorch of another release.
# The `cbsweep` coordinator links no libtorch: the main build's serves every worker.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
usage="usage: scripts/build-against-torch.sh PYTHON [--target-dir DIR] [--rpath DIR]..."

python=""
target=""
rpaths=()
while [ $# -gt 0 ]; do
  case "$1" in
    --target-dir) target=${2:?"$usage"}; shift 2 ;;
    --target-dir=*) target=${1#*=}; shift ;;
    --rpath) rpaths+=("${2:?"$usage"}"); shift 2 ;;
    --rpath=*) rpaths+=("${1#*=}"); shift ;;
    -h|--help) echo "$usage"; exit 0 ;;
    -*) echo "build-against-torch: unknown option $1 ($usage)" >&2; exit 2 ;;
    *) [ -z "$python" ] || { echo "build-against-torch: one PYTHON only ($usage)" >&2; exit 2; }; python=$1; shift ;;
  esac
done
[ -n "$python" ] || { echo "$usage" >&2; exit 2; }
command -v "$python" >/dev/null 2>&1 || { echo "build-against-torch: $python: no such interpreter" >&2; exit 2; }

# torch's version and folders, without importing it (a torch installed without its CUDA wheels
# cannot be imported, and its libraries still link): version.py beside __init__.py.
info=$("$python" - <<'EOF'
import importlib.util, os, re, sys
spec = importlib.util.find_spec("torch")
if spec is None or not spec.submodule_search_locations:
    sys.exit("no torch package is installed for " + sys.executable)
torch = os.path.realpath(list(spec.submodule_search_locations)[0])
version = None
try:
    with open(os.path.join(torch, "version.py")) as f:
        m = re.search(r"^__version__\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", f.read(), re.M)
        version = m and m.group(1)
except OSError:
    pass
if version is None:
    import torch as t
    version = t.__version__
# a wheel keeps libtorch and its headers inside the package; conda's pytorch may keep them in the
# environment's own lib and include folders
def first(candidates, marker):
    for c in candidates:
        if os.path.exists(os.path.join(c, marker)):
            return c
    return None
lib = first([os.path.join(torch, "lib"), os.path.join(sys.prefix, "lib")], "libtorch_cpu.so")
inc = first([os.path.join(torch, "include"), os.path.join(sys.prefix, "include")], "torch/csrc/api/include")
if lib is None or inc is None:
    sys.exit(f"torch {version} at {torch} has no libtorch_cpu.so or no C++ headers (torch/csrc/api/include); a C++-capable torch is needed")
print(version)
print(torch)
print(os.path.realpath(lib))
print(os.path.realpath(inc))
EOF
) || { echo "build-against-torch: cannot read torch's version and folders from $python" >&2; exit 2; }
{ read -r version; read -r torch_dir; read -r lib_dir; read -r include_dir; } <<<"$info"

release=$(echo "$version" | sed -E 's/^([0-9]+\.[0-9]+).*/\1/')
case "$release" in
  2.11) tch=0.24 ;;
  2.13) tch=0.26 ;;
  *)
    echo "build-against-torch: torch $version ($torch_dir) is not supported; supported: torch 2.11 (tch 0.24), torch 2.13 (tch 0.26)" >&2
    exit 2
    ;;
esac
target=${target:-"$root/target-torch-$release"}
mkdir -p "$target"
target=$(cd "$target" && pwd)

workspace_tch=$(sed -nE 's/^tch = "([^"]+)".*/\1/p' "$root/Cargo.toml")
[ -n "$workspace_tch" ] || { echo "build-against-torch: no 'tch = \"...\"' line in $root/Cargo.toml" >&2; exit 1; }
if [ "$tch" = "$workspace_tch" ]; then
  manifest="$root/Cargo.toml"
else
  # The variant workspace: its own manifest and lock, the sources through links. Regenerated at
  # every run from the workspace's Cargo.toml (others may have changed it); the lock is kept.
  overlay="$target/workspace"
  mkdir -p "$overlay"
  shopt -s dotglob nullglob
  for entry in "$root"/*; do
    name=$(basename "$entry")
    case "$name" in Cargo.toml | Cargo.lock | .git | target | target-*) continue ;; esac
    [ "$entry" -ef "$target" ] && continue
    ln -sfn "$entry" "$overlay/$name"
  done
  sed -E "s/^tch = \"[^\"]+\"/tch = \"$tch\"/; s/^torch-sys = \"[^\"]+\"/torch-sys = \"$tch\"/" "$root/Cargo.toml" >"$overlay/Cargo.toml.new"
  grep -q "^tch = \"$tch\"" "$overlay/Cargo.toml.new" && grep -q "^torch-sys = \"$tch\"" "$overlay/Cargo.toml.new" || {
    echo "build-against-torch: cannot set tch and torch-sys to $tch in a copy of $root/Cargo.toml (expected lines 'tch = \"...\"' and 'torch-sys = \"...\"')" >&2
    exit 1
  }
  if cmp -s "$overlay/Cargo.toml.new" "$overlay/Cargo.toml"; then rm "$overlay/Cargo.toml.new"; else mv "$overlay/Cargo.toml.new" "$overlay/Cargo.toml"; fi
  [ -f "$overlay/Cargo.lock" ] || cp "$root/Cargo.lock" "$overlay/Cargo.lock"
  manifest="$overlay/Cargo.toml"
fi

echo "build-against-torch: torch $version at $torch_dir -> tch $tch; building cbsweep-worker and cbsweep-bench into $target/release" >&2
# torch-sys reads LIBTORCH/LIBTORCH_INCLUDE/LIBTORCH_LIB and then adds include/ and lib/ itself;
# nothing is downloaded. train/build.rs (which worker/build.rs runs) records the version (CBSWEEP_TORCH_VERSION) and the run
# paths (the lib folder, then CBSWEEP_EXTRA_RPATH).
unset LIBTORCH_USE_PYTORCH LIBTORCH_STATIC CARGO_TARGET_DIR
extra=$(IFS=:; echo "${rpaths[*]:-}")
(
  cd "$(dirname "$manifest")"
  LIBTORCH="$torch_dir" LIBTORCH_INCLUDE="$(dirname "$include_dir")" LIBTORCH_LIB="$(dirname "$lib_dir")" \
    CBSWEEP_TORCH_VERSION="$version" CBSWEEP_EXTRA_RPATH="$extra" \
    "${CARGO:-cargo}" build --release --manifest-path "$manifest" --target-dir "$target" \
    -p cbsweep-worker -p cbsweep-benches --bins
)
for bin in cbsweep-worker cbsweep-bench; do
  echo "build-against-torch: $target/release/$bin ($(du -h "$target/release/$bin" | cut -f1))" >&2
done
echo "build-against-torch: built against torch $version; they find its libraries at $lib_dir without LD_LIBRARY_PATH" >&2
