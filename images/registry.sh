#!/usr/bin/env bash
# Starts Debian's docker-registry on loopback at $STUDIOS_REGISTRY (host:port) unless a registry already answers
# there, with its storage under $STUDIOS_REGISTRY_DIR. It keeps running in the background (its pid in
# registry.pid there): the build pushes the template images to it and the local backend pulls them from it.
#
# `registry.sh collect` removes from that storage what pushes superseded (a tag pushed again leaves its former
# manifest untagged, with the layers only it used): `docker-registry garbage-collect --delete-untagged`, so that
# its disk does not grow with every build. The registry keeps serving meanwhile, which is safe only because nothing
# pushes to it then (the build runs it after its pushes) and its storage has no blob cache to go stale.
set -euo pipefail
REGISTRY="${STUDIOS_REGISTRY:-127.0.0.1:5055}"
DIR="${STUDIOS_REGISTRY_DIR:-/var/lib/studios/registry}"

if [ "${1:-}" = collect ]; then
    # Only the storage of the registry this script started on $STUDIOS_REGISTRY.
    [ -f "$DIR/config.yml" ] && grep -qx "  addr: $REGISTRY" "$DIR/config.yml" || exit 0
    before="$(du -sm "$DIR/storage" | cut -f1)"
    docker-registry garbage-collect --delete-untagged "$DIR/config.yml" >>"$DIR/registry.log" 2>&1
    echo "registry: superseded images removed ($before MB before, $(du -sm "$DIR/storage" | cut -f1) MB now)"
    exit 0
fi

answers() { curl -fsS -o /dev/null --max-time 2 "http://$REGISTRY/v2/"; }

if answers; then
    exit 0
fi
case "$REGISTRY" in
    127.*|localhost:*) ;;
    *) echo "registry $REGISTRY does not answer (only a loopback one is started here)" >&2; exit 1 ;;
esac
mkdir -p "$DIR/storage"
cat >"$DIR/config.yml" <<CONFIG
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $DIR/storage
  delete:
    enabled: true
http:
  addr: $REGISTRY
CONFIG
setsid docker-registry serve "$DIR/config.yml" </dev/null >>"$DIR/registry.log" 2>&1 &
echo $! >"$DIR/registry.pid"
for _ in $(seq 50); do
    answers && { echo "registry: started on $REGISTRY (storage $DIR/storage)"; exit 0; }
    sleep 0.2
done
echo "registry: did not start on $REGISTRY; see $DIR/registry.log" >&2
exit 1
