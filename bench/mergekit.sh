#!/usr/bin/env bash
# fuse against mergekit on the same merges, the two tools alternating in one
# run (median of `runs`), on bench/run.sh's models (run it first). Optional:
# needs mergekit, which CI never installs. See bench/README.md.
#
#   MERGEKIT=/path/to/mergekit-yaml bench/mergekit.sh [small|large] [runs]
#
# Cases: linear of 3, and TIES of 3 fine-tunes on their base with densities
# 0.2/0.3/0.5: bf16 in and out, computed in f32 by both (fuse always
# computes in f32), on CPU. mergekit runs with --lazy-unpickle and
# its default thread count.
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-small}
runs=${2:-3}
mergekit=${MERGEKIT:?set MERGEKIT to mergekit-yaml, e.g. MERGEKIT=/tmp/venv/bin/mergekit-yaml}
d=${BENCH_DIR:-/tmp/fuse-bench}/$size
[ -f "$d/ft3/config.json" ] || { echo "no models in $d: run bench/run.sh $size first" >&2; exit 1; }
if [ -z "${FUSE:-}" ]; then
  cargo build --release --quiet
  FUSE=$PWD/target/release/fuse
fi

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
wall() { /usr/bin/time -f "%e" "$@" 2>&1 >/dev/null | tail -1; }

cat > "$d/mk-linear.yml" <<EOF
merge_method: linear
models:
  - {model: $d/ft1, parameters: {weight: 1.0}}
  - {model: $d/ft2, parameters: {weight: 1.0}}
  - {model: $d/ft3, parameters: {weight: 1.0}}
dtype: float32
out_dtype: bfloat16
EOF
cat > "$d/mk-ties.yml" <<EOF
merge_method: ties
base_model: $d/base
models:
  - {model: $d/ft1, parameters: {weight: 1.0, density: 0.2}}
  - {model: $d/ft2, parameters: {weight: 1.0, density: 0.3}}
  - {model: $d/ft3, parameters: {weight: 1.0, density: 0.5}}
dtype: float32
out_dtype: bfloat16
EOF
printf 'linear(model("ft1"), model("ft2"), model("ft3"))\n' > "$d/fk-linear.fuse"
printf 'base = model("base")\nbase + ties(model("ft1"), model("ft2"), model("ft3"), density=[0.2, 0.3, 0.5])\n' > "$d/fk-ties.fuse"

echo "fuse: $FUSE; mergekit: $mergekit; $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-8s %9s %12s %16s\n' case "fuse s" "mergekit s" "fuse / mergekit"
for case in linear ties; do
  cat "$d"/{base,ft1,ft2,ft3}/model.safetensors > /dev/null
  fs=(); ms=()
  for _ in $(seq "$runs"); do
    fs+=("$(wall "$FUSE" run "$d/fk-$case.fuse" -o "$d/out-fk-$case" --force)")
    rm -rf "$d/out-mk-$case"
    ms+=("$(wall "$mergekit" "$d/mk-$case.yml" "$d/out-mk-$case" --lazy-unpickle --quiet)")
  done
  f=$(printf '%s\n' "${fs[@]}" | median)
  k=$(printf '%s\n' "${ms[@]}" | median)
  awk -v c="$case" -v f="$f" -v k="$k" 'BEGIN {printf "%-8s %9.2f %12.2f %16.3f\n", c, f, k, f / k}'
  rm -rf "$d/out-fk-$case" "$d/out-mk-$case"
done
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
