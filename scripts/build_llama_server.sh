#!/usr/bin/env bash
# Build llama.cpp's own `llama-server` once, the peer that the serving benchmark compares charbot against.
#   scripts/build_llama_server.sh        prints the path of the cached binary (builds it first if missing)
# It is built from the llama.cpp that the llama-cpp-python sdist vendors, so both sides of the comparison run
# the same kernels; with the same portable AVX2 flags as the wheel (scripts/setup.sh), for the same reason: a
# native build picks up AMX on some VMs and crashes. Static (one file to cache), no network code (no HTTPS, no
# UI download). Took 6 min (369 s, the sdist download included) at -j2 on the 2-core development VM.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
wheelhouse=${CHARBOT_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/charbot/wheelhouse}
llama_version=0.3.36
dest="$wheelhouse/llama-server-$llama_version/bin/llama-server"
ggml_flags=${CMAKE_ARGS:-"-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"}

if [ -x "$dest" ]; then
  echo "$dest"
  exit 0
fi

missing=""
command -v cmake >/dev/null 2>&1 || missing="$missing cmake"
command -v "${CC:-cc}" >/dev/null 2>&1 || missing="$missing ${CC:-cc}(C compiler)"
command -v "${CXX:-c++}" >/dev/null 2>&1 || missing="$missing ${CXX:-c++}(C++ compiler)"
"$python" -m pip --version >/dev/null 2>&1 || missing="$missing $python-pip"
if [ -n "$missing" ]; then
  echo "build_llama_server: missing:$missing (Debian: apt-get install cmake build-essential python3-pip)" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log="$work/build.log"
fail() {
  echo "build_llama_server: $1 failed; last lines of the log:" >&2
  tail -n 40 "$log" >&2
  exit 1
}

echo "build_llama_server: building llama-server from llama-cpp-python $llama_version once into $(dirname "$dest") (~6 min)..." >&2
start=$SECONDS
"$python" -m pip --disable-pip-version-check download --quiet --no-deps --no-binary :all: \
  "llama-cpp-python==$llama_version" -d "$work" >>"$log" 2>&1 || fail "downloading the sdist"
tar -xzf "$work"/llama_cpp_python-"$llama_version".tar.gz -C "$work" || fail "extracting the sdist"
src="$work/llama_cpp_python-$llama_version/vendor/llama.cpp"
[ -f "$src/CMakeLists.txt" ] || fail "finding vendor/llama.cpp in the sdist"

# $ggml_flags is deliberately unquoted: it is a list of -D options, as CMAKE_ARGS is for the wheel.
# shellcheck disable=SC2086
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF $ggml_flags \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON >>"$log" 2>&1 || fail "cmake configure"
cmake --build "$work/build" --config Release --target llama-server -j2 >>"$log" 2>&1 || fail "cmake build"
"$work/build/bin/llama-server" --version >>"$log" 2>&1 || fail "running the new binary"

# Copied under a temporary name, then renamed: an interrupted run never leaves a half-written binary that the
# check at the top would take for a finished one.
mkdir -p "$(dirname "$dest")"
cp "$work/build/bin/llama-server" "$dest.tmp.$$"
mv -f "$dest.tmp.$$" "$dest"
echo "build_llama_server: built in $((SECONDS - start)) s" >&2
echo "$dest"
