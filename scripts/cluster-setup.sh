#!/usr/bin/env bash
# Idempotent: installs what the Slurm end-to-end tests (tests/tests/slurm.rs) need, Debian's
# slurm-wlm (slurmctld, slurmd, sbatch, ...) and munge, when this machine lacks them and we may
# install them (root, apt-get present). Otherwise it says why it does nothing and exits 0: the
# tests then skip with a message of their own; where every test must run (CBSWEEP_REQUIRE_ALL=1,
# which .ci/run sets, or CI=true) it exits 1 instead, naming what is missing, as it does when an
# install leaves something missing. It starts no daemon; the tests start their own one-node
# cluster from a fresh temporary folder and stop it by pid.
# Network namespaces (tests/tests/netns.rs) need only iproute2's `ip`, installed the same way.
# The dashboard's browser test (tests/tests/dashboard.rs) needs Debian's chromium and
# chromium-driver (headless Chromium and its WebDriver), installed the same way.
# The lease tests that step a coordinator's wall clock (tests/tests/leases.rs, chaos.rs) need
# libfaketime (LD_PRELOAD'ed into that one process), installed the same way.
set -euo pipefail

# the same rule as the tests' (cbsweep_tests::require_all)
truthy() { case "$(echo "${1:-}" | tr '[:upper:]' '[:lower:]')" in 1 | true | yes) return 0 ;; *) return 1 ;; esac; }
if [ -n "${CBSWEEP_REQUIRE_ALL:-}" ]; then truthy "$CBSWEEP_REQUIRE_ALL" && required=1 || required=0
else truthy "${CI:-}" && required=1 || required=0; fi

missing() {
  need=()
  for c in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge; do
    cmd=${c%%:*} pkg=${c#*:}
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || need+=("$pkg")
  done
  command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || need+=(iproute2)
  [ -x /usr/bin/chromium ] || need+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
  compgen -G '/usr/lib/*/faketime/libfaketime.so.1' >/dev/null || need+=(libfaketime)
}
# Says why nothing is installed: a note where tests may skip, a failure where they must all run.
cannot() {
  if [ "$required" = 1 ]; then
    echo "cluster-setup: $1; ${need[*]} missing, and every test must run here (CBSWEEP_REQUIRE_ALL=1 or CI=true)" >&2
    exit 1
  fi
  echo "cluster-setup: $1; not installing ${need[*]} (the Slurm, namespace and browser tests will skip)"
  exit 0
}

missing
if [ ${#need[@]} -eq 0 ]; then
  echo "cluster-setup: slurm, munge, iproute2, chromium, chromium-driver and libfaketime already installed"
  exit 0
fi
[ "$(id -u)" -eq 0 ] || cannot "not root"
command -v apt-get >/dev/null 2>&1 || cannot "no apt-get here"
# slurm-wlm pulls slurmctld, slurmd and slurm-client; munge is its authentication daemon.
pkgs=()
case " ${need[*]} " in *" slurmctld "*|*" slurmd "*|*" slurm-client "*|*" munge "*) pkgs+=(slurm-wlm munge) ;; esac
for p in iproute2 chromium chromium-driver libfaketime; do
  case " ${need[*]} " in *" $p "*) pkgs+=("$p") ;; esac
done
# a font for the pages' text in the browser test's screenshots
case " ${pkgs[*]} " in *" chromium "*) pkgs+=(fonts-dejavu-core) ;; esac
echo "cluster-setup: installing ${pkgs[*]} (missing: ${need[*]})"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
# Debian's packages start their services where systemd runs; the tests want none running.
for svc in slurmctld slurmd munge; do
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
  fi
done
echo "cluster-setup: installed $(dpkg-query -W -f='slurm-wlm ${Version}, munge ' slurm-wlm 2>/dev/null)$(dpkg-query -W -f='${Version}' munge 2>/dev/null)"
echo "cluster-setup: chromium $(dpkg-query -W -f='${Version}' chromium 2>/dev/null || echo 'not installed')"
missing
if [ ${#need[@]} -gt 0 ]; then
  echo "cluster-setup: still missing after the install: ${need[*]}" >&2
  [ "$required" = 1 ] && exit 1
fi
