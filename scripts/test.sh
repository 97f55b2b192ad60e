#!/usr/bin/env bash
# Runs every check and test of the repository, installing what the tests need when it is
# missing (Debian packages, Python packages). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v curl >/dev/null || need_apt+=(curl)
command -v kubectl >/dev/null || need_apt+=(kubernetes-client)
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
# A real OCI registry on loopback, image tools for the artifact tests, and `ip` for pod
# network namespaces.
command -v docker-registry >/dev/null || need_apt+=(docker-registry)
command -v skopeo >/dev/null || need_apt+=(skopeo)
command -v umoci >/dev/null || need_apt+=(umoci)
command -v ip >/dev/null || need_apt+=(iproute2)
# Services: the node programs the kernel's nftables through `nft`.
command -v nft >/dev/null || need_apt+=(nftables)
# Linux containers: libcontainer links libseccomp; test images are made of busybox.
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
pkg-config --exists libseccomp 2>/dev/null || need_apt+=(libseccomp-dev)
[[ -x /bin/busybox ]] || need_apt+=(busybox-static)
if ((${#need_apt[@]})); then
  echo "installing: ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
# The Python Kubernetes client, and grpcio's reference health service for the gRPC probes.
need_pip=()
python3 -c 'import kubernetes' 2>/dev/null || need_pip+=(kubernetes)
python3 -c 'import grpc_health.v1.health' 2>/dev/null || need_pip+=(grpcio-health-checking)
if ((${#need_pip[@]})); then
  echo "installing with pip: ${need_pip[*]}"
  python3 -m pip install -q "${need_pip[@]}" || python3 -m pip install -q --break-system-packages "${need_pip[@]}"
fi

# The Wasm guests the end-to-end tests publish (installs clang/wasi-libc and
# componentize-py when missing; quick when up to date).
scripts/build-guests.sh

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The fuzz targets (fuzz/, run with `cargo fuzz`) build with the rest; running them is
# not part of the test run.
cargo build -p skiff-fuzz --bins --locked
if command -v cargo-nextest >/dev/null; then
  # nextest does not run doctests; run them first so the summary below closes the log
  cargo test --workspace --locked --doc -q
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
