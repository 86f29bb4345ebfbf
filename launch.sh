#!/usr/bin/env bash
# The one launcher: `selfsup train` on all local GPUs through `accelerate launch`, CPU when
# there is none, several machines through NNODES/NODE_RANK/MASTER_ADDR/MASTER_PORT or SLURM.
#
#   ./launch.sh                                   # the embedded default: SimCLR on digits
#   ./launch.sh recipes/simclr-cifar10.yaml trainer.epochs=100
#   NPROC=2 ./launch.sh                           # 2 processes (CPU processes, gloo, when no GPU)
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 ./launch.sh RECIPE   # on each node
#   srun --nodes=2 --ntasks-per-node=1 ./launch.sh RECIPE                           # under SLURM (one task per node)
#   ACCELERATE_CONFIG=fsdp.yaml ./launch.sh RECIPE                                   # FSDP / DeepSpeed config
#   DRY_RUN=1 NPROC=2 ./launch.sh                 # print the command (and thread setting), run nothing
#   NPROC=2 ./launch.sh transfer detection ENCODER data.root=DIR   # `selfsup transfer` data-parallel (same logic)
#
# Processes per machine: NPROC, else every local GPU, else 1. `trainer.batch_size` stays the
# global batch whatever the process count. Multi-process runs (GPU or CPU) go through
# `accelerate launch --multi_gpu`, i.e. torchrun; without CUDA every process runs on the CPU and
# torch.distributed uses gloo. (`accelerate launch --cpu` starts a single process, so it is
# never used for NPROC > 1.)
set -euo pipefail

# First argument `transfer`: `selfsup transfer TASK ENCODER ...` instead of `selfsup train ...`.
subcommand=train
if [[ "${1:-}" == transfer ]]; then
  subcommand=transfer
  shift
fi

PYTHON="${PYTHON:-python}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

gpus=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)

# The first host of a SLURM node list ("node[01-04,07],gpu7" -> node01): scontrol when there is
# one, else a parser for the common forms (prefix[ranges]suffix, several bracket groups).
first_host() {
  if command -v scontrol >/dev/null 2>&1; then
    scontrol show hostnames "$1" | head -n 1
  else
    sed -E -e 's/^([^,[]*(\[[^]]*\][^,[]*)*).*/\1/' -e 's/\[([^],-]*)[^]]*\]/\1/g' <<<"$1"
  fi
}

# Several machines: SLURM's variables when present (explicit NNODES/NODE_RANK/MASTER_ADDR win),
# else the torchrun-style ones.
nodelist="${SLURM_JOB_NODELIST:-${SLURM_NODELIST:-}}"
if [[ -n "$nodelist" && "${SLURM_NNODES:-1}" -gt 1 ]]; then
  if [[ -n "${SLURM_NTASKS:-}" && "$SLURM_NTASKS" -ne "$SLURM_NNODES" ]]; then
    echo "launch.sh: start one task per node (srun --ntasks-per-node=1 ./launch.sh ...): it starts the" \
         "per-GPU processes itself; this step has SLURM_NTASKS=$SLURM_NTASKS on SLURM_NNODES=$SLURM_NNODES nodes" >&2
    exit 2
  fi
  NNODES="${NNODES:-$SLURM_NNODES}"
  NODE_RANK="${NODE_RANK:-${SLURM_NODEID:?SLURM_NNODES>1 but no SLURM_NODEID: start launch.sh with srun, one task per node}}"
  MASTER_ADDR="${MASTER_ADDR:-$(first_host "$nodelist")}"
fi
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
NPROC="${NPROC:-$(( gpus > 0 ? gpus : 1 ))}"   # processes per machine
total=$(( NPROC * NNODES ))
if (( NPROC < 1 || NNODES < 1 || NODE_RANK < 0 || NODE_RANK >= NNODES )); then
  echo "launch.sh: need NPROC >= 1, NNODES >= 1 and 0 <= NODE_RANK < NNODES (got NPROC=$NPROC NNODES=$NNODES NODE_RANK=$NODE_RANK)" >&2
  exit 2
fi

# CPU processes share the cores: one process per core is faster than every process on all cores.
if [[ "$gpus" -eq 0 && -z "${OMP_NUM_THREADS:-}" && "$total" -gt 1 ]]; then
  cores=$(nproc 2>/dev/null || echo 1)
  export OMP_NUM_THREADS=$(( cores / NPROC > 1 ? cores / NPROC : 1 ))
fi

if [[ "$total" -eq 1 && -z "${ACCELERATE_CONFIG:-}" ]]; then
  cmd=("$PYTHON" -m selfsup "$subcommand" "$@")
else
  args=(--num_machines "$NNODES" --machine_rank "$NODE_RANK" --num_processes "$total"
        --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT")
  if [[ -n "${ACCELERATE_CONFIG:-}" ]]; then
    args=(--config_file "$ACCELERATE_CONFIG" "${args[@]}")
  else
    # precision comes from the recipe (trainer.precision), so accelerate is told "no"
    args+=(--mixed_precision no --dynamo_backend no)
    [[ "$total" -gt 1 ]] && args+=(--multi_gpu)
  fi
  cmd=("$PYTHON" -m accelerate.commands.launch "${args[@]}" -m selfsup "$subcommand" "$@")
fi

if [[ -n "${DRY_RUN:-}" && "${DRY_RUN}" != 0 ]]; then
  [[ -n "${OMP_NUM_THREADS:-}" ]] && echo "OMP_NUM_THREADS=$OMP_NUM_THREADS"
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi
exec "${cmd[@]}"
