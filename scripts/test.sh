#!/usr/bin/env bash
# Runs the whole test suite: installs what the tests need (as root, when missing), checks
# formatting and lints, then runs every test. Used by CI (.ci/run) and by developers.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v dbus-daemon >/dev/null 2>&1 || need_apt+=(dbus)
command -v busctl >/dev/null 2>&1 || need_apt+=(systemd)
/usr/bin/python3 -c 'import aiosmtpd' >/dev/null 2>&1 || need_apt+=(python3-aiosmtpd)
# The metrics tests check the exposition with the Prometheus project's own parser.
/usr/bin/python3 -c 'import prometheus_client.parser' >/dev/null 2>&1 || need_apt+=(python3-prometheus-client)
# Packaging (tests/it/packaging.rs): systemd-analyze (in systemd), lintian, groff and man.
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
command -v lintian >/dev/null 2>&1 || need_apt+=(lintian)
command -v groff >/dev/null 2>&1 || need_apt+=(groff-base)
command -v man >/dev/null 2>&1 || need_apt+=(man-db)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "installing test dependencies: ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "note: missing ${need_apt[*]}; run as root (or install them) for the full suite" >&2
  fi
fi

# cargo-deb builds the .deb in the packaging test (~1 min to install).
if ! cargo deb --version >/dev/null 2>&1; then
  echo "installing cargo-deb"
  cargo install cargo-deb --locked --quiet
fi

cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --all-targets "$@"
# Ignored by a plain `cargo test`, run here explicitly so CI (as root) runs them: the .deb test
# (builds a release, installs the package as root) and the tests that need root (they switch
# users or need orchd's cgroups; `#[ignore = "needs root …"]`, and they fail when run without).
# `socket_hardening::helper` is not a test of its own: the tests there run it as another user.
if [ $# -eq 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    cargo test --test it -- --ignored --skip socket_hardening::helper
  else
    echo "note: not root: the tests marked \"needs root\" were not run (CI runs them)" >&2
    cargo test --test it packaging -- --ignored
  fi
fi
