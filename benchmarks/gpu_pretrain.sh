#!/usr/bin/env bash
# ~125M Llama, bf16, one GPU, 300 steps: lmrecipes' throughput figures (steady-state tokens/s median and p10/p90,
# warm-up and first step apart, MFU with its FLOPs/token and peak, peak memory, data wait, attention kernel, TF32),
# then the same model under a stock Trainer (benchmarks/stock_trainer_baseline.py). Offline, on the embedded corpus;
# planned to take under 8 minutes on one H100, tokenizer training and compile included (not yet run on a GPU).
#
#   STEPS=300 bash benchmarks/gpu_pretrain.sh [--key value ...]     # steps of both runs; flags go to pretrain.py
#
# On a GPU machine without network or without datasets/evaluate/transformers: fetch wheels for its Python here
# first (bash benchmarks/gpu_pretrain.sh --fetch-wheels, into .whl/, ~25 MB), carry .whl to the machine, and run
# this script there: it installs them into /tmp/site when `import datasets` fails. torch must be there already.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    target_python=${GPU_PYTHON_VERSION:-3.12}
    rm -rf .whl && mkdir -p .whl
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version "$target_python" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl transformers==5.24.0 accelerate==1.15.0 datasets==5.2.0 tokenizers==0.23.3 safetensors \
        huggingface_hub==2.4.0 hf-xet pyyaml regex tqdm packaging psutil numpy dill multiprocess xxhash \
        fsspec filelock pyarrow pandas python-dateutil pytz tzdata six httpx httpcore h11 anyio idna certifi \
        sniffio typing_extensions shellingham typer click rich markdown-it-py mdurl pygments annotated-doc
    du -sh .whl
    exit 0
fi

if ! $PY -c "import datasets, transformers, accelerate" 2>/dev/null; then
    [[ -d .whl ]] || { echo "error: datasets/transformers missing and no .whl folder (see --fetch-wheels)" >&2; exit 2; }
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# one process, one GPU: plain python on a multi-GPU node would drive them all through nn.DataParallel (refused)
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=true
$PY -c "import torch; print('torch', torch.__version__, 'GPU', torch.cuda.get_device_name(0))"
STEPS=${STEPS:-300}
$PY scripts/pretrain.py recipes/llama-125m/pretrain-gpu-benchmark.yaml --overwrite_output_dir true --max_steps "$STEPS" "$@"
$PY - <<'PYEOF'
import json
r = json.load(open("runs/llama-125m/gpu-benchmark/all_results.json"))
print("lmrecipes on", r.get("hardware"))
for key in ("train_tokens", "train_tokens_per_second", "train_tokens_per_second_p10", "train_tokens_per_second_p90",
            "train_tokens_per_second_per_device", "train_tokens_per_second_whole_loop", "mfu",
            "mfu_flops_per_token", "mfu_peak_flops_per_device", "mfu_peak_source", "first_step_seconds",
            "warmup_steps", "warmup_seconds", "throughput_windows", "data_wait_fraction", "peak_memory_gb",
            "attention_kernel", "tf32", "eval_loss", "bits_per_byte"):
    if key in r:
        print(f"  {key:36} {r[key]}")
PYEOF
# the same model, batch, precision and compile under a stock Trainer (run_clm.py's data path), on the tokenizer
# the run above trained
$PY benchmarks/stock_trainer_baseline.py runs/llama-125m/gpu-benchmark --max_steps "$STEPS"
