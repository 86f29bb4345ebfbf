#!/usr/bin/env bash
# The one launcher: `selfsup train` on all local GPUs through `accelerate launch`, CPU when
# there is none, several machines through NNODES/NODE_RANK/MASTER_ADDR/MASTER_PORT or SLURM.
#
#   ./launch.sh                                   # the embedded default: SimCLR on digits
#   ./launch.sh recipes/simclr-cifar10.yaml trainer.epochs=100
#   NPROC=2 ./launch.sh                           # 2 processes (CPU processes when no GPU)
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 ./launch.sh RECIPE   # on each node
#   srun --nodes=2 --ntasks-per-node=1 ./launch.sh RECIPE                           # under SLURM
#   ACCELERATE_CONFIG=fsdp.yaml ./launch.sh RECIPE                                   # FSDP / DeepSpeed config
set -euo pipefail

PYTHON="${PYTHON:-python}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

gpus=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)

# Several machines: SLURM's variables when present, else the torchrun-style ones.
if [[ -n "${SLURM_JOB_NODELIST:-}" && -n "${SLURM_NNODES:-}" && "${SLURM_NNODES}" -gt 1 ]]; then
  NNODES="${NNODES:-$SLURM_NNODES}"
  NODE_RANK="${NODE_RANK:-$SLURM_NODEID}"
  MASTER_ADDR="${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}"
fi
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
NPROC="${NPROC:-$(( gpus > 0 ? gpus : 1 ))}"   # processes per machine

if [[ "$NNODES" -eq 1 && "$NPROC" -eq 1 && -z "${ACCELERATE_CONFIG:-}" ]]; then
  exec "$PYTHON" -m selfsup train "$@"
fi

args=(--num_machines "$NNODES" --machine_rank "$NODE_RANK" --num_processes "$(( NPROC * NNODES ))"
      --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT")
if [[ -n "${ACCELERATE_CONFIG:-}" ]]; then
  args=(--config_file "$ACCELERATE_CONFIG" "${args[@]}")
else
  args+=(--mixed_precision no --dynamo_backend no)
  [[ "$gpus" -eq 0 ]] && args+=(--cpu)
  [[ "$NPROC" -gt 1 || "$NNODES" -gt 1 ]] && args+=(--multi_gpu)
fi
exec "$PYTHON" -m accelerate.commands.launch "${args[@]}" -m selfsup train "$@"
