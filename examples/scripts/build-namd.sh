#!/bin/sh
# NAMD layer: build NAMD $namd_version (CPU, over MPI) from the licensed
# source tarball in /usr/local/src/namd, with the foundation's Open MPI and
# this layer's Spack-built FFTW and Tcl; install it into
# /opt/namd/$namd_version and publish it as the module namd/$namd_version.
#
# amimake runs this as root on the builder, after the layer's files (the
# source directory) and software (`spack install fftw@3.3.10 tcl@8.6.12`),
# with the template variables exported.
set -eu

: "${namd_version:?set namd_version in the template variables}"
: "${modulefiles_root:?set modulefiles_root in the template variables}"

src_dir=/usr/local/src/namd
tarball="$src_dir/NAMD_${namd_version}_Source.tar.gz"
prefix="/opt/namd/$namd_version"

if [ ! -f "$tarball" ]; then
    cat >&2 <<MSG
build-namd.sh: $tarball is missing.
NAMD's license does not allow redistribution, so its source cannot be
downloaded here. Download NAMD_${namd_version}_Source.tar.gz from
https://www.ks.uiuc.edu/Development/Download/download.cgi?PackageName=NAMD
into files/namd-source/ of the template repository and build again.
MSG
    exit 1
fi

case $(uname -m) in
    x86_64) charm_arch=mpi-linux-x86_64 namd_arch=Linux-x86_64-g++ ;;
    aarch64) charm_arch=mpi-linux-arm8 namd_arch=Linux-ARM64-g++ ;;
    *) echo "build-namd.sh: unsupported machine $(uname -m)" >&2; exit 1 ;;
esac

mpi_prefix=$(spack location --install-dir openmpi)
fftw_prefix=$(spack location --install-dir fftw@3.3.10)
tcl_prefix=$(spack location --install-dir tcl@8.6.12)
export PATH="$mpi_prefix/bin:$PATH"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
jobs=$(nproc)

work=$(mktemp -d /var/tmp/namd-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
tar -xzf "$tarball" -C "$work"
cd "$work/NAMD_${namd_version}_Source"

# Charm++: NAMD ships the release it is tested with; build its MPI flavour
# with the foundation's compiler wrappers.
charm_tar=$(find . -maxdepth 1 -name 'charm-*.tar*' | head -n 1)
if [ -z "$charm_tar" ]; then
    echo "build-namd.sh: no Charm++ tarball in the NAMD source" >&2
    exit 1
fi
tar -xf "$charm_tar"
charm_dir=$(find "$PWD" -maxdepth 1 -type d -name 'charm-*' | head -n 1)
(cd "$charm_dir" && MPICXX=mpicxx MPICC=mpicc \
    ./build charm++ "$charm_arch" --with-production "-j$jobs")

./config "$namd_arch" \
    --charm-base "$charm_dir" --charm-arch "$charm_arch" \
    --with-fftw3 --fftw-prefix "$fftw_prefix" \
    --with-tcl --tcl-prefix "$tcl_prefix"
make -C "$namd_arch" -j "$jobs"

# Install the binaries (namd3 for NAMD 3.x, namd2 before), replacing any
# earlier install of the same version.
rm -rf "$prefix"
install -d "$prefix/bin"
for exe in namd3 namd2 charmrun psfgen flipdcd flipbinpdb sortreplicas; do
    if [ -f "$namd_arch/$exe" ]; then
        install -m 0755 "$namd_arch/$exe" "$prefix/bin/"
    fi
done
namd_exe=$(find "$prefix/bin" -name 'namd[23]' | head -n 1)
if [ -z "$namd_exe" ]; then
    echo "build-namd.sh: the build produced no namd binary" >&2
    exit 1
fi

# NAMD links FFTW and Tcl dynamically without an rpath; the module sets
# the library path, and the foundation's mpirun comes with it.
mkdir -p "$modulefiles_root/namd"
modulefile="$modulefiles_root/namd/$namd_version"
cat > "$modulefile.tmp" <<MODULE
#%Module1.0
## Written by the amimake namd layer (scripts/build-namd.sh).
module-whatis "NAMD $namd_version, CPU build over MPI ($charm_arch), with Open MPI"
conflict namd
prepend-path PATH $mpi_prefix/bin
prepend-path PATH $prefix/bin
prepend-path LD_LIBRARY_PATH $fftw_prefix/lib
prepend-path LD_LIBRARY_PATH $tcl_prefix/lib
setenv NAMD_HOME $prefix
MODULE
mv "$modulefile.tmp" "$modulefile"

# Smoke test: through the module, every shared library resolves.
cd /
# shellcheck disable=SC2016 # expanded by the inner shell
env -u MODULEPATH -u LOADEDMODULES sh -c '
    . /usr/share/modules/init/sh
    module load "namd/$1"
    exe=$(command -v "$2")
    if ldd "$exe" | grep "not found"; then
        echo "build-namd.sh: $exe has unresolved libraries" >&2
        exit 1
    fi
    echo "$exe: all libraries resolve"
' sh "$namd_version" "$(basename "$namd_exe")"

# The image does not need to carry the licensed source.
rm -rf "$src_dir"
