#!/usr/bin/env bash
# STEER on Qwen2.5-Math-1.5B inside verl 0.9.1, 8 GPUs on one node. Edit the three paths, then: bash run.sh
#
# Setup (once), in a verl 0.9.1 GPU environment (e.g. `pip install "verl[vllm]==0.9.1"`):
#   pip install "entropy-rl[verl]"        # its verl plugin registers entropy_rl.<method> in every verl process
#   python verl/examples/data_preprocess/math_dataset.py --local_save_dir "$DATA_DIR"   # verl's repository script
# Afterwards: entropy-rl report "$VERL_FILE_LOGGER_ROOT/entropy_rl_verl/steer_qwen2.5_math_1.5b.jsonl"
set -euo pipefail
export MODEL_PATH=${MODEL_PATH:-Qwen/Qwen2.5-Math-1.5B}       # or a local copy of the model
export DATA_DIR=${DATA_DIR:-$HOME/data/math}                 # holds train.parquet and test.parquet
export VERL_FILE_LOGGER_ROOT=${VERL_FILE_LOGGER_ROOT:-$HOME/verl_logs}
cd "$(dirname "$0")"
python3 -m verl.trainer.main_ppo --config-path="$PWD" --config-name=steer_qwen2.5_math_1.5b "$@"
