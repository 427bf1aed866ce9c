#!/usr/bin/env bash
# Installs what the tests drive besides Rust, at pinned versions: Debian's chromium and
# chromium-driver when missing (the only system packages, for the browser test), and,
# without touching the system, the Python packages of gateway/tests/requirements.txt
# into the virtual environment target/test-venv (tests/sdk.rs and tests/openai_sdk.rs run its python),
# those of requirements-openai2.txt (libraries that still need openai 2) into
# target/test-venv-openai2, and the npm packages of gateway/tests/sdk/package-lock.json
# into its node_modules. Needs python3, Node 20 with npm, and apt-get as root or through
# passwordless sudo when chromium is missing. Idempotent: a second
# run installs nothing unless a requirements file or package-lock.json changed.
#
# Debian and Ubuntu refuse `pip install` into the system python (PEP 668), and without
# their python3-venv package `python3 -m venv` fails for want of ensurepip; then the
# venv is made without pip and pip is bootstrapped from its wheel on PyPI (pinned by
# hash). SOLROUTER_TEST_ENV_NO_ENSUREPIP=1 forces that path, to test it.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
tests="$repo/gateway/tests"
sdk="$tests/sdk"
# pip for the venv when ensurepip is missing: any recent pip works; this one is pinned.
pip_wheel_url="https://files.pythonhosted.org/packages/07/25/ee8c38ae72d66b844ce8eb9711ba905dba21ca1a8a0c960057c41cd23337/pip-26.3-py3-none-any.whl"
pip_wheel_sha256="f3b60b20ffaadd4415ed7957212a38ac63fa4c5fa375bd0f4a797777940fad13"

say() { echo "setup-test-env: $*" >&2; }

# The SHA-256 of a file, by python3 (present everywhere this script must run, unlike
# sha256sum on macOS).
sha256_of() { python3 -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$1"; }

command -v python3 >/dev/null || { say "python3 is needed"; exit 1; }
command -v npm >/dev/null || { say "Node 20 or newer, with npm, is needed"; exit 1; }

# --- Chromium -------------------------------------------------------------------------
# The dashboard's browser test drives Debian's chromium through its chromedriver
# (/usr/bin/chromium, /usr/bin/chromedriver). Installed with apt-get as root, or through
# passwordless sudo; anything else fails here, saying what to install.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    packages=(chromium chromium-driver)
    if ! command -v apt-get >/dev/null; then
        say "the browser test needs Debian's ${packages[*]} (apt-get is missing: install them by hand)"
        exit 1
    elif [ "$(id -u)" = 0 ]; then
        say "installing ${packages[*]}"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${packages[@]}"
    elif sudo -n true 2>/dev/null; then
        say "installing ${packages[*]} with sudo"
        sudo -n apt-get update -q
        sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${packages[@]}"
    else
        say "the browser test needs Debian's ${packages[*]}: run \`apt-get install ${packages[*]}\` as root"
        exit 1
    fi
fi

# --- Python ---------------------------------------------------------------------------
# Brings the virtual environment $1 up to the requirements file $2.
python_env() {
    local venv="$1" requirements="$2"
    local python="$venv/bin/python"
    if ! "$python" -c '' 2>/dev/null; then
        rm -rf "$venv"
        mkdir -p "$repo/target"
        if [ "${SOLROUTER_TEST_ENV_NO_ENSUREPIP:-}" != 1 ] && python3 -m venv "$venv"; then
            say "created $venv"
        else
            # A failed `python3 -m venv` leaves a venv without pip behind: start again.
            say "python3 -m venv without ensurepip: creating $venv without pip"
            rm -rf "$venv"
            python3 -m venv --without-pip "$venv"
        fi
    fi

    if ! "$python" -m pip --version >/dev/null 2>&1; then
        local wheel_dir
        wheel_dir="$(mktemp -d "$repo/target/pip-wheel.XXXXXX")"
        local wheel="$wheel_dir/${pip_wheel_url##*/}"
        say "bootstrapping pip in the venv from $pip_wheel_url"
        python3 - "$pip_wheel_url" "$wheel" "$pip_wheel_sha256" <<'PY'
import hashlib, sys, urllib.request
url, path, expected = sys.argv[1:]
body = urllib.request.urlopen(url, timeout=120).read()
actual = hashlib.sha256(body).hexdigest()
if actual != expected:
    sys.exit(f"{url}: sha256 {actual}, expected {expected}")
open(path, "wb").write(body)
PY
        # A wheel is a zip that python can run: this pip installs itself into the venv.
        "$python" "$wheel/pip" install --quiet --no-index "$wheel"
        rm -rf "$wheel_dir"
    fi

    # The stamp holds the hash of the requirements the venv was last brought up to.
    local stamp="$venv/requirements.sha256"
    local wanted
    wanted="$(sha256_of "$requirements")"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
        say "installing $requirements into $venv"
        "$python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
        echo "$wanted" >"$stamp"
    fi
}

# The two environments install at once: pip spends most of its time waiting on the
# network. `wait PID` fails if its environment failed.
python_env "$repo/target/test-venv" "$tests/requirements.txt" &
main_env=$!
python_env "$repo/target/test-venv-openai2" "$tests/requirements-openai2.txt" &
openai2_env=$!
wait "$main_env"
wait "$openai2_env"

# --- Node -----------------------------------------------------------------------------
# `npm ci` always reinstalls from scratch, so it runs only when the lockfile changed.
stamp="$sdk/node_modules/.package-lock.sha256"
wanted="$(sha256_of "$sdk/package-lock.json")"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    say "installing the npm packages of $sdk/package-lock.json"
    npm ci --prefix "$sdk" --no-audit --no-fund
    echo "$wanted" >"$stamp"
fi
