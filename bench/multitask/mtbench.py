"""A small multi-task model-merging benchmark in the spirit of FusionBench.

One small pretrained network (a residual MLP over 8x8 images), fine-tuned on
eight distinct tasks built from scikit-learn's bundled digits and from a
generated task; each task keeps its own classification head outside the merge.
fuse merges the fine-tuned bodies (one recipe per method, the coefficient set
with `--set lam=...`), and every merged body is evaluated on every task with
that task's head. Coefficients are chosen on a validation split, accuracy is
reported on a test split.

    python mtbench.py --fuse target/debug/fuse [--seeds 0 1 2] [--readme README.md]

`run.sh` next to this file is the one command that sets up Python and fuse
and runs it. Everything is seeded; nothing is downloaded.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from sklearn.datasets import load_digits

# ---------------------------------------------------------------------------
# The merge methods compared: (row label, fuse expression, coefficient grid).
# `{models}` is replaced by the fine-tuned models; each grid entry is one fuse
# run, its values given with `--set` to the recipe's `param`s (`lam`, ...).
# The entry with the best validation accuracy is kept. A method the fuse
# binary does not know is skipped and reported as such, so a line can be
# added before the method lands.
GRID = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.5, 3.0, 3.5, 4.0]
LAM = [{"lam": v} for v in GRID]
# LiNeS on task arithmetic's sum: scale alpha for the first layer up to
# alpha + beta for the last; beta = 0 is task arithmetic.
LINES = [{"lam": a, "beta": b} for a in [0.05, 0.1, 0.15, 0.2, 0.3] for b in [0.0, 0.1, 0.2, 0.4, 0.8]]
METHODS = [
    ("weight averaging", "linear({models})", [{}]),
    ("task arithmetic", "base + task_arithmetic({models}, lambda=lam)", LAM),
    ("TIES (density 0.2)", "base + ties({models}, density=0.2, lambda=lam)", LAM),
    ("MagMax", "base + magmax({models}, lambda=lam)", LAM),
    ("TSV-M", "base + tsv_m({models}, lambda=lam)", LAM),
    ("Iso-C", "base + iso_c({models}, lambda=lam)", LAM),
    ("Iso-CTS", "base + iso_cts({models}, lambda=lam)", LAM),
    ("CART", "cart({models}, lambda=lam)", LAM),
    ("LiNeS (on task arithmetic)", "base + lines(task_arithmetic({models}), alpha=lam, beta=beta)", LINES),
]

SEED = 0
D_MODEL, D_HIDDEN, N_LAYERS = 256, 512, 4


# ---------------------------------------------------------------------------
# Data


def bars(rng, n):
    """Generated 8x8 images of a line segment: horizontal, vertical or one of
    the two diagonals (4 classes), at a random place, with noise."""
    x = np.zeros((n, 8, 8), np.float32)
    y = rng.integers(0, 4, n)
    for i in range(n):
        length = rng.integers(4, 8)
        r, c = rng.integers(0, 8, 2)
        dr, dc = [(0, 1), (1, 0), (1, 1), (1, -1)][y[i]]
        for t in range(length):
            rr, cc = (r + t * dr) % 8, (c + t * dc) % 8
            x[i, rr, cc] = 1.0
    x += rng.normal(0, 0.25, x.shape).astype(np.float32)
    return x, y


def quadrants(img):
    """The 4x4 quadrants of each image in a fixed other order."""
    q = [img[:, :4, :4], img[:, :4, 4:], img[:, 4:, :4], img[:, 4:, 4:]]
    top = np.concatenate([q[3], q[2]], axis=2)
    bottom = np.concatenate([q[0], q[1]], axis=2)
    return np.concatenate([top, bottom], axis=1)


def make_data(seed):
    """Pretraining set and the eight tasks, each split train/val/test."""
    rng = np.random.default_rng(seed)
    d = load_digits()
    img = (d.images / 16.0).astype(np.float32)
    lab = d.target.astype(np.int64)
    perm = rng.permutation(len(img))
    pre, rest = perm[:700], perm[700:]  # pretraining digits never appear in a task
    x, y = img[rest], lab[rest]
    noise = rng.normal(0, 0.35, x.shape).astype(np.float32)
    tasks = {
        "flip": (x[:, :, ::-1], y),
        "rot90": (np.rot90(x, 1, axes=(1, 2)), y),
        "invert": (1.0 - x, y),
        "noise": (x + noise, y),
        "quadrants": (quadrants(x), y),
        "parity_rot180": (np.rot90(x, 2, axes=(1, 2)), y % 2),
        "mod3_roll": (np.roll(x, 3, axis=2), y % 3),
        "bars": bars(rng, len(x)),
    }
    n = len(x)
    n_val, n_test = n // 5, n // 4
    out = {}
    for k, (tx, ty) in tasks.items():
        order = rng.permutation(n)
        tx = np.ascontiguousarray(tx).reshape(n, 64)
        split = {
            "test": order[:n_test],
            "val": order[n_test : n_test + n_val],
            "train": order[n_test + n_val :],
        }
        out[k] = {
            s: (torch.tensor(tx[i]), torch.tensor(ty[i])) for s, i in split.items()
        } | {"classes": int(ty.max()) + 1}
    return (torch.tensor(img[pre].reshape(-1, 64)), torch.tensor(lab[pre])), out


def augment(x, g):
    """Pretraining's broad mixture: each image in one of eight views (as is,
    mirrored either way, rotated by 90, 180 or 270 degrees, inverted,
    transposed), shifted by up to one pixel, with light noise."""
    b = x.view(-1, 8, 8)
    n = len(b)
    view = torch.randint(0, 8, (n,), generator=g)
    views = [b, b.flip(2), b.flip(1), b.rot90(1, (1, 2)), b.rot90(2, (1, 2)), b.rot90(3, (1, 2)), 1 - b, b.transpose(1, 2)]
    b = torch.stack(views)[view, torch.arange(n)]
    s = torch.randint(-1, 2, (2,), generator=g).tolist()
    b = torch.roll(b, shifts=s, dims=(1, 2))
    return b.reshape(-1, 64) + 0.1 * torch.randn(x.shape, generator=g)


# ---------------------------------------------------------------------------
# Model: the body (merged) and per-task heads (never merged)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(D_MODEL)
        self.fc1 = nn.Linear(D_MODEL, D_HIDDEN)
        self.fc2 = nn.Linear(D_HIDDEN, D_MODEL)

    def forward(self, x):
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class Body(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(64, D_MODEL)
        self.layers = nn.ModuleList(Block() for _ in range(N_LAYERS))
        self.norm = nn.LayerNorm(D_MODEL)

    def forward(self, x):
        x = self.embed(x)
        for b in self.layers:
            x = b(x)
        return self.norm(x)


CONFIG = {
    "architectures": ["MTBenchResMLP"],
    "model_type": "mtbench-resmlp",
    "input_size": 64,
    "hidden_size": D_MODEL,
    "intermediate_size": D_HIDDEN,
    "num_hidden_layers": N_LAYERS,
    "torch_dtype": "float32",
}


def save_body(body, path):
    os.makedirs(path, exist_ok=True)
    sd = {k: v.detach().contiguous() for k, v in body.state_dict().items()}
    save_file(sd, os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(CONFIG, f, indent=2)


def load_body(path):
    body = Body()
    body.load_state_dict(load_file(os.path.join(path, "model.safetensors")))
    return body.eval()


@torch.no_grad()
def accuracy(body, head, data):
    x, y = data
    return (head(body(x)).argmax(1) == y).float().mean().item()


def batches(n, size, g):
    order = torch.randperm(n, generator=g)
    for i in range(0, n - size + 1, size):
        yield order[i : i + size]


def pretrain(data, g):
    x, y = data
    body, head = Body(), nn.Linear(D_MODEL, 10)
    opt = torch.optim.AdamW([*body.parameters(), *head.parameters()], lr=1e-3, weight_decay=0.01)
    for _ in range(40):
        for idx in batches(len(x), 64, g):
            loss = F.cross_entropy(head(body(augment(x[idx], g))), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return body.eval()


class Head(nn.Module):
    """A task's classifier, fixed before fine-tuning and never merged: cosine
    similarity to one unit vector per class, times a logit scale. The class
    vectors are the normalized mean pretrained features of the task's training
    images per class, the analogue of CLIP's zero-shot heads (class-name text
    embeddings) that Task Arithmetic and FusionBench keep frozen."""

    def __init__(self, classes):
        super().__init__()
        self.register_buffer("weight", torch.zeros(classes, D_MODEL))

    def forward(self, x):
        return 20.0 * F.normalize(x, dim=1) @ self.weight.T


@torch.no_grad()
def prototype_head(body, task):
    x, y = task["train"]
    f = F.normalize(body(x), dim=1)
    head = Head(task["classes"])
    head.weight[:] = torch.stack([F.normalize(f[y == c].mean(0), dim=0) for c in range(task["classes"])])
    return head.eval()


def finetune(pre, head, task, g, steps, lr):
    body = Body()
    body.load_state_dict(pre.state_dict())
    body.train()
    x, y = task["train"]
    opt = torch.optim.AdamW(body.parameters(), lr=lr, weight_decay=0.0)
    step = 0
    while step < steps:
        for idx in batches(len(x), 32, g):
            loss = F.cross_entropy(head(body(x[idx])), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step == steps:
                break
    return body.eval()


# ---------------------------------------------------------------------------
# Merging with fuse


def run_fuse(fuse, recipe, out, sets=()):
    cmd = [fuse, "run", recipe, "-o", out, "--force"]
    for k, v in sets:
        cmd += ["--set", f"{k}={v}"]
    return subprocess.run(cmd, capture_output=True, text=True)


def write_recipe(path, expr, names, params):
    models = ", ".join(names)
    lines = ['base = model("models/pretrained")']
    lines += [f'{n} = model("models/{n}")' for n in names]
    lines += [f"param {p} = 1.0" for p in params]
    lines += [expr.format(models=models)]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def task_vector_cosines(pre, fts):
    p = torch.cat([v.flatten() for v in pre.state_dict().values()])
    tv = [torch.cat([v.flatten() for v in m.state_dict().values()]) - p for m in fts]
    return [F.cosine_similarity(a, b, dim=0).item() for i, a in enumerate(tv) for b in tv[i + 1 :]]


def evaluate(body, heads, tasks, split):
    return {k: accuracy(body, heads[k], tasks[k][split]) for k in tasks}


def mean(d):
    return sum(d.values()) / len(d)


# ---------------------------------------------------------------------------


def run_seed(args, seed):
    """Trains, merges and evaluates with one seed; returns the table's rows,
    the task names and a line of facts about the run."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    work = os.path.join(args.work, f"seed{seed}")
    os.makedirs(os.path.join(work, "models"), exist_ok=True)

    pre_data, tasks = make_data(seed)
    names = list(tasks)
    pre = pretrain(pre_data, g)
    save_body(pre, os.path.join(work, "models", "pretrained"))
    heads = {k: prototype_head(pre, tasks[k]) for k in names}
    rows = []  # (label, chosen params or None, {task: test acc} or None, note)
    rows.append(("pretrained", None, evaluate(pre, heads, tasks, "test"), ""))
    ft = {}
    for k in names:
        ft[k] = finetune(pre, heads[k], tasks[k], g, args.steps, args.lr)
        save_body(ft[k], os.path.join(work, "models", k))
    diag = {k: accuracy(ft[k], heads[k], tasks[k]["test"]) for k in names}
    rows.append(("individual fine-tunes", None, diag, ""))
    t_train = time.time() - t0
    cos = task_vector_cosines(pre, [ft[k] for k in names])
    print(f"seed {seed}: trained in {t_train:.1f}s; pretrained {mean(rows[0][2]):.3f}, fine-tuned {mean(diag):.3f}", flush=True)

    t1 = time.time()
    runs = 0
    recipe, out = os.path.join(work, "recipe.fuse"), os.path.join(work, "merged")
    for label, expr, grid in METHODS:
        write_recipe(recipe, expr, names, list(grid[0]))
        check = subprocess.run([args.fuse, "check", recipe], capture_output=True, text=True)
        if check.returncode != 0:
            print(f"{label}: skipped, `fuse check` refuses it:\n{check.stderr.strip()[:300]}", flush=True)
            rows.append((label, None, None, "not in this fuse build"))
            continue
        best = None
        for sets in grid:
            r = run_fuse(args.fuse, recipe, out, sets.items())
            runs += 1
            if r.returncode != 0:
                sys.exit(f"fuse failed on {label} {sets}:\n{r.stderr}")
            body = load_body(out)
            val = mean(evaluate(body, heads, tasks, "val"))
            if best is None or val > best[0]:
                best = (val, sets, evaluate(body, heads, tasks, "test"))
        val, sets, test = best
        print(f"{label}: {sets}, val {val:.3f}, test {mean(test):.3f}", flush=True)
        rows.append((label, sets, test, ""))
    t_merge = time.time() - t1
    facts = (
        f"Seed {seed}: training {t_train:.0f} s, {runs} fuse runs with their evaluation {t_merge:.0f} s. "
        f"Test split: {len(tasks[names[0]]['test'][1])} images per task. Pairwise cosine "
        f"similarity of the task vectors (whole body): mean {np.mean(cos):.2f}, "
        f"range {np.min(cos):.2f} to {np.max(cos):.2f}."
    )
    return rows, names, facts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fuse", required=True)
    ap.add_argument("--work", default="/tmp/fuse-mtbench")
    ap.add_argument("--readme", default=None, help="write the results section of this README")
    ap.add_argument("--steps", type=int, default=150, help="fine-tuning steps per task")
    ap.add_argument("--lr", type=float, default=3e-4, help="fine-tuning learning rate")
    ap.add_argument(
        "--seeds", type=int, nargs="+", default=[SEED],
        help="seeds of the data splits, training and generated task; the first gets the per-task table",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)  # results do not depend on the machine's core count
    torch.use_deterministic_algorithms(True)
    results = [run_seed(args, s) for s in args.seeds]
    rows, names, facts = results[0]
    text = render(rows, names) + "\n\n" + facts
    if len(results) > 1:
        text += "\n\n" + render_seeds(args.seeds, results)
    print(text)
    if args.readme:
        write_readme(args.readme, text)


def render_seeds(seeds, results):
    """Average test accuracy per method and seed, and their mean."""
    lines = ["| method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |"]
    lines.append("|---|" + "---|" * (len(seeds) + 1))
    for i, (label, _, acc, note) in enumerate(results[0][0]):
        if acc is None:
            lines.append(f"| {label} | {note} |" + " |" * len(seeds))
            continue
        avgs = [100 * mean(r[0][i][2]) for r in results]
        cells = " | ".join(f"{a:.1f}" for a in avgs)
        lines.append(f"| {label} | {cells} | **{sum(avgs) / len(avgs):.1f}** |")
    return "\n".join(lines)


def render(rows, names):
    head = "| method | chosen | avg | " + " | ".join(names) + " |"
    sep = "|---|---|---|" + "---|" * len(names)
    lines = [head, sep]
    for label, lam, acc, note in rows:
        if acc is None:
            lines.append(f"| {label} | | {note} |" + " |" * len(names))
            continue
        lam_s = ", ".join(f"{v:g}" if k == "lam" else f"{k} {v:g}" for k, v in (lam or {}).items())
        cells = " | ".join(f"{100 * acc[k]:.1f}" for k in names)
        lines.append(f"| {label} | {lam_s} | **{100 * mean(acc):.1f}** | {cells} |")
    return "\n".join(lines)


BEGIN, END = "<!-- results: begin -->", "<!-- results: end -->"


def write_readme(path, results):
    text = open(path).read()
    a, b = text.index(BEGIN) + len(BEGIN), text.index(END)
    text = text[:a] + "\n" + results + "\n" + text[b:]
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
