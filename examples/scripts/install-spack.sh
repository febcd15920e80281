#!/bin/sh
# Foundation layer: install Spack $spack_version into $spack_root and make
# it usable by every later layer and by the image's users.
#
# amimake runs this as root on the builder, after the layer's files and
# software, with the template's variables in the environment. It is safe
# to run again: each step checks before it changes anything.
set -eu

: "${spack_version:?set spack_version in the template variables}"
: "${spack_root:?set spack_root in the template variables}"
tag="v$spack_version"

# 1. The checkout. The foundation's software.spack step has usually cloned
#    it already through files/spack-shim.sh; cloning here covers a
#    foundation that lists no Spack packages.
if [ ! -e "$spack_root" ]; then
    git -c advice.detachedHead=false clone --quiet -c feature.manyFiles=true --depth=1 --branch "$tag" \
        https://github.com/spack/spack.git "$spack_root"
elif [ ! -d "$spack_root/.git" ] || [ ! -x "$spack_root/bin/spack" ]; then
    echo "install-spack.sh: $spack_root exists but is not a Spack checkout" >&2
    exit 1
fi
want=$(git -C "$spack_root" rev-parse -q --verify "refs/tags/$tag^{commit}" || true)
if [ -z "$want" ]; then
    git -C "$spack_root" fetch --quiet --depth=1 origin tag "$tag"
    want=$(git -C "$spack_root" rev-parse "refs/tags/$tag^{commit}")
fi
if [ "$(git -C "$spack_root" rev-parse HEAD)" != "$want" ]; then
    echo "install-spack.sh: switching $spack_root to $tag"
    git -C "$spack_root" -c advice.detachedHead=false checkout --quiet "$tag"
fi

# 2. On every PATH. The symlink replaces the first-use shim: scripts,
#    non-login shells and later layers' `spack install` find Spack in
#    /usr/local/bin; /etc/profile.d/hpc.sh adds the shell integration for
#    login shells. (bin/spack resolves symlinks to find its own prefix.)
ln -sfn "$spack_root/bin/spack" /usr/local/bin/spack
spack --version

# 3. Compilers: the system's (GCC 13.2.0 on Ubuntu 24.04, 12.2.0 on
#    Debian 12), plus every GCC that Spack built whose version the system
#    does not already provide, so `%gcc@13.2.0` works on both.
spack compiler find
spack find --format '{version} {prefix}' gcc 2>/dev/null | while read -r version prefix; do
    case $prefix in /*) ;; *) continue ;; esac
    if ! spack compiler info "gcc@$version" >/dev/null 2>&1; then
        spack compiler find "$prefix"
    fi
done
spack compiler list

# 4. Build tools the system already has, so that later layers reuse them
#    instead of building them from source.
spack external find --scope site cmake perl
