#!/bin/sh
# Fails the layer if GROMACS does not run; records its version.
set -eu
gmx --version 2>/dev/null | head -n 5 > /etc/hpc/gromacs.version
grep -q "GROMACS" /etc/hpc/gromacs.version
echo "gromacs ok: $(grep -m1 'GROMACS version' /etc/hpc/gromacs.version)"
