#!/usr/bin/env bash
# The one prepared run for a lent CUDA machine (a session gets about 15 minutes of one, start included):
# everything edgesr wants from a GPU, in one command that ends inside its time limit.
#
#   1. `edgesr export target=gpu-torch` (verified on CUDA) and `edgesr bench device=gpu-torch` for the
#      teachers and students, alone on the machine so that the timings are clean;
#   2. the CUDA tests (pytest -m gpu), beside
#   3. a 60-step probe of each GPU distillation (JOBS below), from which each job's steps are sized to
#      the time left, so that its learning-rate schedule runs to its end rather than being cut off;
#   4. the distillations themselves, side by side on the one GPU, each with a recipe-level deadline.
#
# Every compress run's folder comes back as a tarball; `edgesr compress recipe=R out=DIR resume=true`
# on a CPU machine then reuses the finished stage (its fingerprint leaves out steps and the device) and
# writes the report with the CPU runtimes' timings. A run stopped at the deadline keeps its last/
# checkpoint: resume=true continues it wherever it is run.
#
# What travels (the device tool sends the checkout, 64 MiB at most; runs/ is 30 MiB of it, so move it
# aside for the call and back after; `bash benchmarks/gpu_prepare.sh` makes both files and says how):
#   .devdata/data.tar.xz   the prepared data set (`tar -cf - v2 | xz -6 -T2` in its root, 16 MiB), so the
#                          stages see the same fingerprint as on the CPU machine
#   .whl/                  what the machine's image lacks (python3.12 wheels: omegaconf, pydicom, nibabel,
#                          torch-pruning, sigpy, PyWavelets; README of the device tool says how)
# both named in .git/info/exclude and in the call's carry.
#
# Knobs (environment): BUDGET_S (seconds the script may take, 560), STEPS (skip the probes: every job this
# many steps), EXPORTS, BENCH_MODELS (space-separated; empty: none), JOBS_SPEC ("name|recipe|overrides;...").
#
# Ran 2026-11-30 on an H200 (torch 2.11+cu130): README, "Measured on a CUDA GPU".
#
# Usage on the device machine:  OUT=... bash benchmarks/gpu_session.sh
# A dry run of the plumbing on a CPU: EDGESR_DEVICE=cpu PROBE_STEPS=2 MIN_STEPS=2 MAX_STEPS=4 PY=.venv/bin/python WHEELS=0
#                                      OUT=/tmp/gs bash benchmarks/gpu_session.sh
set -u -o pipefail
OUT=${OUT:-/tmp/edgesr-gpu-session}
PY=${PY:-python3}
DEVICE=${EDGESR_DEVICE:-cuda}
PROBE_STEPS=${PROBE_STEPS:-60}
MIN_STEPS=${MIN_STEPS:-200} MAX_STEPS=${MAX_STEPS:-100000}
STEPS=${STEPS:-}  # given: every job runs this many steps, without the probes
EXPORTS=${EXPORTS-rdn-mr-x2-edge}
BENCH_MODELS=${BENCH_MODELS-rdn-mr-x2 rdn-mr-x2-edge modl-r4 modl-r4-edge deepcomplex-r4}
START=$(date +%s)
DEADLINE=$((START + ${BUDGET_S:-560}))
WORK=/tmp/edgesr-gpu-work
LOGS=$WORK/logs
mkdir -p "$OUT" "$LOGS"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
log() { echo "[$(date +%T) +$(($(date +%s) - START))s] $*" | tee -a "$OUT/session.log"; }

# The machine's image lacks a few pure-Python packages: carried as wheels in .whl/ (device README).
if [ "${WHEELS:-1}" = 1 ] && compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
        || { log "wheel install failed"; exit 1; }
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
# The prepared data set (fingerprint in its manifest), carried as .devdata/data.tar.xz.
if [ -f .devdata/data.tar.xz ]; then
    mkdir -p /tmp/edgesr-data && tar -xJf .devdata/data.tar.xz -C /tmp/edgesr-data && export EDGESR_DATA=/tmp/edgesr-data
fi
{ nvidia-smi 2>&1 | head -15; "$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"
  nproc; free -g | head -2; } >"$LOGS/machine.txt" 2>&1
log "set up; data at ${EDGESR_DATA:-default}"

# 1. Export and bench, alone on the machine.
edgesr() { "$PY" -m edgesr "$@"; }
if [ "$DEVICE" != cpu ]; then
    for model in $EXPORTS; do
        edgesr export model=$model target=gpu-torch out="$WORK/export/$model" >>"$LOGS/bench.log" 2>&1 \
            && log "export $model gpu-torch: ok" || log "export $model gpu-torch: FAILED (bench.log)"
    done
    for model in $BENCH_MODELS; do
        timeout 60 "$PY" -m edgesr bench model=$model device=gpu-torch out="$WORK/bench/$model" >>"$LOGS/bench.log" 2>&1 \
            && log "bench $model: ok" || log "bench $model: FAILED (bench.log)"
    done
    artifact=$(dirname "$(find "$WORK/export/rdn-mr-x2-edge" -path '*bf16*' -name manifest.json 2>/dev/null | head -1)")
    [ "$artifact" != . ] && { timeout 60 "$PY" -m edgesr bench artifact="$artifact" device=gpu-torch \
        out="$WORK/bench/rdn-mr-x2-edge-artifact" >>"$LOGS/bench.log" 2>&1 && log "bench artifact: ok" || log "bench artifact: FAILED"; }
fi

# A compress run ends with its report (every model scored and timed, the recon baselines too); here only
# its stages are wanted: the run is stopped once its last stage is saved, and the report is written later
# on the machine the student is for.
stages_only() {  # stages_only DIR LOG ARGS...: edgesr compress ... out=DIR, stopped after its stages
    local dir=$1 logfile=$2
    shift 2
    "$PY" -m edgesr compress out="$dir" "$@" >"$logfile" 2>&1 &
    local pid=$!
    while kill -0 $pid 2>/dev/null; do
        if compgen -G "$dir/1-*/stage.json" >/dev/null || [ "$(date +%s)" -ge $((DEADLINE - 15)) ]; then
            sleep 1
            kill $pid 2>/dev/null
            break
        fi
        sleep 2
    done
    wait $pid 2>/dev/null
}

# 2. + 3. The CUDA tests beside the probes.
if [ "$DEVICE" != cpu ]; then
    (timeout 240 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests/train/test_gpu.py tests/bench/test_harness.py \
        >"$LOGS/gpu_tests.log" 2>&1; echo "exit $?" >>"$LOGS/gpu_tests.log") &
fi
# name | recipe | overrides (the recipe's own steps/eval_every are replaced)
# The defaults are the next measurements issue 11 wants (benchmarks/RESULTS.md, `deepcomplex_r4_edge` and `modl-r4-edge`):
# DeepcomplexMRI pruned to 16 complex channels (ratio 0.75: the one shape past 10x against today's
# teacher, 11.6x in torch BF16), and MoDL at 6 unrolls x 4 CG steps (about 3.2x the teacher in BF16 on
# the CPU), each distilled for as long as the time allows. 2026-11-30 ran the recipe's 0.625 prune and
# K=5/4 CG=4/5 and K=6 (stopped at 523 steps) from files in .devdata/.
IFS=';' read -r -a JOBS <<<"${JOBS_SPEC:-deepcomplex_r075|deepcomplex_r4_edge|stages.0.batch_size=8 stages.0.ratio=0.75;modl_k6cg4|modl_r4_edge|stages.0.name=fewer-unrolls stages.0.student_options.iterations=6 stages.0.lr=2e-4 stages.0.warmup=100 stages.0.batch_size=8}"
common="device=$DEVICE"
for job in "${JOBS[@]}"; do
    [ -n "$STEPS" ] && break
    IFS='|' read -r name recipe extra <<<"$job"
    # shellcheck disable=SC2086
    stages_only "$WORK/probe/$name" "$LOGS/probe_$name.log" recipe="$recipe" $common $extra \
        stages.0.steps=$PROBE_STEPS stages.0.eval_every=$((PROBE_STEPS / 2)) &
done
wait
[ -z "$STEPS" ] && log "probes done"
left=$((DEADLINE - $(date +%s) - 40))  # kept back: start-up, the last validation, the tarballs
for job in "${JOBS[@]}"; do
    IFS='|' read -r name recipe extra <<<"$job"
    per_step=$("$PY" - "$WORK/probe/$name" <<'EOF'
import json, pathlib, sys
lines = [json.loads(l) for p in pathlib.Path(sys.argv[1]).glob("1-*/run/log.jsonl") for l in p.open()]
timed = [l for l in lines if "seconds" in l]
if len(timed) < 2:
    print(0)
else:
    print((timed[-1]["seconds"] - timed[0]["seconds"]) / max(1, timed[-1]["step"] - timed[0]["step"]))
EOF
)
    steps=$("$PY" -c "s = float('$per_step'); n = 0 if s <= 0 else min(int($left / s), $MAX_STEPS); print(n // 100 * 100 if n >= 1000 else n)")
    [ -n "$STEPS" ] && steps=$STEPS
    log "$name: $per_step s/step side by side; $steps steps in ${left}s"
    if [ "$steps" -lt "$MIN_STEPS" ]; then log "$name: too few steps, skipped"; continue; fi
    # shellcheck disable=SC2086
    stages_only "$WORK/run/$name" "$LOGS/run_$name.log" recipe="$recipe" $common $extra \
        stages.0.steps=$steps stages.0.eval_every=$((steps >= 8 ? steps / 8 : 1)) &
done
wait
log "runs done"
for name in $(ls "$WORK/run" 2>/dev/null); do
    tar -czf "$OUT/$name.tar.gz" -C "$WORK/run" "$name" && log "$name: $(du -h "$OUT/$name.tar.gz" | cut -f1)"
done
# At most 8 files come back from the machine: the session log, the logs, the benches, one per run.
[ -d "$WORK/bench" ] && tar -czf "$OUT/bench.tar.gz" -C "$WORK" $(cd "$WORK" && ls -d bench export 2>/dev/null)
log "end"
tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs
