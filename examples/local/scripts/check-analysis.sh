#!/bin/sh
# Fails the layer if NumPy does not import.
set -eu
python3 -c 'import numpy; print("numpy", numpy.__version__)' | tee /etc/hpc/analysis.version
