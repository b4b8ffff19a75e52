#!/usr/bin/env bash
# Podman (rootful) for tests/ops/test_container.py and test_compose_stack.py, with no registry reachable:
#   1. Debian's podman + runc (this kernel's hybrid cgroup v1 layout makes crun fail) + netavark/aardvark-dns
#      (compose services find each other by name) + iptables (netavark's firewall) + debootstrap.
#   2. /etc/containers/containers.conf: runtime runc and default ulimits within this machine's hard limits
#      (nofile 20000, nproc 32768). An operator's existing file is left alone: our settings then go in a
#      drop-in (containers.conf.d/millionws.conf), which podman reads after it, only when the drop-in is absent.
#   3. The base image the Dockerfile's FROM names (python:3.11-slim-bookworm), built locally since no registry
#      can be reached: `debootstrap --variant=minbase bookworm` + python3, pip, venv, python-is-python3,
#      ca-certificates, the machine's own certificate authorities added (pip inside `podman build` then reaches
#      PyPI as this machine does, through its TLS-inspecting egress), and pip allowed to install system-wide as
#      in the official image (Debian's EXTERNALLY-MANAGED marker removed). `podman import`ed once (~1.5 min),
#      skipped when the image exists (MILLIONWS_REBUILD_BASE=1 rebuilds it).
# Idempotent: prints one line per step when there is nothing to do. Root (or sudo) only.
set -euo pipefail
cd "$(dirname "$0")/../.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

base_name() {  # the FROM of deploy/Dockerfile as podman resolves it: docker.io/library/python:3.11-slim-bookworm
    local from
    from="$(awk 'toupper($1) == "FROM" { print $2; exit }' deploy/Dockerfile)"
    case "$from" in
        "") ;;
        */*.*/* | *.*/* | localhost/*) echo "$from" ;;
        */*) echo "docker.io/$from" ;;
        *) echo "docker.io/library/$from" ;;
    esac
}

# ---- 1. packages
PKGS=(podman runc netavark aardvark-dns iptables debootstrap)
missing=()
for pkg in "${PKGS[@]}"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install-podman: ${PKGS[*]} already installed"
else
    echo "install-podman: installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ---- 2. containers.conf (ours is recognised by its first line and kept up to date)
SETTINGS='# millionws (tests/ops/install-podman.sh): runc, since crun fails on this
# kernel'"'"'s cgroup layout; default ulimits within the host'"'"'s hard limits (podman'"'"'s
# default nofile 1048576 exceeds them and every container would fail to start).
[containers]
default_ulimits = [
  "nofile=20000:20000",
  "nproc=32768:32768",
]

[engine]
runtime = "runc"

[network]
# not CNI (Debian ships no CNI plugins with podman): netavark + aardvark-dns, service names resolve
network_backend = "netavark"
'
CONF=/etc/containers/containers.conf
DROPIN=/etc/containers/containers.conf.d/millionws.conf
if [ ! -e "$CONF" ]; then
    $SUDO mkdir -p /etc/containers
    printf '%s' "$SETTINGS" | $SUDO tee "$CONF" >/dev/null
    echo "install-podman: wrote $CONF"
elif grep -q 'millionws (tests/ops/install-podman.sh)' "$CONF"; then
    if [ "$(cat "$CONF")" = "$(printf '%s' "$SETTINGS")" ]; then
        echo "install-podman: $CONF already ours"
    else
        printf '%s' "$SETTINGS" | $SUDO tee "$CONF" >/dev/null
        echo "install-podman: $CONF (ours) updated"
    fi
elif [ -e "$DROPIN" ]; then
    echo "install-podman: $CONF is the operator's; $DROPIN already there"
else
    $SUDO mkdir -p "$(dirname "$DROPIN")"
    printf '%s' "$SETTINGS" | $SUDO tee "$DROPIN" >/dev/null
    echo "install-podman: $CONF is the operator's (left alone); our settings in $DROPIN"
fi

# ---- 3. the base image
BASE="$(base_name)"
if [ -z "$BASE" ]; then
    echo "install-podman: no FROM in deploy/Dockerfile" >&2
    exit 1
fi
if [ "${MILLIONWS_REBUILD_BASE:-0}" != 1 ] && $SUDO podman image exists "$BASE"; then
    echo "install-podman: base image $BASE already built"
    exit 0
fi
echo "install-podman: building base image $BASE (debootstrap minbase bookworm, ~1.5 min)"
MIRROR="${MILLIONWS_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
ROOTFS="$(mktemp -d /var/tmp/millionws-base.XXXXXX)"
cleanup() { $SUDO rm -rf --one-file-system "$ROOTFS"; }
trap cleanup EXIT
$SUDO debootstrap --variant=minbase \
    --include=python3,python3-pip,python3-venv,python-is-python3,ca-certificates \
    bookworm "$ROOTFS" "$MIRROR" >/dev/null
# The machine's own certificate authorities (e.g. an egress that inspects TLS), trusted inside the image too.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    $SUDO cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
fi
$SUDO chroot "$ROOTFS" update-ca-certificates >/dev/null
# As in the official python image: `pip install` as root installs system-wide (no PEP 668 refusal).
$SUDO rm -f "$ROOTFS"/usr/lib/python3*/EXTERNALLY-MANAGED
$SUDO chroot "$ROOTFS" apt-get clean
$SUDO rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin
$SUDO tar -C "$ROOTFS" --numeric-owner -c . \
    | $SUDO podman import --quiet \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        - "$BASE" >/dev/null
echo "install-podman: base image $BASE built ($($SUDO podman image inspect --format '{{.Size}}' "$BASE") bytes)"
