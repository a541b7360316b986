#!/usr/bin/env bash
# Build the sandbox image the Docker tests use, without any image registry: CI machines can reach
# the Debian package mirror but not Docker Hub, so the root filesystem comes from debootstrap and
# is turned into an image with `docker import`. The image carries a hash of this script as a label,
# and the build is skipped when the existing image has the same hash, so reruns cost nothing.
#
# Usage (as root): .ci/build-test-image.sh [--force]
# Environment: MCP_SANDBOX_TEST_IMAGE (default mcp-sandbox-test:latest),
#              MCP_SANDBOX_MIRROR (default: the Debian mirror apt on this machine uses).
set -euo pipefail

IMAGE=${MCP_SANDBOX_TEST_IMAGE:-mcp-sandbox-test:latest}
SUITE=bookworm
# What a sandbox needs: python3 for the agent; IPython, matplotlib, numpy and pandas for run_code;
# node for JavaScript; git, procps (ps, pkill), ca-certificates and less (a pager for tty processes)
# for what users do in a shell.
# python3-munkres satisfies python3-fonttools' "python3-scipy | python3-munkres": without it, scipy
# comes in and drags pythran, g++, boost and BLAS headers along (about 800 MB).
PACKAGES=(
    bash coreutils procps ca-certificates git less
    python3 python3-ipython python3-matplotlib python3-numpy python3-pandas python3-munkres
    nodejs
)
LABEL=mcp-sandbox.recipe
LOCK=/tmp/mcp-sandbox-test-image.lock

log() { printf '[build-test-image] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

force=0
case "${1:-}" in
    "") ;;
    --force) force=1 ;;
    *) die "unknown argument '$1' (usage: $0 [--force])" ;;
esac

[[ $EUID -eq 0 ]] || die "must run as root (debootstrap and chroot need it)"
docker info >/dev/null 2>&1 || die "no Docker engine answers 'docker info'; run .ci/docker-setup.sh first"

script=$(readlink -f "${BASH_SOURCE[0]}")
# The script holds the whole recipe (package list, image config), so its hash names the recipe.
recipe=$( { cat "$script"; printf '%s\n' "$SUITE" "${PACKAGES[@]}"; } | sha256sum | cut -c1-16)

current_recipe() {
    docker image inspect --format "{{ index .Config.Labels \"$LABEL\" }}" "$IMAGE" 2>/dev/null || true
}

# Two CI jobs on one machine must not debootstrap twice or race on the tag.
exec 9>"$LOCK"
if ! flock -n 9; then
    log "another build holds $LOCK; waiting for it"
    flock -w 1800 9 || die "timed out waiting for $LOCK"
fi

if [[ $force -eq 0 && "$(current_recipe)" == "$recipe" ]]; then
    log "$IMAGE is up to date (recipe $recipe); nothing to do"
    exit 0
fi

# The mirror apt already uses is the one this machine is allowed to reach.
detect_mirror() {
    local f uri
    shopt -s nullglob
    for f in /etc/apt/sources.list.d/*.sources; do
        uri=$(awk -v suite="$SUITE" '
            function flush() {
                if (!found && uris != "" && enabled != "no" &&
                    (" " types " ") ~ / deb / && (" " suites " ") ~ (" " suite " ")) {
                    split(uris, u, /[[:space:]]+/); print u[1]; found = 1
                }
                types = suites = uris = enabled = ""
            }
            /^[[:space:]]*#/ { next }
            /^[[:space:]]*$/ { flush(); next }
            {
                key = tolower($0); sub(/[[:space:]]*:.*/, "", key)
                val = $0; sub(/^[^:]*:[[:space:]]*/, "", val); sub(/[[:space:]]+$/, "", val)
                if (key == "types") types = val
                else if (key == "uris") uris = val
                else if (key == "suites") suites = val
                else if (key == "enabled") enabled = tolower(val)
            }
            END { flush() }
        ' "$f")
        [[ -n $uri ]] && { echo "$uri"; return; }
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        uri=$(awk -v suite="$SUITE" '
            /^[[:space:]]*deb[[:space:]]/ {
                sub(/\[[^]]*\]/, "")
                if ($3 == suite) { print $2; exit }
            }
        ' "$f")
        [[ -n $uri ]] && { echo "$uri"; return; }
    done
}

mirror=${MCP_SANDBOX_MIRROR:-$(detect_mirror)}
if [[ -z $mirror ]]; then
    mirror=http://deb.debian.org/debian
    log "no '$SUITE' mirror found in apt's sources; falling back to $mirror"
fi

if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

rootfs=$(mktemp -d /var/tmp/mcp-sandbox-rootfs.XXXXXX)
# mktemp makes it 0700, which would keep apt's unprivileged _apt user out of the new root.
chmod 0755 "$rootfs"
cleanup() {
    # A failed debootstrap can leave /proc or /sys mounted inside the target; never recurse into them.
    local m
    for m in $(awk -v d="$rootfs" 'index($2, d "/") == 1 { print $2 }' /proc/mounts | sort -r); do
        umount -l "$m" || true
    done
    rm -rf --one-file-system "$rootfs"
}
trap cleanup EXIT

start=$SECONDS
buildlog=$rootfs.log
fail() {
    [[ -f $rootfs/debootstrap/debootstrap.log ]] && cat "$rootfs/debootstrap/debootstrap.log" >>"$buildlog"
    tail -n 40 "$buildlog" >&2
    die "$1 (full log: $buildlog)"
}
log "debootstrap $SUITE from $mirror into $rootfs (recipe $recipe)"
debootstrap --variant=minbase "$SUITE" "$rootfs" "$mirror" >"$buildlog" 2>&1 \
    || fail "debootstrap failed"
log "debootstrap done in $((SECONDS - start)) s; installing ${PACKAGES[*]}"

# The rest goes through apt rather than debootstrap --include: debootstrap always takes the first
# of alternative dependencies and would pull in the scipy chain no matter what else is listed.
# Check-Valid-Until is off because some package mirrors serve a dated snapshot of the archive;
# signatures are still checked.
mount -t proc proc "$rootfs/proc"
{
    chroot "$rootfs" apt-get -o Acquire::Check-Valid-Until=false update \
    && chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${PACKAGES[@]}"
} >>"$buildlog" 2>&1 || fail "apt-get in the new root failed"
umount "$rootfs/proc"
chroot "$rootfs" apt-get clean
rm -f "$buildlog"
log "packages installed after $((SECONDS - start)) s"

# uid 1000 so files a sandbox writes to a bind mount map to a normal user on most hosts.
chroot "$rootfs" useradd --create-home --uid 1000 --user-group --shell /bin/bash sandbox
install -d -o 1000 -g 1000 -m 0755 "$rootfs/workspace"

# Package caches, indexes, docs, translations and the libraries' own test suites (pandas and sympy
# ship over 100 MB of them) are dead weight in an image; apt-get update restores the indexes.
rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/usr/share/locale/* "$rootfs"/var/log/* "$rootfs"/tmp/* "$rootfs"/var/tmp/*
find "$rootfs/usr/lib/python3/dist-packages" -mindepth 2 -type d -name tests -prune -exec rm -rf {} +
# Docker provides these at run time; stale copies from the build host must not leak in.
: >"$rootfs/etc/resolv.conf"
rm -f "$rootfs/etc/hostname"

old_id=$(docker image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
log "importing as $IMAGE"
tar -C "$rootfs" --numeric-owner -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV MPLBACKEND=Agg' \
    --change 'WORKDIR /workspace' \
    --change 'USER sandbox' \
    --change 'CMD ["bash"]' \
    --change "LABEL $LABEL=$recipe" \
    - "$IMAGE" >/dev/null

new_id=$(docker image inspect --format '{{.Id}}' "$IMAGE")
if [[ -n $old_id && $old_id != "$new_id" ]]; then
    # The previous build is now untagged; drop it unless a container still uses it.
    docker image rm "$old_id" >/dev/null 2>&1 || true
fi

size=$(docker image inspect --format '{{.Size}}' "$IMAGE")
log "built $IMAGE ($new_id, $((size / 1000000)) MB) in $((SECONDS - start)) s"
