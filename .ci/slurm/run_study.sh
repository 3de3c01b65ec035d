#!/usr/bin/env bash
# The real SLURM check: a tiny jsae study (.ci/slurm/tiny.yaml on top of config/config.yaml) submitted by
# Snakemake's SLURM executor with the project's profile (profiles/slurm), every job logging to an MLflow
# tracking server this script starts on localhost. Needs a running cluster (.ci/slurm/up.sh).
#
#   .ci/slurm/run_study.sh            # exit 0: every check passed
#   .ci/slurm/run_study.sh --check DIR   # only the checks, on a kept run (DIR as printed: "kept DIR")
#
# It runs in a fresh copy of the working tree (tracked and untracked files that git does not ignore: no
# results/, no .venv), with the repository's .venv (JSAE_VENV to use another) and PYTHONPATH=<copy>/src so
# the jobs run the copy's code. Then it checks: Snakemake finished; the study's outputs exist; `sacct` lists
# every submitted job as COMPLETED (jobs that claim `gpu=1` on the `gpu` partition with gres/gpu=1); the
# MLflow server holds the study run and one child run per pair with its parameters and evaluation metrics.
# Prints the wall time. The copy is removed on success (JSAE_SLURM_KEEP=1 keeps it) and kept on failure.
#
# Check-only settings on top of the profile (command line; the profile itself is used unchanged):
#   --max-threads 1       the profile asks 4 CPUs for each model-running rule; this machine may have 2
#   --slurm-init-seconds-before-status-checks 5   the plugin's default, 40 s, suits hour-long jobs; the
#                         tiny study's jobs take seconds, and each of its ~8 levels would wait that long
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${JSAE_VENV:-$REPO/.venv}
say() { printf '[slurm check] %s\n' "$*"; }
fail() { printf '[slurm check] FAILED: %s\n' "$*" >&2; exit 1; }

CHECK_ONLY=""
if [ "${1:-}" = --check ]; then
    CHECK_ONLY=${2:?usage: run_study.sh --check DIR}
    [ -f "$CHECK_ONLY/snakemake.log" ] || fail "$CHECK_ONLY/snakemake.log not found: not a kept run"
fi

t0=$(date +%s)
[ -x "$VENV/bin/snakemake" ] || fail "no snakemake in $VENV (make venv; pip install -e '.[slurm]')"
"$VENV/bin/python" -c "import snakemake_executor_plugin_slurm" 2>/dev/null \
    || fail "the SLURM executor plugin is not installed in $VENV (pip install -e '.[slurm]')"
sinfo -h >/dev/null 2>&1 || fail "no SLURM cluster answers (sinfo); start one with: sudo .ci/slurm/up.sh"
say "cluster: $(sinfo -h -N -o '%N %T %c CPUs %m MB %G' | head -1), partitions $(sinfo -h -o '%P' | tr '\n' ' ')"

if [ -n "$CHECK_ONLY" ]; then WORK=$(cd "$CHECK_ONLY" && pwd); else
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/jsae-slurm-check.XXXXXX"); fi
MLFLOW_PID=""
cleanup() {
    local rc=$?
    if [ -n "$MLFLOW_PID" ]; then kill -TERM -- "-$MLFLOW_PID" 2>/dev/null || true; fi
    if [ "$rc" -eq 0 ] && [ "${JSAE_SLURM_KEEP:-0}" != 1 ] && [ -z "$CHECK_ONLY" ]; then rm -rf "$WORK"
    else say "kept $WORK"; fi
}
trap cleanup EXIT

# ------------------------------------------------------------------------------------------ the copy
if [ -z "$CHECK_ONLY" ]; then
    say "copying the working tree to $WORK/repo"
    mkdir -p "$WORK/repo"
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
        | tar --null -T - -cf -) | tar -xf - -C "$WORK/repo"
fi

# ------------------------------------------------------------------------------------------ MLflow server
# a free port; --check reuses the run's (the URI is part of the jobs' params: another would make them outdated)
if [ -n "$CHECK_ONLY" ] && [ -s "$WORK/mlflow_port" ]; then PORT=$(cat "$WORK/mlflow_port"); else
    PORT=$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    echo "$PORT" >"$WORK/mlflow_port"
fi
export JSAE_MLFLOW_URI="http://127.0.0.1:$PORT"   # profiles/slurm reads it: mlflow.tracking_uri of the study
export MLFLOW_DISABLE_TELEMETRY=true HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$WORK/mlflow-server"
say "starting mlflow server at $JSAE_MLFLOW_URI (store $WORK/mlflow-server)"
setsid nice -n 19 "$VENV/bin/mlflow" server --host 127.0.0.1 --port "$PORT" --workers 1 \
    --backend-store-uri "sqlite:///$WORK/mlflow-server/mlflow.db" \
    --artifacts-destination "$WORK/mlflow-server/artifacts" >"$WORK/mlflow-server/server.log" 2>&1 &
MLFLOW_PID=$!
for _ in $(seq 600); do            # starting takes ~10 s idle; minutes at nice 19 on busy cores
    "$VENV/bin/python" -c "import urllib.request as u; u.urlopen('$JSAE_MLFLOW_URI/health', timeout=2)" \
        2>/dev/null && break
    kill -0 "$MLFLOW_PID" 2>/dev/null || fail "mlflow server exited: $(tail -5 "$WORK/mlflow-server/server.log")"
    sleep 1
done
"$VENV/bin/python" -c "import urllib.request as u; u.urlopen('$JSAE_MLFLOW_URI/health', timeout=2)" 2>/dev/null \
    || fail "mlflow server not answering at $JSAE_MLFLOW_URI after 600 s (log: $WORK/mlflow-server/server.log)"

# ------------------------------------------------------------------------------------------ the study
cd "$WORK/repo"
export PYTHONPATH="$WORK/repo/src${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "$CHECK_ONLY" ]; then
    date +%Y-%m-%dT%H:%M:%S >"$WORK/started"
    cmd=(nice -n 19 "$VENV/bin/snakemake" all --workflow-profile profiles/slurm
         --configfile config/config.yaml .ci/slurm/tiny.yaml
         --max-threads 1 --slurm-init-seconds-before-status-checks 5)
    say "running: ${cmd[*]}"
    t_study=$(date +%s)
    if ! "${cmd[@]}" >"$WORK/snakemake.log" 2>&1; then
        tail -40 "$WORK/snakemake.log" >&2
        fail "snakemake exited non-zero (log: $WORK/snakemake.log)"
    fi
    study_s=$(( $(date +%s) - t_study ))
    echo "$study_s" >"$WORK/study_seconds"
    say "snakemake finished in ${study_s} s"
fi
start_iso=$(cat "$WORK/started")
study_s=$(cat "$WORK/study_seconds" 2>/dev/null || echo "?")

# ------------------------------------------------------------------------------------------ checks
run_id=$(sed -nE 's/.*SLURM run ID: ([0-9a-f-]+).*/\1/p' "$WORK/snakemake.log" | head -1)
[ -n "$run_id" ] || fail "no 'SLURM run ID' in the Snakemake log: did it use the slurm executor?"
submitted=$(grep -c "has been submitted with SLURM jobid" "$WORK/snakemake.log" || true)
say "SLURM run ID $run_id, $submitted jobs submitted"
[ "$submitted" -ge 12 ] || fail "expected 12 submitted jobs, found $submitted"

for f in results/summary.md results/summary.csv results/claims.csv results/figures/fig5.pdf results/figures/fig5.png \
         results/tracking/store.json results/tracking/study_run.json results/models/tiny-neox/pretrain.json \
         results/eval/tiny-neox/L1/trained/lam0/seed0/evaluation.json \
         results/eval/tiny-neox/L1/trained/lam1/seed0/evaluation.json \
         results/runs/tiny-neox/L1/trained/lam1/seed0/sae_out/sae_weights.safetensors; do
    [ -s "$f" ] || fail "missing output $f"
done
nice -n 19 "$VENV/bin/snakemake" all -n --workflow-profile profiles/slurm \
    --configfile config/config.yaml .ci/slurm/tiny.yaml >"$WORK/dryrun.log" 2>&1 || fail "dry run after the study failed"
grep -q "Nothing to be done" "$WORK/dryrun.log" || fail "a re-run would still do work: $(tail -5 "$WORK/dryrun.log")"
say "outputs present; a re-run has nothing to do"

# sacct: every job of this run COMPLETED; the model-running ones on `gpu` with one GPU each. The slurmdbd
# record can lag the job's end by a moment: retry for up to 30 s.
for _ in $(seq 30); do
    sacct -X -n -P --starttime "$start_iso" --name "$run_id" \
        -o JobIDRaw,Partition,State,ExitCode,Elapsed,AllocCPUS,ReqMem,AllocTRES,Comment%80 >"$WORK/sacct.txt"
    [ "$(grep -c . "$WORK/sacct.txt")" -ge "$submitted" ] && ! grep -qv "|COMPLETED|" "$WORK/sacct.txt" && break
    sleep 1
done
say "sacct -X (JobID|Partition|State|ExitCode|Elapsed|CPUs|ReqMem|AllocTRES|Comment = rule and wildcards):"
sed 's/^/    /' "$WORK/sacct.txt"
n_jobs=$(grep -c . "$WORK/sacct.txt" || true)
n_done=$(grep -c "|COMPLETED|" "$WORK/sacct.txt" || true)
[ "$n_jobs" -eq "$submitted" ] || fail "sacct lists $n_jobs jobs of run $run_id, Snakemake submitted $submitted"
[ "$n_done" -eq "$n_jobs" ] || fail "$((n_jobs - n_done)) of $n_jobs jobs are not COMPLETED in sacct"
n_gpu=$(grep -c "|gpu|.*gres/gpu=1" "$WORK/sacct.txt" || true)
[ "$n_gpu" -ge 7 ] || fail "expected the 7 model-running jobs (pretrain, 2 cache, 2 train, 2 evaluate) on the gpu \
partition with gres/gpu=1; found $n_gpu"
say "sacct: $n_done/$n_jobs COMPLETED, $n_gpu on the gpu partition with one GPU each"
# what the jobs cost: CPU time, and the memory of their steps (the batch script's Snakemake; the job step,
# i.e. the job's Snakemake and the rule's command)
sacct -n -P --starttime "$start_iso" --name "$run_id" -o JobIDRaw,Elapsed,TotalCPU,MaxRSS >"$WORK/sacct_steps.txt"
"$VENV/bin/python" - "$WORK/sacct_steps.txt" <<'EOF'
import sys


def seconds(t):  # [D-][HH:]MM:SS[.mmm]
    days, _, t = t.rpartition("-")
    parts = [float(x) for x in t.split(":")]
    parts = [0.0] * (3 - len(parts)) + parts
    return int(days or 0) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]


def mb(rss):  # 365840K
    units = {"K": 1e-3, "M": 1.0, "G": 1e3}
    return float(rss[:-1]) * units[rss[-1]] if rss and rss[-1] in units else float(rss or 0) / 1e6


rows = [line.strip().split("|") for line in open(sys.argv[1]) if line.strip()]
jobs = [r for r in rows if "." not in r[0]]
batch = [mb(r[3]) for r in rows if r[0].endswith(".batch")]
step = [mb(r[3]) for r in rows if r[0].endswith(".0")]
batch, step = [x for x in batch if x > 0], [x for x in step if x > 0]  # 0: not sampled (JobAcctGatherFrequency)
rss = (f"batch step (Snakemake) {min(batch):.0f}-{max(batch):.0f} MB" if batch else "batch step not sampled") + (
    f", job step (Snakemake + the rule's command) up to {max(step):.0f} MB" if step else ", job step not sampled")
print(f"[slurm check] the jobs used {sum(seconds(r[2]) for r in jobs):.0f} CPU s ({len(jobs)} jobs, summed elapsed "
      f"{sum(seconds(r[1]) for r in jobs):.0f} s); MaxRSS: {rss}")
EOF

# MLflow: the study's parent run and one child per pair, with params and evaluation metrics, on the server
"$VENV/bin/python" - "$JSAE_MLFLOW_URI" <<'PY' || fail "the MLflow server does not hold the study's runs"
import sys

from mlflow.tracking import MlflowClient

client = MlflowClient(sys.argv[1])
exp = client.get_experiment_by_name("jsae-slurm-check")
assert exp is not None, "no experiment jsae-slurm-check on the server"
runs = client.search_runs([exp.experiment_id])
by_name = {r.info.run_name: r for r in runs}
parent = by_name.get("study/jsae-slurm-check")
assert parent is not None, f"no study run; runs: {sorted(by_name)}"
children = sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
                  key=lambda r: r.info.run_name)
names = sorted(r.info.run_name for r in children)
assert names == ["tiny-neox/L1/trained/lam0/seed0", "tiny-neox/L1/trained/lam1/seed0"], names
for r in children:
    assert r.info.status == "FINISHED", (r.info.run_name, r.info.status)
    assert {"lambda", "layer", "model", "seed", "k", "n_latents"} <= set(r.data.params), r.data.params
    # training and evaluation both logged to the pair's run (the tiny model's CE score itself is refused: its
    # zero-ablation costs too few nats, so eval/ce/score_mean is absent; the CE losses are there)
    for key in ("train/loss", "eval/in/explained_variance", "eval/jac/l1", "eval/ce/clean"):
        assert key in r.data.metrics, (r.info.run_name, key, sorted(r.data.metrics))
print(f"[slurm check] MLflow at {sys.argv[1]}: study run {parent.info.run_id} with {len(children)} child runs "
      f"({', '.join(names)}), lambda = {[r.data.params['lambda'] for r in children]}, "
      f"eval/jac/l1 = {[round(r.data.metrics['eval/jac/l1'], 4) for r in children]}")
PY

total_s=$(( $(date +%s) - t0 ))
say "PASSED: $submitted SLURM jobs COMPLETED, outputs and MLflow runs present"
if [ -z "$CHECK_ONLY" ]; then say "wall time: study ${study_s} s (snakemake, $submitted jobs), whole check ${total_s} s"
else say "wall time of that run's study: ${study_s} s; these checks ${total_s} s"; fi
