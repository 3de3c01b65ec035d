#!/usr/bin/env bash
# One prepared GPU check, <= 8 minutes on one H100-class GPU: the step benchmarks at Pythia-70m and
# Pythia-410m sizes, end-to-end training throughput from a real cache, the probe benchmark and a tiny
# study through the real Snakemake, each printing its ratios and tokens/s. Run from the repository root:
#
#   bash benchmarks/gpu_check.sh                 # CUDA; results in gpu_check/ (JSON + logs + summary.txt)
#   DEVICE=cpu QUICK=1 bash benchmarks/gpu_check.sh   # the same steps at toy sizes, to check the script
#
# PYTHON (default: .venv/bin/python if present, else python3) must have torch with CUDA and the
# project's dependencies; the package is taken from src/ (PYTHONPATH), so no install is needed.
# Each step has its own time limit; a step that fails or times out is reported and the rest still run.
# The goal to compare against (issue 16): >= 1M tokens/s JSAE-pair training from cache at Pythia-70m sizes.
set -u
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
OUT=${GPU_CHECK_OUT:-gpu_check}
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=$PWD/.venv/bin/python; else PYTHON=python3; fi
fi
command -v "$PYTHON" >/dev/null || { echo "gpu_check: PYTHON=$PYTHON is not an executable; expected a Python with torch" >&2; exit 2; }
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }

if [ "$DEVICE" = cuda ]; then
  if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: torch in $PYTHON sees no CUDA device; expected a CUDA machine (or DEVICE=cpu QUICK=1 to check the script)" >&2
    exit 2
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /' | tee -a "$SUMMARY"
fi
"$PYTHON" -c 'import torch, platform; print(f"torch {torch.__version__}, python {platform.python_version()}, cuda {torch.version.cuda}")' | tee -a "$SUMMARY"

# sizes: Pythia-70m (d 512, d_mlp 2048, expansion 32) and Pythia-410m (d 1024, d_mlp 4096, expansion 64), k 32
if [ "$QUICK" = 1 ]; then
  S70="--d 64 --d-mlp 256 --expansion 4 --k 8"; S410="--d 64 --d-mlp 256 --expansion 8 --k 8"
  T70="256"; T410="256"; REP=1; TRAIN_ARGS="--sizes default-study --steps 4 --batch-size 256"
  PROBE_ARGS="--d 32 --d-mlp 128 --n-latents 256 --k 8 --samples 256 --loop-samples 16 --rounds 1"
else
  S70="--d 512 --d-mlp 2048 --expansion 32 --k 32"; S410="--d 1024 --d-mlp 4096 --expansion 64 --k 32"
  T70="4096 16384"; T410="4096"; REP=5; TRAIN_ARGS="--sizes pythia-70m --steps 40 --batch-size 16384"
  PROBE_ARGS="--d 512 --d-mlp 2048 --n-latents 16384 --k 32 --samples 16384 --loop-samples 64 --rounds 3"
fi

failed=0
step() {  # step NAME SECONDS CMD...: run with a limit, log to $OUT/NAME.log, note failure
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  say "== $name (limit ${limit}s)"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$OUT/$name.log"
  if [ $rc -ne 0 ]; then say "!! $name failed (exit $rc; 124 = timed out): see $OUT/$name.log"; failed=$((failed + 1)); fi
  say "   $name took $((SECONDS - t0)) s"
}

step step_pythia70m 120 "$PYTHON" benchmarks/bench_step.py $S70 --tokens $T70 --repeats $REP --device "$DEVICE" \
  --json "$OUT/step_pythia70m.json"
step step_pythia410m 120 "$PYTHON" benchmarks/bench_step.py $S410 --tokens $T410 --repeats $REP --device "$DEVICE" \
  --json "$OUT/step_pythia410m.json"
step train_throughput 120 "$PYTHON" benchmarks/bench_train.py $TRAIN_ARGS --device "$DEVICE" --json "$OUT/train.json"
step probes 60 "$PYTHON" benchmarks/bench_probes.py $PROBE_ARGS --device "$DEVICE"

# the tiny study, in a scratch copy of the working tree so results/ here is untouched
WORK=$(mktemp -d)
tar --exclude=./results --exclude=./.venv --exclude=./.snakemake --exclude="./$OUT" --exclude=./.git -cf - . | (cd "$WORK" && tar -xf -)
SMK="$(command -v "$PYTHON") -m snakemake"
STUDY_CFG="--configfile config/config.yaml benchmarks/gpu_tiny.yaml"
if [ "$QUICK" = 1 ]; then  # toy budgets, only to check that the study runs
  printf '%s\n' "models: [{name: tiny-neox, source: pretrain, layers: [1], pretrain: {hidden: 64, layers: 2, vocab_size: 4096, context_length: 64, max_steps: 20, minutes: 5}}]" \
    "cache: {train_tokens: 16384, eval_tokens: 4096, context_length: 64}" "train: {n_tokens: 16384, batch_size: 512}" \
    "evaluate: {n_tokens: 2048, ce_tokens: 2048}" "probes: {enabled: true, n_sweeps: 50, lambdas: [0, 1]}" >"$WORK/quick.yaml"
  STUDY_CFG="$STUDY_CFG quick.yaml"
fi
STUDY_CFG="$STUDY_CFG --config device=$DEVICE"
step tiny_study 180 bash -c "cd '$WORK' && $SMK results/summary.md --cores all --resources gpu=1 $STUDY_CFG"
if [ -f "$WORK/results/summary.md" ]; then
  cp "$WORK/results/summary.md" "$OUT/tiny_study_summary.md"
  grep -h "tokens_per_second\|tok/s" "$WORK"/results/logs/train/*.log 2>/dev/null | tail -n 4 | tee -a "$SUMMARY"
fi
rm -rf "$WORK"

say "== gpu_check done: $failed step(s) failed; results in $OUT/"
exit $((failed > 0))
