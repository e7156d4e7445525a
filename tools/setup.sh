#!/usr/bin/env bash
# Installs everything the tests and the demo need on a fresh Debian 12 machine: Debian packages
# (tools/debian-packages.txt) and a virtualenv with the project, its libvirt and dev extras, and the
# local environment (operator/vemigrate_dev, on the venv's path through the editable install). Idempotent and
# quick when nothing is missing. Go-built binaries (kube-apiserver, etcd) are built on first use by
# `vemigrate controlplane up` into ~/.cache/vemigrate, never into the repository.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${VENV:-$here/.venv}

mapfile -t wanted < <(grep -v '^\s*#' "$here/tools/debian-packages.txt" | awk 'NF {print $1}')
missing=()
for pkg in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing Debian packages: ${missing[*]}"
    [ "$(id -u)" = 0 ] || { echo "setup: need root to install Debian packages" >&2; exit 1; }
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # prometheus, prometheus-alertmanager and redis-server are installed on their own: the tests start
    # their own servers, and the packages' services (a server on :9090, the operator's default metrics
    # port; Alertmanager on :9093 and its cluster port :9094; Redis on :6379) must neither start now
    # (policy-rc.d forbids it during this install) nor at boot (disabled).
    rest=() prom=()
    for pkg in "${missing[@]}"; do
        case $pkg in prometheus | prometheus-alertmanager | redis-server) prom+=("$pkg") ;; *) rest+=("$pkg") ;; esac
    done
    # --force-confnew: libvirt-daemon-system otherwise stops at a qemu.conf prompt.
    if ((${#rest[@]})); then
        apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confnew "${rest[@]}" >/dev/null
    fi
    if ((${#prom[@]})); then
        policy=/usr/sbin/policy-rc.d ours=
        if [ ! -e "$policy" ]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && ours=1
        fi
        apt-get install -y -qq --no-install-recommends "${prom[@]}" >/dev/null || { [ -z "$ours" ] || rm -f "$policy"; exit 1; }
        [ -z "$ours" ] || rm -f "$policy"
        for service in "${prom[@]}"; do
            if [ -d /run/systemd/system ]; then
                systemctl disable --now "$service.service" >/dev/null 2>&1 || true
            else
                update-rc.d "$service" disable >/dev/null 2>&1 || true
            fi
        done
    fi
fi

stamp=$venv/.installed
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ]; then
    echo "setup: installing the project into $venv"
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q -e "$here[dev,libvirt]"
    # The dev verbs (`vemigrate controlplane | lab | demo`) come from vemigrate_dev, which is not part
    # of the distribution: the editable install's path to operator/ is what makes it importable.
    "$venv/bin/python" -c 'import vemigrate_dev.commands' || {
        echo "setup: vemigrate_dev is not importable from $venv (was the project installed without -e?)" >&2
        exit 1
    }
    touch "$stamp"
fi
