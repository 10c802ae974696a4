#!/usr/bin/env bash
# Install the Debian packages binome needs, idempotently (only what is missing).
set -euo pipefail
PACKAGES=(etcd-server etcd-client qemu-system-x86 qemu-utils busybox-static iproute2
          ipmitool cpio iptables iputils-ping curl python3-venv libpam0g fio util-linux
          e2fsprogs lz4 zstd nftables slapd ldap-utils ovmf prometheus
          swtpm swtpm-tools chromium chromium-driver)
# slapd, ldap-utils: the LDAP realm tests start their own directory server.
# e2fsprogs: mkfs.ext4 for the replica I/O-error tests; lz4/zstd: unpack the guest kernel
# and modules; nftables: `nft`, the lab's second partition backend (tests/lab run both).
# prometheus: the metrics tests start a real Prometheus (and check rules with promtool).
# chromium, chromium-driver: the web UI's browser tests (Selenium, tests/integration/ui).
# ovmf: the UEFI firmware of VMs with `bios: ovmf` (their start fails clearly without it).
# swtpm, swtpm-tools: the software TPM (and swtpm_setup) of VMs with a `tpmstate0`.
# genisoimage: builds the cloud-init (NoCloud/configdrive2) ISO, with the options PVE uses.
PACKAGES+=(genisoimage)
# pebble: the ACME certificate tests order from a real (test) CA, pebble, with
# pebble-challtestsrv answering its DNS queries.
PACKAGES+=(pebble)
# libfaketime: the notification tests run one node with its wall clock ahead (clock skew).
PACKAGES+=(libfaketime)
missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
    echo "setup: Debian packages present"
fi
# PAM service for the pam realm (root@pam logins through the system's PAM stack).
if [ ! -f /etc/pam.d/binome ]; then
    printf '@include common-auth\n@include common-account\n' | $SUDO tee /etc/pam.d/binome >/dev/null
fi
