#!/usr/bin/env python3
"""Checks fuse's SVD-era merge methods against independent references.

For one set of checkpoints (a base and fine-tunes of it) this runs one fuse
recipe that saves every method's output, computes the same merges in torch,
and prints per method the largest absolute and relative differences over all
float tensors. See README.md beside this file for how to get the inputs.

References, none of them fuse's code:
  iso_c, iso_cts, tsv_m, magmax  FusionBench's own functions (`iso_c`,
                                 `iso_cts`, `compute_and_sum_svd_mem_reduction`,
                                 `_magmax_select`), loaded from an unpacked
                                 fusion-bench wheel with its heavy imports
                                 stubbed out.
  ram, ramplus_tl                mergekit's `ram.py` (newer than 0.1.5),
                                 loaded from a source file with its decorator
                                 stubbed out.
  cart                           the paper's formula in torch (no
                                 reference code is published in a package).
  lines                          LiNeS's own rule: a tensor whose name holds
                                 ".{i}." is in block i, scale alpha + beta *
                                 i / (L - 1), anything else alpha.

Each reference runs twice: in float32, as its authors run it, and on float64
inputs. The float32 reference's own distance from the float64 one is the
noise floor that "agrees to float32 precision" means: fuse should be as
close to the float64 result as that. Relative error: per tensor, max |x - y|
over max |y - base| (the size of the merged change), the worst tensor
reported; absolute: max |x - y|.

Usage:
  methods.py --fuse target/debug/fuse --fusion-bench DIR --mergekit-ram FILE \\
      --base DIR --models DIR DIR [...]
"""

import argparse
import contextlib
import importlib.util
import io
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import torch
from safetensors.torch import load_file

torch.set_grad_enabled(False)


def load_module(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def stub(name, **attrs):
    mod = sys.modules.get(name) or types.ModuleType(name)
    for k, v in attrs.items():
        setattr(mod, k, v)
    sys.modules[name] = mod
    return mod


def fusion_bench(root):
    """FusionBench's merge functions without importing its package (which
    pulls in lightning, hydra and more)."""
    def anything(name):
        return type(name, (), {"__init__": lambda self, *a, **k: None})

    Anything = anything("Anything")
    stub("fusion_bench", LazyStateDict=Anything)
    stub("fusion_bench.utils", timeit_context=lambda *a, **k: contextlib.nullcontext())
    stub("fusion_bench.utils.type", StateDictType=dict, TorchModelType=object)
    stub("fusion_bench.method")
    stub("fusion_bench.method.base_algorithm", BaseAlgorithm=anything("BaseAlgorithm"))
    stub("fusion_bench.mixins", SimpleProfilerMixin=anything("SimpleProfilerMixin"), auto_register_config=lambda c: c)
    stub("fusion_bench.modelpool", BaseModelPool=Anything)
    m = Path(root) / "fusion_bench" / "method"
    iso = load_module("fb_iso", m / "isotropic_merging" / "iso_utils.py")
    tsv = load_module("fb_tsv", m / "task_singular_vector" / "utils" / "TSVM_utils.py")
    mag = load_module("fb_magmax", m / "magmax" / "magmax.py")
    return iso, tsv, mag


def mergekit_ram(path):
    stub("mergekit")
    stub("mergekit.merge_methods")
    stub("mergekit.merge_methods.easy_define", merge_method=lambda **k: (lambda f: f))
    return load_module("mk_ram", path)


def read_model(d):
    d = Path(d)
    files = sorted(d.glob("*.safetensors")) or [d]
    out = {}
    for f in files:
        out.update(load_file(str(f)))
    return {k: v for k, v in out.items() if v.is_floating_point()}


def num_layers(d):
    return json.loads((Path(d) / "config.json").read_text())["num_hidden_layers"]


# The methods: the fuse expression (models bound as base, m0, m1, ...) and
# the reference, a function of (base, [models], [task vectors], layers) to a
# dict of merged tensors.
def methods(iso, tsv, mag, ram, lam=0.7):
    def tv_method(f):
        return lambda base, ms, tvs, L: {k: base[k] + v.to(base[k].dtype) for k, v in f(tvs).items()}

    def cart(base, ms, tvs, L, rank=0.08, lam=1.2):
        out = {}
        for k in base:
            xs = [m[k] for m in (base, *ms)]
            avg = sum(xs) / len(xs)
            if avg.dim() != 2:
                out[k] = avg
                continue
            keep = int(rank * min(avg.shape))
            acc = torch.zeros_like(avg)
            for x in xs:
                u, s, vh = torch.linalg.svd(x - avg, full_matrices=False)
                acc += u[:, :keep] @ torch.diag(s[:keep]) @ vh[:keep]
            out[k] = avg + lam * acc
        return out

    def lines(base, ms, tvs, L, alpha=0.3, beta=0.9):
        out = {}
        for k, t in tvs[0].items():
            scale = alpha
            for i in range(L):
                if f".{i}." in k:
                    scale = alpha + beta * i / (L - 1)
                    break
            out[k] = base[k] + scale * t
        return out

    def ram_ref(plus, **kw):
        def f(base, ms, tvs, L):
            fn = ram.ramplus_tl_merge if plus else ram.ram_merge
            return {k: fn([m[k] for m in ms], base[k], **kw) for k in base}
        return f

    return [
        ("magmax", "base + magmax({ms}, lambda=0.5)",
         tv_method(lambda tvs: {k: 0.5 * v for k, v in mag._magmax_select(tvs).items()})),
        ("iso_c", "base + iso_c({ms}, lambda=%g)" % lam,
         tv_method(lambda tvs: {k: lam * v for k, v in iso.iso_c(tvs, accelerator="cpu").items()})),
        ("iso_cts", "base + iso_cts({ms}, lambda=%g, common=0.8)" % lam,
         tv_method(lambda tvs: {k: lam * v for k, v in iso.iso_cts(tvs, 0.8, accelerator="cpu").items()})),
        ("tsv_m", "base + tsv_m({ms}, lambda=%g)" % lam,
         tv_method(lambda tvs: {k: lam * v for k, v in
                                tsv.compute_and_sum_svd_mem_reduction(tvs, accelerator="cpu").items()})),
        ("cart", "cart(base, {ms}, rank=0.08, lambda=1.2)", cart),
        ("lines", "base + lines(m0 - base, alpha=0.3, beta=0.9)", lines),
        ("ram", "base + ram({ms})", ram_ref(False)),
        ("ramplus_tl", "base + ramplus_tl({ms})", ram_ref(True)),
        ("ramplus_tl_strong", "base + ramplus_tl({ms}, r=0.5, alpha=2)", ram_ref(True, r=0.5, alpha=2.0)),
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fuse", required=True)
    ap.add_argument("--fusion-bench", required=True, help="an unpacked fusion-bench wheel (the folder holding fusion_bench/)")
    ap.add_argument("--mergekit-ram", required=True, help="mergekit's mergekit/merge_methods/ram.py")
    ap.add_argument("--base", required=True)
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--only", nargs="*", help="method names to check")
    args = ap.parse_args()

    iso, tsv, mag = fusion_bench(args.fusion_bench)
    ram = mergekit_ram(args.mergekit_ram)
    base = read_model(args.base)
    ms = [read_model(m) for m in args.models]
    tvs = [{k: m[k] - base[k] for k in base} for m in ms]
    L = num_layers(args.base)
    todo = [m for m in methods(iso, tsv, mag, ram) if not args.only or m[0] in args.only]

    with tempfile.TemporaryDirectory() as tmp:
        names = ", ".join(f"m{i}" for i in range(len(ms)))
        lines = [f'base = model("{Path(args.base).resolve()}")']
        lines += [f'm{i} = model("{Path(m).resolve()}")' for i, m in enumerate(args.models)]
        lines += [f'save({expr.format(ms=names)}, "{name}", dtype=f32)' for name, expr, _ in todo]
        lines.append("base")
        recipe = Path(tmp) / "r.fuse"
        recipe.write_text("\n".join(lines) + "\n")
        subprocess.run([args.fuse, "run", str(recipe), "-o", str(Path(tmp) / "unused")], check=True)

        print(f"{len(ms)} models, {len(base)} float tensors, {sum(t.numel() for t in base.values()):,} parameters")
        print("fuse: fuse's output; ref32: the reference in float32 (as its authors run it); "
              "ref64: the same reference on float64 inputs.")
        print(f"{'method':<18} {'fuse-ref32 abs':>14} {'rel':>9} {'fuse-ref64 abs':>14} {'rel':>9} "
              f"{'ref32-ref64 abs':>15} {'rel':>9}  worst tensor (fuse-ref64)")
        base64 = {k: v.double() for k, v in base.items()}
        ms64 = [{k: v.double() for k, v in m.items()} for m in ms]
        tvs64 = [{k: m[k] - base64[k] for k in base64} for m in ms64]
        for name, _, ref in todo:
            got = read_model(Path(tmp) / name)
            with contextlib.redirect_stdout(io.StringIO()):  # FusionBench prints every key
                want32 = ref(base, ms, tvs, L)
                want64 = ref(base64, ms64, tvs64, L)
            a = compare(got, want32, base)
            b = compare(got, want64, base)
            c = compare(want32, want64, base)
            print(f"{name:<18} {a[0]:>14.3g} {a[1]:>9.3g} {b[0]:>14.3g} {b[1]:>9.3g} {c[0]:>15.3g} {c[1]:>9.3g}  {b[2]}")


def compare(got, want, base):
    """(max abs error, max per-tensor relative error, its tensor) of `got`
    against `want`; relative to the largest change `want - base`."""
    worst_abs, worst_rel, where = 0.0, 0.0, ""
    for k, w in want.items():
        g = got[k].to(torch.float64)
        w = w.to(torch.float64)
        err = (g - w).abs().max().item()
        scale = (w - base[k].double()).abs().max().item()
        rel = err / scale if scale > 0 else (0.0 if err == 0 else float("inf"))
        worst_abs = max(worst_abs, err)
        if rel > worst_rel:
            worst_rel, where = rel, k
    return worst_abs, worst_rel, where


if __name__ == "__main__":
    main()
