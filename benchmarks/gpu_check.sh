#!/usr/bin/env bash
# The checks and figures that need a CUDA GPU, in one run (CI has no GPU; run this on a GPU machine).
#
#   bash benchmarks/gpu_check.sh OUT_DIR [STEP...]
#
# Needs: brainseg's dependencies and MONAI importable (installed, or on PYTHONPATH); run from the
# repository root. Writes OUT_DIR/STEP.log and prints everything; with STEP names, runs only those.
# Steps:
#   tests      tests/gpu (fp16 with loss scaling, bf16, CUDA/CPU agreement of predict, fine-tuning
#              with frozen stages, the planner's GPU memory budget measured);
#   loop       training-loop overhead against a plain PyTorch loop (bench_training_loop.py);
#   window     sliding window against MONAI's sliding_window_inference on the GPU;
#   models     network forward times against MONAI (bench_models.py), cuDNN autotuning off and on;
#   predict    whole-volume prediction by precision and cuDNN autotuning (bench_predict_gpu.py);
#   pretrain   pretrain throughput on 128x128x96 phantoms with the default GPU plan (8 GB budget):
#              bf16 with augmentation on and off, fp16 and fp32 without: steps/s and the share of
#              time spent waiting for data (run_throughput.py);
#   demo       `brainseg demo` end to end on the GPU;
#   compile    training with --compile (last: the first compilation takes minutes).
set -uo pipefail
OUT=${1:?usage: gpu_check.sh OUT_DIR [STEP...]}
shift
ONLY=" $* "
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
status=0
wanted() { [ "$ONLY" = "  " ] || [[ "$ONLY" == *" $1 "* ]]; }
run() {  # run LOG COMMAND...: run, append to OUT/LOG.log, remember a failure
    local name=$1; shift
    echo "=== $name: $*" | tee -a "$OUT/$name.log"
    local t0=$SECONDS
    "$@" 2>&1 | tee -a "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc, $((SECONDS - t0)) s" | tee -a "$OUT/$name.log"
    [ "$rc" -eq 0 ] || status=1
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(), 'bf16', torch.cuda.is_bf16_supported())"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

wanted tests && run tests $PY -m pytest tests/gpu -q -s -p no:cacheprovider -k "not compile"
wanted loop && run loop $PY benchmarks/bench_training_loop.py --device cuda --steps 110 --repeats 3 --patch 64 --batch 2
wanted window && run window $PY benchmarks/bench_sliding_window.py --device cuda --repeats 5
if wanted models; then
    for tune in "" --cudnn-benchmark; do
        run models $PY benchmarks/bench_models.py --device cuda --repeats 5 $tune --only "unet 3d" unet3d "unet 2d" unet2d-classic
    done
fi
wanted predict && run predict $PY benchmarks/bench_predict_gpu.py --repeats 3
if wanted pretrain; then
    $PY -c "from brainseg_cli.data.phantom import write_phantom_dataset as w; w('$work/ph', n_cases=6, seed=0, shape=(128, 128, 96))"
    for variant in "bf16 aug" "bf16 no-aug" "fp16 no-aug" "fp32 no-aug"; do
        set -- $variant
        run pretrain $PY -m brainseg_cli.cli.main pretrain "$work/ph" -o "$work/run_$1_$2" --device cuda \
            --precision "$1" --"$2" --epochs 3 --iterations 60 --val-cases 1 --workers 8 --seed 0
        run pretrain $PY benchmarks/run_throughput.py "$work/run_$1_$2"
    done
fi
wanted demo && run demo $PY -m brainseg_cli.cli.main demo -o "$work/demo"
wanted compile && run compile $PY -m pytest tests/gpu -q -s -p no:cacheprovider -k compile
exit $status
