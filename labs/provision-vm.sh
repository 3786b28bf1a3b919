#!/bin/sh
# Prepares one fresh Debian 12 / Ubuntu 22.04+ machine (a student's VM, 2 cores, 4 GB) for the
# labs: the packages, this repository, its venv and link shaper, `sudo qtlab` on the PATH, and
# `qtlab doctor`'s verdict at the end. Run as root (or from cloud-init's runcmd):
#
#   sh provision-vm.sh REPOSITORY [DIRECTORY] [STUDENT]
#
# REPOSITORY: what `git clone` accepts (your course's copy of this repository: a URL or a path).
# DIRECTORY:  where it goes (default /opt/quic-tunnel-lab; an existing clone is updated).
# STUDENT:    an existing user who gets the clone and may run the lab commands with sudo.
set -eu
if [ "$(id -u)" -ne 0 ]; then
    echo "provision-vm.sh: run it as root (sudo sh provision-vm.sh REPOSITORY ...)." >&2
    exit 1
fi
repo=${1:?usage: sh provision-vm.sh REPOSITORY [DIRECTORY] [STUDENT]}
dir=${2:-/opt/quic-tunnel-lab}
student=${3:-}
export DEBIAN_FRONTEND=noninteractive

command -v git >/dev/null && command -v make >/dev/null || {
    apt-get update -q
    apt-get install -y -q --no-install-recommends git make ca-certificates
}
if [ -d "$dir/.git" ]; then
    git -C "$dir" pull --ff-only
else
    git clone "$repo" "$dir"
fi
cd "$dir"
apt-get update -q
make deps all                      # Debian packages, .venv, the link shaper, the TCP segmenter
make install-commands              # /usr/local/bin/qtlab and qtun: `sudo qtlab ...` works
if [ -n "$student" ]; then
    id "$student" >/dev/null 2>&1 || { echo "provision-vm.sh: no user $student." >&2; exit 1; }
    chown -R "$student:" "$dir"
    # root's git (the experiments record the commit) then trusts the student's clone
    git config --system --add safe.directory "$dir"
    usermod -aG sudo "$student"
    echo "$student may now run: cd $dir && sudo qtlab up reference --tunnel session"
fi
qtlab doctor
