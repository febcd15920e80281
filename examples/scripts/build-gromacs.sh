#!/bin/sh
# GROMACS layer: publish the GROMACS that this layer's software step built
# (`spack install gromacs@2024.3+mpi`) as the environment module
# gromacs/<version>, and check that it runs.
#
# amimake runs this as root on the builder, with the template variables
# (inherited from foundation: spack_root, modulefiles_root) exported.
set -eu

: "${modulefiles_root:?set modulefiles_root in the template variables}"

spec='gromacs+mpi'
prefix=$(spack location --install-dir "$spec")
version=$(spack find --format '{version}' "$spec")
mpi_prefix=$(spack location --install-dir openmpi)

# The module puts gmx_mpi and the matching mpirun on PATH.
mkdir -p "$modulefiles_root/gromacs"
modulefile="$modulefiles_root/gromacs/$version"
cat > "$modulefile.tmp" <<MODULE
#%Module1.0
## Written by the amimake gromacs layer (scripts/build-gromacs.sh).
module-whatis "GROMACS $version, MPI build (gmx_mpi), with Open MPI"
conflict gromacs
prepend-path PATH $mpi_prefix/bin
prepend-path PATH $prefix/bin
prepend-path MANPATH $prefix/share/man
prepend-path CMAKE_PREFIX_PATH $prefix
MODULE
mv "$modulefile.tmp" "$modulefile"

# Smoke test: the binary starts, initialises MPI and reports its version.
# (Open MPI refuses to run as root unless told it is intended.)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
if ! out=$("$prefix/bin/gmx_mpi" --version 2>&1); then
    printf '%s\n' "$out" >&2
    echo "build-gromacs.sh: gmx_mpi --version failed" >&2
    exit 1
fi
printf '%s\n' "$out" | grep 'GROMACS version'

# And the module loads and finds it, as a user's job script would.
# shellcheck disable=SC2016 # expanded by the inner shell
env -u MODULEPATH -u LOADEDMODULES sh -c '. /usr/share/modules/init/sh && module load "gromacs/$1" && command -v gmx_mpi' \
    sh "$version"
