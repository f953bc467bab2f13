#!/usr/bin/env bash
# Builds the template images without a Docker engine and pushes them to the loopback registry (`make images`).
#
# 1. A Debian bookworm base root filesystem from Debian's archive (mmdebstrap, minbase variant: what debian:bookworm-slim is), imported as
#    the local image localhost/studios/debian:bookworm. The tarball is kept under $STUDIOS_IMAGE_CACHE, named
#    by the hash of its recipe (the mmdebstrap command below): it is rebuilt only when the recipe changes.
# 2. Each template's Dockerfile built on that base with `buildah bud --layers` (unchanged layers are reused
#    from buildah's storage in /var/lib/containers), tagged locally with its reference in the registry (so
#    builds for two registries on one host never take each other's tag).
# 3. The images pushed to the registry at $STUDIOS_REGISTRY (images/registry.sh starts Debian's
#    docker-registry there when nothing answers), where the local backend pulls them by reference.
# 4. What those pushes superseded removed from that registry's storage when it is the loopback one images/registry.sh
#    started (`images/registry.sh collect`), so that its disk does not grow with every build.
#
# A template whose IDE cannot be fetched from this network (RStudio Server's release package) is not built:
# one line says so.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${STUDIOS_IMAGE_CACHE:-/var/cache/studios}"
REGISTRY="${STUDIOS_REGISTRY:-127.0.0.1:5055}"
MIRROR="http://deb.debian.org/debian"
TEMPLATES="${STUDIOS_BUILD_TEMPLATES:-jupyterlab vscode rstudio}"

base_options=(
    --variant=minbase --include=ca-certificates
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*'
)
base_sources=(
    "deb $MIRROR bookworm main"
    "deb $MIRROR bookworm-updates main"
    "deb http://deb.debian.org/debian-security bookworm-security main"
)
recipe_hash="$(printf '%s\n' "${base_options[@]}" bookworm "${base_sources[@]}" | sha256sum | cut -c1-16)"
BASE="localhost/studios/debian:bookworm-$recipe_hash"

seconds() { date +%s.%N; }
elapsed() { printf '%.1f s' "$(echo "$(seconds) - $1" | bc)"; }

build_base() {
    if buildah inspect --type image "$BASE" >/dev/null 2>&1; then
        echo "base: $BASE (cached)"
        return
    fi
    local began tarball
    began="$(seconds)"
    mkdir -p "$CACHE"
    tarball="$CACHE/debian-bookworm-$recipe_hash.tar"
    if [ ! -s "$tarball" ]; then
        mmdebstrap --quiet --format=tar "${base_options[@]}" bookworm "$tarball.partial" "${base_sources[@]}"
        mv "$tarball.partial" "$tarball"
    fi
    local container
    container="$(buildah from scratch)"
    buildah add --quiet "$container" "$tarball" / >/dev/null
    buildah config --cmd /bin/bash --label "org.opencontainers.image.description=Debian bookworm from deb.debian.org ($recipe_hash)" "$container"
    buildah commit --quiet --rm "$container" "$BASE" >/dev/null
    buildah tag "$BASE" localhost/studios/debian:bookworm
    echo "base: $BASE built in $(elapsed "$began")"
}

# The version each template's image is tagged with (its IDE's), as the platform's settings read it too.
template_version() {
    python3 -c 'import json, sys; print(json.load(open("images/tags.json"))[sys.argv[1]])' "$1"
}

build_template() {
    local template="$1" version began reference
    if [ "$template" = rstudio ]; then
        echo "rstudio: not built: RStudio Server's release package (download1.rstudio.org) cannot be fetched from this network"
        return
    fi
    version="$(template_version "$template")"
    reference="$REGISTRY/studios/$template:$version"
    began="$(seconds)"
    # This host's certificate authorities (a network that inspects TLS has one of its own) for the build's
    # downloads, mounted as a build secret: never in the image.
    buildah bud --quiet --layers --isolation=chroot --build-arg "BASE=$BASE" \
        --secret "id=ca,src=${STUDIOS_BUILD_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}" -f "images/$template/Dockerfile" \
        -t "$reference" . >/dev/null
    echo "$template: built in $(elapsed "$began"), $(image_size "$reference")"
    began="$(seconds)"
    buildah push --quiet --tls-verify=false "$reference" "docker://$reference"
    echo "$template: pushed as $reference in $(elapsed "$began")"
}

image_size() {
    buildah images --format '{{.Size}}' "$1" | head -1
}

began="$(seconds)"
build_base
images/registry.sh
for template in $TEMPLATES; do
    build_template "$template"
done
images/registry.sh collect
echo "images: done in $(elapsed "$began")"
