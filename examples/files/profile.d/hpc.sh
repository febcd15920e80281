# shellcheck shell=sh
# /etc/profile.d/hpc.sh, installed by the amimake foundation layer.
#
# Gives bash login shells Spack's shell integration (`spack load`,
# `spack env activate`). Spack's location is read from the
# /usr/local/bin/spack symlink that scripts/install-spack.sh creates, so
# this file needs no change when the template's spack_root does.
#
# Site module files live in $modulefiles_root (/opt/modulefiles), which the
# foundation adds to /etc/environment-modules/modulespath: `module avail`
# lists them without any setup here.

if [ -n "${BASH_VERSION:-}" ] && [ -L /usr/local/bin/spack ]; then
    _hpc_spack=$(readlink -f /usr/local/bin/spack)
    _hpc_spack_root=${_hpc_spack%/bin/spack}
    if [ -f "$_hpc_spack_root/share/spack/setup-env.sh" ]; then
        # shellcheck disable=SC1091 # part of the Spack checkout
        . "$_hpc_spack_root/share/spack/setup-env.sh"
    fi
    unset _hpc_spack _hpc_spack_root
fi
