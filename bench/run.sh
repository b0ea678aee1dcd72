#!/usr/bin/env bash
# Benchmark: fuse on generated Llama-layout bf16 checkpoints. Each case is
# shown next to the I/O floor of its inputs (read every input once, write a
# file the size of the output with fsync, as fuse does), next to a linear
# merge of three models (`linear`) and next to a linear merge of the same
# four models the base-relative cases read (`linear4`), all measured in the
# same run: the machine may be shared, so the ratios are the figures to
# compare. See bench/README.md.
#
#   bench/run.sh [small|large|all] [runs]
#
# small: hidden 1024, 8 layers, vocab 32000 (168M parameters, 322 MB a model)
# large: hidden 2048, 12 layers, vocab 32000 (748M parameters, 1.5 GB a model)
# Models go to $BENCH_DIR (default /tmp/fuse-bench): 1.3 GB and 6 GB.
# BENCH_CASES="ties slerp" runs only those cases (linear and linear4 always
# run first).
# FUSE=path times that binary instead of building this tree (e.g. an older
# build, to compare). RAYON_NUM_THREADS sets fuse's thread count.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=${1:-small}
runs=${2:-3}
[ "$sizes" = all ] && sizes="small large"
dir=${BENCH_DIR:-/tmp/fuse-bench}
if [ -z "${FUSE:-}" ]; then
  cargo build --release --quiet
  FUSE=$PWD/target/release/fuse
fi
fuse=$FUSE
mkdir -p "$dir"

gen() { # size name terms...
  local size=$1 name=$2; shift 2
  local out="$dir/$size/$name"
  [ -f "$out/config.json" ] && return
  case $size in
    small) "$fuse" gen-model "$out" --hidden 1024 --layers 8 --vocab 32000 --dtype bf16 "$@" >/dev/null ;;
    large) "$fuse" gen-model "$out" --hidden 2048 --layers 12 --vocab 32000 --dtype bf16 "$@" >/dev/null ;;
  esac
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Wall seconds, peak RSS (KB) and CPU seconds of a command, as "secs kb cpu".
measure() { /usr/bin/time -f "%e %M %U %S" "$@" 2>&1 >/dev/null | tail -1 | awk '{print $1, $2, $3 + $4}'; }

floor() { # output-bytes inputs...
  local bytes=$1; shift
  local t0 t1
  t0=$(date +%s.%N)
  cat "$@" > /dev/null
  dd if=/dev/zero of="$dir/floor.bin" bs=4M count=$(( (bytes + 4194303) / 4194304 )) conv=fsync status=none
  t1=$(date +%s.%N)
  rm -f "$dir/floor.bin"
  awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}'
}

m() { printf 'model("%s")' "$1"; }
three="$(m ft1), $(m ft2), $(m ft3)"
declare -A recipes=(
  [linear]="linear($three)"
  [linear4]="linear(base, $three)"
  [task_arithmetic]="base + task_arithmetic($three, weight=[0.5, 0.3, 0.2])"
  [ties]="base + ties($three, density=0.2)"
  [ties_mk]="base + ties($three, density=[0.2, 0.3, 0.5])"
  [dare_ties]="base + dare_ties($three, density=0.3, seed=1)"
  [dare_linear]="base + dare_linear($three, density=0.3, seed=1)"
  [breadcrumbs_ties]="base + breadcrumbs_ties($three, density=0.3, gamma=0.01)"
  [della]="base + della($three, density=0.4, epsilon=0.1, seed=1)"
  [sce]="sce($three, base=base, select_topk=0.3)"
  [slerp]="slerp($(m ft1), $(m ft2), t=0.4)"
)
declare -A inputs=([linear]="ft1 ft2 ft3" [slerp]="ft1 ft2")
all="task_arithmetic ties ties_mk dare_ties dare_linear breadcrumbs_ties della sce slerp"
cases="linear linear4 $(printf '%s\n' ${BENCH_CASES:-$all} | { grep -vx 'linear4\|linear' || true; } | tr '\n' ' ')"

echo "fuse: $fuse, RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-all}, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-6s %-17s %8s %8s %8s %8s %8s %8s %9s\n' size case "fuse s" "cpu s" "floor s" "x floor" "x linear" "x lin4" "peak RSS"
for size in $sizes; do
  gen "$size" base --term 1:0.02
  gen "$size" ft1 --term 1:0.02 --term 11:0.002
  gen "$size" ft2 --term 1:0.02 --term 12:0.002
  gen "$size" ft3 --term 1:0.02 --term 13:0.002
  d="$dir/$size"
  linear= linear4=
  for case in $cases; do
    printf 'base = model("base")\n%s\n' "${recipes[$case]}" > "$d/$case.fuse"
    files=()
    for name in ${inputs[$case]:-base ft1 ft2 ft3}; do files+=("$d/$name/model.safetensors"); done
    cat "${files[@]}" > /dev/null # warm the page cache
    bytes=$(stat -c %s "$d/base/model.safetensors")
    walls=(); rss=(); cpus=(); floors=()
    for _ in $(seq "$runs"); do
      read -r secs kb cpu < <(measure "$fuse" run "$d/$case.fuse" -o "$d/out-$case" --force)
      walls+=("$secs"); rss+=("$kb"); cpus+=("$cpu")
      floors+=("$(floor "$bytes" "${files[@]}")")
    done
    w=$(printf '%s\n' "${walls[@]}" | median)
    c=$(printf '%s\n' "${cpus[@]}" | median)
    f=$(printf '%s\n' "${floors[@]}" | median)
    r=$(printf '%s\n' "${rss[@]}" | sort -n | tail -1)
    [ -z "$linear" ] && linear=$w
    [ "$case" = linear4 ] && linear4=$w
    awk -v s="$size" -v k="$case" -v w="$w" -v c="$c" -v f="$f" -v r="$r" -v l="$linear" -v l4="$linear4" \
      'BEGIN {x4 = l4 == "" ? "-" : sprintf("%.2fx", w / l4)
        printf "%-6s %-17s %8.2f %8.2f %8.2f %7.1fx %7.2fx %8s %6.1f MB\n", s, k, w, c, f, w / f, w / l, x4, r / 1024}'
    rm -rf "$d/out-$case"
  done
done
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
