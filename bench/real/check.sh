#!/usr/bin/env bash
# Manual checks on real checkpoints (see README.md): fuse merges and converts
# them, then transformers, sentence-transformers and gguf load the results.
#   bench/real/check.sh [models-dir] [work-dir]
# PYTHON must name an interpreter with torch, transformers,
# sentence-transformers, safetensors and gguf.
set -euo pipefail
cd "$(dirname "$0")/../.."
real=$(realpath "${1:-/tmp/fuse-real}")
work=$(realpath -m "${2:-/tmp/fuse-real-work}")
py=${PYTHON:-python3}
cargo build --quiet
fuse=$PWD/target/debug/fuse
checks=$PWD/bench/real/checks.py
mkdir -p "$work"
cd "$work"

m=$real/minilm
printf 'base = model("%s/base")\nsre = model("%s/sre")\nresume = model("%s/resume")\nbase + ties(sre, resume, k=0.5)\n' "$m" "$m" "$m" > ties.fuse
"$fuse" run ties.fuse -o minilm-ties --force
"$py" "$checks" ties_minilm "$real" "$work"
"$py" "$checks" load_minilm "$real" "$work"

"$py" "$checks" gemma3_make "$real" "$work"
printf 'g = model("gemma3")\nstack(g.layers[0..4], g.layers[2..6])\n' > gemma3.fuse
"$fuse" run gemma3.fuse -o gemma3-stack --force
"$py" "$checks" gemma3_load "$real" "$work"

printf 'model("%s/smollm2.gguf")\n' "$real" > smol.fuse
"$fuse" run smol.fuse -o smol-st --force
"$py" "$checks" gguf_twin "$real" "$work"
printf 'a = model("%s/smollm2.gguf")\nb = model("smol-st")\nlinear(a, b, weight=[0.3, 0.7])\n' "$real" > mix.fuse
"$fuse" run mix.fuse -o mix.gguf --force
"$fuse" run mix.fuse -o mix-q8.gguf --dtype q8_0 --force
"$py" "$checks" gguf_out "$real" "$work"

"$py" "$checks" families_make "$real" "$work"
for fam in qwen2 gemma3-text; do
  printf 'model("%s")\n' "$fam" > "$fam.fuse"
  "$fuse" run "$fam.fuse" -o "$fam.gguf" --dtype f32 --force
  printf 'model("%s.gguf")\n' "$fam" > "$fam-back.fuse"
  "$fuse" run "$fam-back.fuse" -o "$fam-back" --force
done
"$py" "$checks" families_check "$real" "$work"

"$py" "$checks" spm_make "$real" "$work"
printf 'model("llama-spm")\n' > llama-spm.fuse
"$fuse" run llama-spm.fuse -o llama-spm.gguf --force
"$py" "$checks" spm_check "$real" "$work"
