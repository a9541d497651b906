#!/usr/bin/env bash
# Usage: bash tools/dist_test.sh CONFIG [CHECKPOINT] NUM_PROCESSES [test.py options]
# The checkpoint is optional for training-free models:
#   bash tools/dist_test.sh configs/freecp/sclip_ade.py 8
# One process per GPU (NCCL); without GPUs the processes use gloo on the CPU.
set -e
if [ $# -lt 2 ]; then
    echo "usage: bash $0 CONFIG [CHECKPOINT] NUM_PROCESSES [options of tools/test.py]" >&2
    exit 2
fi
CONFIG=$1
if [[ "$2" =~ ^[0-9]+$ ]]; then
    CHECKPOINT=()
    NPROC=$2
    shift 2
else
    CHECKPOINT=("$2")
    NPROC=$3
    shift 3
fi
TOOLS_DIR=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python}
PYTHONPATH="$TOOLS_DIR/..":${PYTHONPATH} \
"$PYTHON" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" \
    --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --master_port="${PORT:-29500}" \
    --nproc_per_node="$NPROC" \
    "$TOOLS_DIR/test.py" "$CONFIG" "${CHECKPOINT[@]}" --launcher pytorch "$@"
