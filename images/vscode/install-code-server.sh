#!/bin/sh
# Installs code-server (VS Code in the browser) on this host for the VS Code template of local
# compute environments, from the npm registry and Debian's packages only.
#
# code-server's post-install step installs VS Code's own dependencies with a nested `npm install`.
# Run inside a global install, that nested install inherits the global flag and unpacks into the
# wrong tree, so the package is installed without scripts and then rebuilt in place. The step also
# downloads ripgrep from GitHub, which fails on a closed network: Debian's ripgrep is put where it
# looks for its download first. npm 10 runs it (npm 11 failed to unpack VS Code's dependencies here).
set -eu
VERSION="${CODE_SERVER_VERSION:-4.100.3}"  # the last line that runs on Node.js 20
RIPGREP_CACHE="vscode-ripgrep-cache-1.15.11/ripgrep-v13.0.0-10-x86_64-unknown-linux-musl.tar.gz"  # where @vscode/ripgrep 1.15.11 looks

if command -v code-server >/dev/null && [ "$(code-server --version 2>/dev/null | tail -1 | cut -d' ' -f1)" = "$VERSION" ]; then
    exit 0
fi
if [ "$(node --version | cut -d. -f1)" != "v20" ]; then
    echo "code-server $VERSION needs Node.js 20; this host has $(node --version)" >&2
    exit 1
fi
command -v rg >/dev/null && command -v pkg-config >/dev/null && [ -e /usr/include/krb5.h ] || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ripgrep build-essential pkg-config python3 libkrb5-dev
}
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$(dirname "$scratch/$RIPGREP_CACHE")"
cp "$(command -v rg)" "$scratch/rg"
tar -czf "$scratch/$RIPGREP_CACHE" -C "$scratch" rg
npm install --global --prefix "$scratch/npm10" --no-fund --no-audit npm@10 >/dev/null
export PATH="$scratch/npm10/bin:$PATH" TMPDIR="$scratch" npm_config_yes=true
rm -rf "$(npm root --global)/code-server"  # what a failed install left
npm install --global --ignore-scripts --no-fund --no-audit "code-server@$VERSION"
cd "$(npm root --global)/code-server"
npm rebuild --unsafe-perm
code-server --version
