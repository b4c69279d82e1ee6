#!/usr/bin/env bash
# Builds the orch .deb: release binaries, generated man pages and completions (gen.sh), then
# `cargo deb` with the metadata in Cargo.toml. Prints the .deb's path as its last line.
# Needs cargo-deb (`cargo install cargo-deb --locked`); scripts/test.sh installs it.
set -euo pipefail
cd "$(dirname "$0")/.."

target=${CARGO_TARGET_DIR:-target}
cargo build --release --locked --bins >&2
packaging/gen.sh "$target/release" >&2

# The D-Bus policy is written with the D-Bus API (another change). Until it is merged, build
# with a stand-in so the package layout can be tested; it never lands in git.
policy=packaging/io.orchd.Manager1.conf
if [ ! -e "$policy" ]; then
  echo "warning: $policy missing: packaging a stand-in policy (the D-Bus API change ships the real one)" >&2
  trap 'rm -f "$policy"' EXIT
  cat >"$policy" <<'POLICY'
<?xml version="1.0"?>
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<!-- Stand-in written by packaging/build-deb.sh; the real policy comes with the D-Bus API. -->
<busconfig>
  <policy user="root">
    <allow own="io.orchd.Manager1"/>
    <allow send_destination="io.orchd.Manager1"/>
  </policy>
  <policy group="orch">
    <allow send_destination="io.orchd.Manager1"/>
  </policy>
  <policy context="default">
    <allow send_destination="io.orchd.Manager1" send_interface="org.freedesktop.DBus.Introspectable"/>
  </policy>
</busconfig>
POLICY
fi

rm -rf "$target/debian"
cargo deb --no-build --no-strip --locked --output "$target/debian/" >&2
ls "$target"/debian/*.deb
