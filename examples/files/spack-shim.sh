#!/bin/sh
# /usr/local/bin/spack while the foundation layer is being built.
#
# amimake installs a layer's files first, then its software (apt, then
# spack), then runs its provision steps. The foundation lists Spack
# packages (gcc, openmpi) but only installs Spack itself in a provision
# step (scripts/install-spack.sh), which comes later. This stand-in closes
# the gap: on first use it clones Spack at the template's $spack_version
# into $spack_root, then hands every call over to the real `spack`.
# install-spack.sh replaces it with a plain symlink, so the finished image
# never clones anything.
set -eu

# The builder exports the template's variables; the defaults repeat the
# values in templates/foundation.yaml for a call made outside a build.
spack_root=${spack_root:-/opt/spack}
spack_version=${spack_version:-0.22.2}

if [ ! -x "$spack_root/bin/spack" ]; then
    if ! command -v git >/dev/null 2>&1; then
        echo "spack: git is not installed; install it first (software.apt: [git])" >&2
        exit 1
    fi
    echo "spack: cloning Spack v$spack_version into $spack_root" >&2
    git -c advice.detachedHead=false clone --quiet -c feature.manyFiles=true --depth=1 \
        --branch "v$spack_version" https://github.com/spack/spack.git "$spack_root" >&2
fi

exec "$spack_root/bin/spack" "$@"
