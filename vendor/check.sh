#!/usr/bin/env bash
# Checks that vendor/hyper is crates.io's hyper at the version its Cargo.toml names
# with exactly the changes in vendor/hyper.patch (README.md beside this script), so
# that no edit slips into the vendored copy unrecorded. Cargo fetches the published crate
# (from its cache, or crates.io) into a scratch project; the diff against it must equal the
# patch file.
#
#   vendor/check.sh           # exits 1 and prints the difference if they differ
#   vendor/check.sh --write   # rewrites hyper.patch from the vendored copy
set -euo pipefail
vendor="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$vendor/hyper/Cargo.toml" | head -1)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

mkdir "$scratch/src"
touch "$scratch/src/lib.rs"
cat >"$scratch/Cargo.toml" <<EOF
[package]
name = "pristine-hyper"
version = "0.0.0"
edition = "2021"

[dependencies]
hyper = "=$version"

[workspace]
EOF
# Offline first: the crate is usually in Cargo's cache already.
published=$(cd "$scratch" && { cargo metadata --format-version 1 --quiet --offline 2>/dev/null ||
    cargo metadata --format-version 1 --quiet; } | python3 -c '
import json, os, sys
for package in json.load(sys.stdin)["packages"]:
    if package["name"] == "hyper":
        print(os.path.dirname(package["manifest_path"]))')
if [ -z "$published" ]; then
    echo "could not fetch hyper $version (from Cargo's cache or crates.io)" >&2
    exit 1
fi

# The published crate's own bookkeeping files are not copied; file dates are left out.
(cd "$scratch" && ln -s "$published" a && ln -s "$vendor/hyper" b &&
    diff -ruN -x Cargo.toml.orig -x Cargo.lock -x .cargo_vcs_info.json -x .cargo-ok a/ b/ || true) |
    sed -E 's/^((---|\+\+\+) [^\t]*)\t.*/\1/' >"$scratch/hyper.patch"

if [ "${1:-}" = --write ]; then
    cp "$scratch/hyper.patch" "$vendor/hyper.patch"
elif ! diff -u "$vendor/hyper.patch" "$scratch/hyper.patch"; then
    echo "vendor/hyper differs from hyper $version by more or less than hyper.patch" >&2
    exit 1
fi
