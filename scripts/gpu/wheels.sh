#!/usr/bin/env bash
# Python wheels that the GPU machine's image lacks (issue 16), for CPython 3.12 x86-64, into the
# ignored folder .gpu-wheels (~7 MB) that travels with `device run --carry .gpu-wheels`:
# nibabel, the voxelmorph package (the benchmark's peer) and snakemake 9.15 with the dependencies
# the image lacks (pulp without its 16 MB of bundled CBC binaries: the study runs
# `--scheduler greedy`; connection-pool is an sdist, zipped as it is).
set -euo pipefail
cd "$(dirname "$0")/../.."
P=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp
   --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
   --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64)
W=${VTN_GPU_WHEELS:-.gpu-wheels}
mkdir -p "$W"
python3 -m pip download -q "${P[@]}" -d "$W" nibabel==5.4.2 voxelmorph==0.3.4 neurite==0.3.4 \
    pystrum==0.2 snakemake==9.15.0 appdirs==1.4.4 argparse-dataclass==2.0.0 conda-inject==1.3.2 \
    configargparse==1.9.0 docutils==0.23 dpath==2.2.0 fastjsonschema==2.22.3 gitdb==4.0.12 \
    gitpython==3.2.1 humanfriendly==10.0 immutables==0.21 jsonschema==4.26.0 \
    jsonschema-specifications==2025.9.1 jupyter-core==5.9.1 nbformat==5.11.1 \
    platformdirs==4.14.9 referencing==0.37.0 reretry==0.11.8 rpds-py==2026.9.1 \
    smart-open==7.7.1 smmap==5.0.3 snakemake-interface-common==1.24.1 \
    snakemake-interface-executor-plugins==9.4.0 snakemake-interface-logger-plugins==2.1.0 \
    snakemake-interface-report-plugins==1.3.0 snakemake-interface-scheduler-plugins==2.0.2 \
    snakemake-interface-storage-plugins==4.4.1 tenacity==9.2.1 throttler==1.2.3 \
    traitlets==5.16.1 yte==1.9.4
tmp=$(mktemp -d)
python3 -m pip download -q --no-deps -d "$tmp" pulp==3.3.2
python3 -m pip download -q --no-deps --no-binary :all: -d "$tmp" connection-pool==0.0.3
W=$(cd "$W" && pwd)
(cd "$tmp" && mkdir pulp-x && cd pulp-x && unzip -q ../pulp-3.3.2-*.whl \
   && rm -rf pulp/solverdir/cbc pulp/tests && zip -qr "$W/pulp-trimmed.zip" .)
(cd "$tmp" && tar xzf connection_pool-0.0.3.tar.gz && cd connection_pool-0.0.3 \
   && zip -qr "$W/connection_pool.zip" connection_pool*)
rm -rf "$tmp"
du -sh "$W"
