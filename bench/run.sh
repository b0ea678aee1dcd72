#!/usr/bin/env bash
# Benchmark: fuse on generated Llama-layout bf16 checkpoints, each case next
# to the I/O floor measured in the same run (read every input once, write a
# file the size of the output with fsync, as fuse does).
#
#   bench/run.sh [small|large|all] [runs]
#
# small: hidden 1024, 8 layers, vocab 32000 (~170M parameters)
# large: hidden 2048, 12 layers, vocab 32000 (~750M parameters)
# Models go to $BENCH_DIR (default /tmp/fuse-bench), ~1.3 GB and ~6 GB.
# BENCH_CASES="ties slerp" runs only those cases.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=${1:-small}
runs=${2:-3}
[ "$sizes" = all ] && sizes="small large"
dir=${BENCH_DIR:-/tmp/fuse-bench}
cargo build --release --quiet
fuse=$PWD/target/release/fuse
mkdir -p "$dir"

gen() { # size name terms...
  local size=$1 name=$2; shift 2
  local out="$dir/$size/$name"
  [ -f "$out/config.json" ] && return
  case $size in
    small) "$fuse" gen-model "$out" --hidden 1024 --layers 8 --vocab 32000 --dtype bf16 "$@" ;;
    large) "$fuse" gen-model "$out" --hidden 2048 --layers 12 --vocab 32000 --dtype bf16 "$@" ;;
  esac
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Wall seconds and peak RSS (KB) of a command, as "secs kb".
measure() { /usr/bin/time -f "%e %M" "$@" 2>&1 >/dev/null | tail -1; }

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

printf '%-6s %-16s %9s %9s %7s %10s\n' size case "fuse s" "floor s" ratio "peak RSS"
for size in $sizes; do
  gen "$size" base --term 1:0.02
  gen "$size" ft1 --term 1:0.02 --term 11:0.002
  gen "$size" ft2 --term 1:0.02 --term 12:0.002
  gen "$size" ft3 --term 1:0.02 --term 13:0.002
  d="$dir/$size"
  declare -A recipes=(
    [linear]="linear(model(\"ft1\"), model(\"ft2\"), model(\"ft3\"))"
    [task_arithmetic]="base + task_arithmetic(model(\"ft1\"), model(\"ft2\"), model(\"ft3\"), weight=[0.5, 0.3, 0.2])"
    [ties]="base + ties(model(\"ft1\"), model(\"ft2\"), model(\"ft3\"), density=0.2)"
    [dare_ties]="base + dare_ties(model(\"ft1\"), model(\"ft2\"), model(\"ft3\"), density=0.3, seed=1)"
    [slerp]="slerp(model(\"ft1\"), model(\"ft2\"), t=0.4)"
  )
  declare -A inputs=(
    [linear]="ft1 ft2 ft3" [task_arithmetic]="base ft1 ft2 ft3" [ties]="base ft1 ft2 ft3"
    [dare_ties]="base ft1 ft2 ft3" [slerp]="ft1 ft2"
  )
  for case in ${BENCH_CASES:-linear task_arithmetic ties dare_ties slerp}; do
    printf 'base = model("base")\n%s\n' "${recipes[$case]}" > "$d/$case.fuse"
    files=()
    for m in ${inputs[$case]}; do files+=("$d/$m/model.safetensors"); done
    cat "${files[@]}" > /dev/null # warm the page cache
    bytes=$(stat -c %s "$d/base/model.safetensors")
    walls=(); rss=(); floors=()
    for _ in $(seq "$runs"); do
      read -r secs kb < <(measure "$fuse" run "$d/$case.fuse" -o "$d/out-$case" --force)
      walls+=("$secs"); rss+=("$kb")
      floors+=("$(floor "$bytes" "${files[@]}")")
    done
    w=$(printf '%s\n' "${walls[@]}" | median)
    f=$(printf '%s\n' "${floors[@]}" | median)
    r=$(printf '%s\n' "${rss[@]}" | sort -n | tail -1)
    awk -v s="$size" -v c="$case" -v w="$w" -v f="$f" -v r="$r" \
      'BEGIN {printf "%-6s %-16s %9.2f %9.2f %6.1fx %7.1f MB\n", s, c, w, f, w / f, r / 1024}' 
    rm -rf "$d/out-$case"
  done
done
