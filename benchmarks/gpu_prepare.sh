#!/usr/bin/env bash
# Prepares, on the development machine, what benchmarks/gpu_session.sh needs on a lent GPU machine
# (whose image has torch with CUDA but not every package edgesr imports, and which reaches no network):
#
#   .devdata/data.tar.xz   the prepared data set ($EDGESR_DATA or the default cache), so the GPU runs see
#                          the same data set fingerprint as this machine
#   .whl/                  Python 3.12 wheels of the packages that image lacks
#
# Both are git-ignored through .git/info/exclude (never committed) and travel as the call's `carry`.
# The device tool sends at most 64 MiB: the tracked runs/ folder (about 30 MiB) has to be moved aside
# for the call and back after; this script prints the sizes and the steps.
#
# Usage: bash benchmarks/gpu_prepare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${EDGESR_DATA:-$HOME/.cache/edgesr/data}
# The image's packages (device README, KINDS.md) lack these; versions as tested here.
WHEELS=(omegaconf==2.4.0 pydicom==3.0.2 nibabel==5.4.2 torch-pruning==1.6.1 sigpy==0.1.27 PyWavelets==1.9.0)

for ignored in /.devdata/ /.whl/; do
    grep -qxF "$ignored" .git/info/exclude 2>/dev/null || echo "$ignored" >>.git/info/exclude
done
if [ ! -f "$DATA/v2/manifest.json" ]; then
    echo "no prepared data set at $DATA (run: edgesr data prepare)" >&2
    exit 1
fi
mkdir -p .devdata .whl
echo "data set $(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['id'])" "$DATA/v2/manifest.json") from $DATA"
tar -C "$DATA" -cf - v2 | xz -6 -T2 >.devdata/data.tar.xz.tmp
mv .devdata/data.tar.xz.tmp .devdata/data.tar.xz
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${WHEELS[@]}"

tracked=$(git ls-files -z | grep -zv '^runs/' | xargs -0 stat -c %s | awk '{s += $1} END {print int(s / 1048576)}')
carried=$(du -sm .devdata .whl | awk '{s += $1} END {print s}')
echo "travels: ${tracked} MiB tracked outside runs/ + ${carried} MiB carried (limit 64)"
cat <<'EOF'
Then:  mv runs /tmp/edgesr-runs-aside
       run  command="BUDGET_S=540 bash benchmarks/gpu_session.sh"  carry=[".devdata", ".whl"]  timeout_s=590
       mv /tmp/edgesr-runs-aside runs      (at once, whatever the call returned)
EOF
