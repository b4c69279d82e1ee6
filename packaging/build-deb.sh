#!/usr/bin/env bash
# Builds the orch .deb: release binaries, generated man pages and completions (gen.sh), then
# `cargo deb` with the metadata in Cargo.toml. Prints the .deb's path as its last line.
# Needs cargo-deb (`cargo install cargo-deb --locked`); scripts/test.sh installs it.
set -euo pipefail
cd "$(dirname "$0")/.."

target=${CARGO_TARGET_DIR:-target}
cargo build --release --locked --bins >&2
packaging/gen.sh "$target/release" >&2

rm -rf "$target/debian"
cargo deb --no-build --no-strip --locked --output "$target/debian/" >&2
ls "$target"/debian/*.deb
