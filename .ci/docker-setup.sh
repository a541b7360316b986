#!/usr/bin/env bash
# Make a Docker engine answer on this machine and make sure the test image exists. Idempotent: on a
# machine where dockerd already runs and the image is current, this only checks and returns.
#
# CI machines are Debian 12 VMs without systemd whose only network is the package mirrors, so the
# engine comes from apt (docker.io), is started by hand, and the image is built offline by
# build-test-image.sh. gVisor (runsc) is registered as an extra runtime when its package installs.
#
# Usage (as root): .ci/docker-setup.sh
# Environment: MCP_SANDBOX_DOCKERD_LOG (default /tmp/dockerd.log).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DOCKERD_LOG=${MCP_SANDBOX_DOCKERD_LOG:-/tmp/dockerd.log}
DAEMON_JSON=/etc/docker/daemon.json
PIDFILE=/var/run/docker.pid

log() { printf '[docker-setup] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ $EUID -eq 0 ]] || die "must run as root (installs packages and starts dockerd)"

apt_updated=0
apt_install() {
    if [[ $apt_updated -eq 0 ]]; then
        apt-get update -qq || return 1
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

engine_answers() { docker info >/dev/null 2>&1; }

if ! command -v dockerd >/dev/null; then
    log "installing docker.io"
    apt_install docker.io iptables || die "apt-get could not install docker.io"
fi
command -v docker >/dev/null || die "dockerd is installed but the docker CLI is not"
if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap (build-test-image.sh needs it)"
    apt_install debootstrap || die "apt-get could not install debootstrap"
fi

# gVisor is optional: the tests use it when Docker lists it, and skip what needs it otherwise.
runsc_path=$(command -v runsc || true)
if [[ -z $runsc_path ]]; then
    if apt_install runsc; then
        runsc_path=$(command -v runsc)
    else
        log "note: the runsc (gVisor) package did not install; continuing without it"
    fi
fi

# Merge rather than overwrite: the machine may already have its own daemon settings.
register_runsc() {
    python3 - "$DAEMON_JSON" "$1" <<'EOF'
import json, os, sys

path, runsc = sys.argv[1], sys.argv[2]
try:
    with open(path) as f:
        config = json.load(f)
except FileNotFoundError:
    config = {}
want = {"path": runsc, "runtimeArgs": ["--network=none"]}
if config.get("runtimes", {}).get("runsc") == want:
    sys.exit(0)
config.setdefault("runtimes", {})["runsc"] = want
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path + ".tmp", "w") as f:
    json.dump(config, f, indent=2)
    f.write("\n")
os.replace(path + ".tmp", path)
print(f"registered runsc in {path}", file=sys.stderr)
EOF
}
if [[ -n $runsc_path ]]; then
    register_runsc "$runsc_path" || die "could not update $DAEMON_JSON (is it valid JSON?)"
fi

has_runsc_runtime() {
    docker info --format '{{range $name, $_ := .Runtimes}}{{$name}} {{end}}' 2>/dev/null \
        | tr ' ' '\n' | grep -qx runsc
}

wait_for_engine() {
    local deadline=$((SECONDS + $1))
    until engine_answers; do
        ((SECONDS < deadline)) || return 1
        sleep 1
    done
}

# Zombies do not count: on these VMs PID 1 does not reap orphans, so a dead daemon lingers as one.
alive() { ps -o stat= -p "$1" 2>/dev/null | grep -qv '^Z'; }
dockerd_alive() { ps -C dockerd -o stat= 2>/dev/null | grep -qv '^Z'; }

if ! engine_answers; then
    if dockerd_alive; then
        # Probably still starting (or shutting down); a second daemon would fight it for its files.
        log "dockerd is running but not answering yet; waiting"
    else
        # Left by a daemon that died: dockerd refuses to start while its pid file names a process
        # that exists, and would wait for the dead containerd named by the other one.
        for pidfile in "$PIDFILE" /var/run/docker/containerd/containerd.pid; do
            if [[ -f $pidfile ]] && ! alive "$(cat "$pidfile")"; then
                log "removing stale $pidfile"
                rm -f "$pidfile"
            fi
        done
        log "starting dockerd (log: $DOCKERD_LOG)"
        setsid -f dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null
    fi
    if ! wait_for_engine 60; then
        log "last lines of $DOCKERD_LOG:"
        tail -n 30 "$DOCKERD_LOG" >&2 || true
        die "Docker engine did not answer 'docker info' within 60 s"
    fi
    log "Docker engine is up"
elif [[ -n $runsc_path ]] && ! has_runsc_runtime; then
    # dockerd rereads daemon.json on SIGHUP and picks up new runtimes; no restart, no lost containers.
    if [[ -f $PIDFILE ]] && kill -HUP "$(cat "$PIDFILE")" 2>/dev/null; then
        log "asked the running dockerd to reload $DAEMON_JSON"
        for _ in $(seq 10); do has_runsc_runtime && break; sleep 1; done
    fi
fi

if [[ -n $runsc_path ]]; then
    if has_runsc_runtime; then
        log "runtime runsc is available"
    else
        log "note: runsc is installed but the running dockerd does not list it"
    fi
fi
docker version --format 'Docker engine {{.Server.Version}}' >&2

"$here/build-test-image.sh"
