#!/usr/bin/env bash
# Build local stand-ins for the upstream images the project uses, tagged with
# the upstream names, in the local Docker engine. These machines reach no
# container registry (`docker pull` fails), so CI builds them first; compose's
# default pull_policy (missing) then uses them as if they had been pulled.
#
#   bash .ci/standins/build.sh [--force] [--serial] [NAME...]
#
# NAME is one of: debian python nginx redis chroma ollama certbot pebble bare registry (default: all; the
# images a NAME is built FROM are built too). An image whose label
# onevps.standin.hash already equals the hash of its build inputs is skipped,
# unless --force, which rebuilds without the layer cache (as on a new machine).
# --serial builds one image at a time. Build logs go to $STANDINS_LOG_DIR
# (default ${TMPDIR:-/tmp}/onevps-standins-logs). See README.md beside this file.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Bump when this script's recipe changes in a way the hashed files don't show.
RECIPE=1
EXTRA_CA_DIR=${STANDINS_EXTRA_CA_DIR:-/usr/local/share/ca-certificates}
LOG_DIR=${STANDINS_LOG_DIR:-${TMPDIR:-/tmp}/onevps-standins-logs}
export DOCKER_BUILDKIT=0   # the legacy builder is what every machine here has

FORCE=0
PARALLEL=1
WANT=()
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        --serial) PARALLEL=0 ;;
        -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        debian|python|nginx|redis|chroma|ollama|certbot|pebble|bare|registry) WANT+=("$arg") ;;
        *) echo "[standins] unknown argument: $arg" >&2; exit 2 ;;
    esac
done

# name -> tags (first is the primary) and the image it is built FROM
declare -A TAGS=(
    [debian]="onevps-standin/debian:bookworm debian:bookworm-slim"
    [python]="python:3.11-slim"
    [nginx]="nginx:1.27-bookworm"
    [redis]="redis:7.4-bookworm"
    [chroma]="chromadb/chroma:1.0.20"
    [ollama]="ollama/ollama:0.9.6"
    [certbot]="certbot/certbot:v2.11.0"
    [pebble]="onevps-standin/pebble:2.4.0"
    [bare]="onevps-standin/bare-server:bookworm"
    [registry]="registry:2"
)
declare -A PARENT=(
    [debian]=""
    [python]="debian"
    [nginx]="debian"
    [redis]="debian"
    [chroma]="python"
    [ollama]="python"
    [certbot]="debian"
    [pebble]="debian"
    [bare]="debian"
    [registry]="debian"
)

log() { echo "[standins] $*"; }
die() { echo "[standins] ERROR: $*" >&2; exit 1; }
primary() { set -- ${TAGS[$1]}; echo "$1"; }
label_of() { docker image inspect -f "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true; }
image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }

command -v docker >/dev/null || die "docker CLI not found"
docker info >/dev/null 2>&1 || die "the Docker engine does not answer (is dockerd running?)"
mkdir -p "$LOG_DIR"

# One build.sh at a time per machine (CI and a developer may overlap).
exec 9>"$LOG_DIR/.lock"
if ! flock -n 9; then
    log "another build.sh is running; waiting for it ..."
    flock 9
fi

# Hash of everything an image is built from: its folder, the image it is
# built FROM (by id), extra inputs, and RECIPE.
inputs_hash() {
    local name=$1
    {
        echo "recipe=$RECIPE name=$name tags=${TAGS[$name]}"
        (cd "$HERE/$name" && find . -type f ! -path '*/__pycache__/*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
        if [ -n "${PARENT[$name]}" ]; then
            echo "parent=$(image_id "$(primary "${PARENT[$name]}")")"
        fi
        case "$name" in
            debian) echo "suite=${DEBIAN_SUITE:-bookworm} mirror=${DEBIAN_MIRROR:-} sec=${DEBIAN_SECURITY_MIRROR:-}" ;;
            chroma|bare) extra_cas | while read -r f; do sha256sum < "$f"; done ;;
        esac
    } | sha256sum | cut -c1-32
}

extra_cas() { find "$EXTRA_CA_DIR" -maxdepth 1 -type f -name '*.crt' 2>/dev/null | LC_ALL=C sort; }

up_to_date() {
    [ "$FORCE" = 0 ] && [ "$(label_of "$(primary "$1")" onevps.standin.hash)" = "$2" ]
}

# Point the remaining tags at the primary one.
finish_tags() {
    local name=$1 first tag
    first=$(primary "$name")
    for tag in ${TAGS[$name]}; do
        if [ "$tag" != "$first" ] && [ "$(image_id "$tag")" != "$(image_id "$first")" ]; then
            docker tag "$first" "$tag"
        fi
    done
}

# The builders check every step themselves: they run inside an `if`, where
# bash ignores `set -e`.
build_debian() {
    local hash=$1 root rc=0
    root=$(mktemp -d "${TMPDIR:-/tmp}/onevps-standin-root.XXXXXX") || return 1
    bash "$HERE/debian/mkroot.sh" "$root" || rc=1
    if [ "$rc" = 0 ]; then
        tar --numeric-owner -C "$root" -c . | docker import \
            -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            -c 'CMD ["bash"]' \
            -c 'LABEL onevps.standin=true' \
            -c 'LABEL onevps.standin.upstream=debian:bookworm-slim' \
            -c "LABEL onevps.standin.hash=$hash" \
            -m "onevps stand-in: debootstrap --variant=minbase bookworm" \
            - "$(primary debian)" || rc=1
    fi
    rm -rf "$root"
    return "$rc"
}

build_dockerfile() {
    local name=$1 hash=$2 ctx f rc=0
    ctx=$(mktemp -d "${TMPDIR:-/tmp}/onevps-standin-ctx.XXXXXX") || return 1
    cp -a "$HERE/$name/." "$ctx/" || rc=1
    find "$ctx" -depth -type d -name __pycache__ -exec rm -rf {} + || rc=1
    if [ "$rc" = 0 ] && { [ "$name" = chroma ] || [ "$name" = bare ]; }; then
        # chroma: pip in this build must trust the proxy CA of the build machine;
        # bare: the server's apt and curl trust it as a user's server trusts the internet
        mkdir -p "$ctx/certs" || rc=1
        while read -r f; do cp "$f" "$ctx/certs/" || rc=1; done < <(extra_cas)
    fi
    if [ "$rc" = 0 ]; then
        # --force means "as on a new machine": no layer cache either
        docker build --force-rm $([ "$FORCE" = 1 ] && echo --no-cache) --label onevps.standin=true \
            --label "onevps.standin.hash=$hash" -t "$(primary "$name")" "$ctx" || rc=1
    fi
    rm -rf "$ctx"
    return "$rc"
}

# Build one image (no dependency handling); output goes to its log file.
build_one() {
    local name=$1 hash start logf old_id
    hash=$(inputs_hash "$name")
    if up_to_date "$name" "$hash"; then
        finish_tags "$name"
        log "${TAGS[$name]// / + } up to date (hash $hash), skipping"
        return 0
    fi
    logf="$LOG_DIR/$name.log"
    log "building ${TAGS[$name]// / + } ... (log: $logf)"
    start=$SECONDS
    old_id=$(image_id "$(primary "$name")")
    if ! { if [ "$name" = debian ]; then build_debian "$hash"; else build_dockerfile "$name" "$hash"; fi; } >"$logf" 2>&1; then
        echo "[standins] ---- last lines of $logf ----" >&2
        tail -n 40 "$logf" >&2
        die "building $(primary "$name") failed"
    fi
    finish_tags "$name"
    if [ -n "$old_id" ] && [ "$old_id" != "$(image_id "$(primary "$name")")" ]; then
        echo "$old_id" >> "$LOG_DIR/.replaced"
    fi
    log "built ${TAGS[$name]// / + } in $((SECONDS - start))s"
}

# debootstrap makes the Debian root; a new machine may not have it yet.
need_debootstrap() {
    command -v debootstrap >/dev/null && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        log "installing debootstrap (apt-get) ..."
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; } \
            >"$LOG_DIR/apt-debootstrap.log" 2>&1 || { tail -n 20 "$LOG_DIR/apt-debootstrap.log" >&2; die "could not install debootstrap"; }
    else
        die "debootstrap is not installed (apt-get install -y debootstrap, as root)"
    fi
}

# Which images to consider: the wanted ones and what they are built FROM.
declare -A SELECTED=()
select_with_parents() {
    local n=$1
    while [ -n "$n" ]; do SELECTED[$n]=1; n=${PARENT[$n]}; done
}
if [ ${#WANT[@]} -eq 0 ]; then WANT=(debian python nginx redis chroma ollama certbot pebble bare registry); fi
for n in "${WANT[@]}"; do select_with_parents "$n"; done
sel() { [ -n "${SELECTED[$1]:-}" ]; }

# Run the given images one after another (stops at the first failure).
chain() { local n; for n in "$@"; do if sel "$n"; then build_one "$n" || return 1; fi; done; }

total_start=$SECONDS
if sel debian && ! up_to_date debian "$(inputs_hash debian)"; then need_debootstrap; fi
chain debian
if [ "$PARALLEL" = 1 ]; then
    # Mostly network-bound (apt, PyPI): overlap the independent branches.
    pids=()
    chain python chroma & pids+=($!)
    chain nginx redis certbot pebble registry & pids+=($!)
    chain bare & pids+=($!)   # apt only (~25-40 s); needs nothing but debian
    fail=0
    for p in "${pids[@]}"; do wait "$p" || fail=1; done
    # ollama needs python; it is quick, so it waits for the python branch above.
    [ "$fail" = 0 ] || die "some stand-in images failed to build"
    chain ollama
else
    chain python nginx redis chroma ollama certbot pebble bare registry
fi
# Stand-ins replaced by a rebuild are left untagged: remove them by id once no
# container or image uses them (docker refuses until then; the ids wait in
# $LOG_DIR/.replaced for a later run). Labels are inherited by images built
# FROM a stand-in, so a label filter would hit the project's images too.
if [ -s "$LOG_DIR/.replaced" ]; then
    current=" "
    for n in "${!TAGS[@]}"; do current+="$(image_id "$(primary "$n")") "; done
    for pass in 1 2 3; do   # children first, then the images they were built FROM
        sort -u "$LOG_DIR/.replaced" | while read -r id; do
            [ -n "$(image_id "$id")" ] || continue           # gone already
            case "$current" in *" $id "*) continue ;; esac   # a stand-in tag again
            # tagged by someone since: not ours to remove any more
            [ "$(docker image inspect -f '{{len .RepoTags}}' "$id" 2>/dev/null)" = 0 ] || continue
            # no -f: docker keeps an image that has tags, containers or children
            docker rmi "$id" >/dev/null 2>&1 || echo "$id"
        done > "$LOG_DIR/.replaced.new" || true
        mv "$LOG_DIR/.replaced.new" "$LOG_DIR/.replaced"
    done
fi
log "all done in $((SECONDS - total_start))s"
