#!/usr/bin/env bash
# Usage: bash tools/dist_train.sh CONFIG NUM_PROCESSES [train.py options]
# One process per GPU (NCCL); on a machine without GPUs the processes use
# gloo on the CPU. Multi-node: set NNODES, NODE_RANK, MASTER_ADDR, PORT.
set -e
if [ $# -lt 2 ]; then
    echo "usage: bash $0 CONFIG NUM_PROCESSES [options of tools/train.py]" >&2
    exit 2
fi
CONFIG=$1
NPROC=$2
TOOLS_DIR=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python}
PYTHONPATH="$TOOLS_DIR/..":${PYTHONPATH} \
"$PYTHON" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" \
    --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --master_port="${PORT:-29500}" \
    --nproc_per_node="$NPROC" \
    "$TOOLS_DIR/train.py" "$CONFIG" --launcher pytorch "${@:3}"
