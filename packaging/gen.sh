#!/usr/bin/env bash
# Generates the man pages and shell completions that the .deb ships, from the built binaries
# (so they come from the same clap definitions as --help) and from docs/units.md:
#   packaging/gen/orchd.8.gz       orchd --print-man
#   packaging/gen/orchctl.1.gz     orchctl man
#   packaging/gen/orch.unit.5.gz   packaging/md2man.py docs/units.md
#   packaging/gen/orchctl.bash, _orchctl (zsh), orchctl.fish   orchctl completions SHELL
# Usage: packaging/gen.sh [BIN_DIR]   (default: $CARGO_TARGET_DIR/release or target/release)
# packaging/gen/ is not in git: build-deb.sh runs this before `cargo deb`.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${1:-${CARGO_TARGET_DIR:-target}/release}
out=packaging/gen
rm -rf "$out"
mkdir -p "$out"

"$bin/orchd" --print-man >"$out/orchd.8"
"$bin/orchctl" man >"$out/orchctl.1"
/usr/bin/python3 packaging/md2man.py docs/units.md orch.unit 5 "orch unit file format" >"$out/orch.unit.5"
for page in "$out"/*.[0-9]; do
  gzip -9n "$page"
done

"$bin/orchctl" completions bash >"$out/orchctl.bash"
"$bin/orchctl" completions zsh >"$out/_orchctl"
"$bin/orchctl" completions fish >"$out/orchctl.fish"

echo "generated in $out:" $(cd "$out" && ls)
