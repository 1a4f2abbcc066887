#!/usr/bin/env bash
# Make a Debian 12 (bookworm) minbase root file system in $1, trimmed and
# configured like the official debian:bookworm-slim image (debuerreotype's
# "slim" + "minimizing config"), ready for `tar -C ROOT -c . | docker import -`.
#
# Called by ../build.sh; the image is tagged onevps-standin/debian:bookworm and
# debian:bookworm-slim. Needs root and debootstrap.
set -euo pipefail

ROOT=${1:?usage: mkroot.sh ROOT}
SUITE=${DEBIAN_SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR"

# --- apt: deb822 sources like the official image (main, updates, security) ---
rm -f "$ROOT/etc/apt/sources.list"
cat > "$ROOT/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF

# --- the official image's container-friendly apt/dpkg settings ---
cat > "$ROOT/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
echo 'Apt::AutoRemove::SuggestsImportant "false";' > "$ROOT/etc/apt/apt.conf.d/docker-autoremove-suggests"
echo 'Acquire::Languages "none";' > "$ROOT/etc/apt/apt.conf.d/docker-no-languages"
printf '%s\n' 'Acquire::GzipIndexes "true";' 'Acquire::CompressionTypes::Order:: "gz";' \
    > "$ROOT/etc/apt/apt.conf.d/docker-gzip-indexes"

# services must not start while packages are installed in a build
printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"
chmod 755 "$ROOT/usr/sbin/policy-rc.d"

# "slim": keep docs, man pages and translations out, now and for later installs
cat > "$ROOT/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
EOF
find "$ROOT/usr/share/doc" -mindepth 1 -not -type d -not -name copyright -delete
find "$ROOT/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$ROOT"/usr/share/{groff,info,linda,lintian/overrides,locale,man}/*

# --- no caches, no host leftovers ---
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/cache/apt/*.bin \
       "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/log/*.log "$ROOT"/var/log/apt/* \
       "$ROOT"/tmp/* "$ROOT"/var/tmp/* "$ROOT"/debootstrap
mkdir -p "$ROOT/var/lib/apt/lists/partial"
: > "$ROOT/etc/resolv.conf"     # docker bind-mounts its own
: > "$ROOT/etc/hostname"
