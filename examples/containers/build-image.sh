#!/usr/bin/env bash
# Builds a small container image without a daemon and pushes it to a registry:
# Debian's busybox-static as the whole userland, packed with umoci, pushed with skopeo.
#
#   examples/containers/build-image.sh 127.0.0.1:5000/busybox:1
#
# The image's command serves /var/www on port 8080 with busybox httpd, under a shell that
# ends on SIGTERM (a container's first process has no default signal actions, so a
# process that does not handle SIGTERM waits out the whole grace period).
#
# Needs root (umoci unpacks with the files' owners) and the Debian packages
# busybox-static, umoci and skopeo. Plain HTTP is used for the registry (loopback).
set -euo pipefail
ref=${1:?usage: build-image.sh REGISTRY/REPOSITORY:TAG}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

umoci init --layout "$work/img"
umoci new --image "$work/img:latest"
umoci unpack --image "$work/img:latest" "$work/bundle" >/dev/null
root="$work/bundle/rootfs"
mkdir -p "$root"/{bin,etc,proc,sys,dev,tmp,root,var/www}
chmod 1777 "$root/tmp"
cp /bin/busybox "$root/bin/busybox"
# One link per applet; `busybox --list` names busybox itself, which must stay a file.
for applet in $(/bin/busybox --list); do
  [[ $applet == busybox ]] || ln -sf busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
echo '<h1>hello from a Skiff container</h1>' >"$root/var/www/index.html"
umoci repack --image "$work/img:latest" "$work/bundle" >/dev/null
umoci config --image "$work/img:latest" \
  --config.entrypoint /bin/sh --config.cmd=-c \
  --config.cmd='trap "exit 0" TERM; httpd -f -v -p 8080 -h /var/www & echo ready; wait' \
  --config.env PATH=/bin --config.workingdir / >/dev/null
skopeo copy --quiet --dest-tls-verify=false "oci:$work/img:latest" "docker://$ref"
echo "pushed $ref"
