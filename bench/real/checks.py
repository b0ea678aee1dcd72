"""Manual checks of fuse's outputs on real checkpoints, in the tools people
load them with (transformers, sentence-transformers, gguf). Run by check.sh;
each check prints one line and raises on a failure. Not part of cargo test."""
import json, sys, torch
from pathlib import Path
from safetensors.torch import load_file

real, work = Path(sys.argv[2]), Path(sys.argv[3])


def ties_minilm():
    """base + ties(sre, resume, k=0.5) against TIES written here from mergekit
    0.1.5's semantics (../../../shared/METHODS.md), with equal magnitudes at the
    threshold kept lower index first, as fuse documents."""
    base, a, b = (load_file(real / "minilm" / d / "model.safetensors") for d in ("base", "sre", "resume"))
    out = load_file(work / "minilm-ties" / "model.safetensors")

    def trim(x, density):
        k = max(int(density * x.numel()), 1)
        keep = torch.zeros(x.numel(), dtype=torch.bool)
        keep[torch.sort(x.flatten().abs(), descending=True, stable=True).indices[:k]] = True
        return x * keep.view_as(x)

    worst, n = 0.0, 0
    for name, t in out.items():
        if not t.dtype.is_floating_point:
            assert torch.equal(t, base[name]), f"{name} is not the base's"
            continue
        tv = [trim(m[name].float() - base[name].float(), 0.5) for m in (a, b)]
        majority = torch.where(sum(tv) >= 0, 1.0, -1.0)
        masks = [(torch.sign(d) == majority).float() for d in tv]
        div = sum(masks)
        div[div == 0] = 1
        ref = base[name].float() + sum(d * m for d, m in zip(tv, masks)) / div
        worst = max(worst, (ref - t.float()).abs().max().item())
        n += 1
    assert worst == 0.0, worst
    print(f"ties on MiniLM: {n} float tensors equal the reference exactly; position_ids are the base's")


def load_minilm():
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel
    AutoModel.from_pretrained(work / "minilm-ties")
    st = SentenceTransformer(str(work / "minilm-ties"), device="cpu")
    e = st.encode(["How do I restart nginx?", "The server returned 502", "I love pizza"], convert_to_tensor=True)
    assert [type(m).__name__ for m in st] == ["Transformer", "Pooling", "Normalize"]
    assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5) and e[0] @ e[1] > e[0] @ e[2]
    print(f"merged MiniLM loads in transformers and sentence-transformers; encodes {tuple(e.shape)}, related > unrelated")


def gemma3_make():
    from transformers import Gemma3TextConfig, Gemma3ForCausalLM
    torch.manual_seed(0)
    c = Gemma3TextConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=32,
                         max_position_embeddings=256)
    Gemma3ForCausalLM(c).save_pretrained(work / "gemma3")


def gemma3_load():
    from transformers import AutoModelForCausalLM
    src = json.loads((work / "gemma3" / "config.json").read_text())["layer_types"]
    m = AutoModelForCausalLM.from_pretrained(work / "gemma3-stack")
    assert m.config.layer_types == src[0:4] + src[2:6], m.config.layer_types
    out = m.generate(torch.tensor([[2, 10, 20, 30]]), max_new_tokens=6, do_sample=False)
    print(f"Gemma 3 frankenmerge: {len(m.model.layers)} layers, layer_types rebuilt, generates {out.shape[1] - 4} tokens")


def gguf_twin():
    """fuse's reading of the GGUF, written as safetensors, against what
    transformers itself loads from the same file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    ref = AutoModelForCausalLM.from_pretrained(real, gguf_file="smollm2.gguf", dtype=torch.float32).state_dict()
    ours = load_file(work / "smol-st" / "model.safetensors")
    worst = max((ref[k].float() - t.float()).abs().max().item() for k, t in ours.items())
    assert worst == 0.0 and all(k in ours for k in ref if k != "lm_head.weight"), worst
    a = AutoTokenizer.from_pretrained(real, gguf_file="smollm2.gguf")
    b = AutoTokenizer.from_pretrained(work / "smol-st")
    texts = ["The capital of France is Paris.", "  spaces\n\n\ttabs 1234567 3.14", "<|im_start|>user\nHi<|im_end|>\n",
             "Ünïcödé — 🤖, 中文, def f(x): return x**2"]
    assert all(a(t)["input_ids"] == b(t)["input_ids"] for t in texts)
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    assert a.apply_chat_template(msgs, tokenize=False) == b.apply_chat_template(msgs, tokenize=False)
    print(f"SmolLM2 GGUF as safetensors: {len(ours)} tensors equal transformers' GGUF load exactly; tokenizer and chat template agree")


def gguf_out():
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer
    for name in ("mix.gguf", "mix-q8.gguf"):
        r = gguf.GGUFReader(work / name)
        types = sorted({t.tensor_type.name for t in r.tensors})
        m = AutoModelForCausalLM.from_pretrained(work, gguf_file=name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(work, gguf_file=name)
        ids = tok("The capital of France is", return_tensors="pt")
        text = tok.decode(m.generate(**ids, max_new_tokens=4, do_sample=False)[0])
        assert "Paris" in text, text
        print(f"{name}: {len(r.tensors)} tensors {types}, loads in transformers and says {text!r}")


def families_make():
    """Tiny Qwen2 and Gemma 3 (text) models made by transformers, with a
    256-token byte-level tokenizer (a GGUF needs one for transformers to load)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import Qwen2Config, Qwen2ForCausalLM, Gemma3TextConfig, Gemma3ForCausalLM
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    torch.manual_seed(0)
    shape = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    Qwen2ForCausalLM(Qwen2Config(**shape, tie_word_embeddings=False)).save_pretrained(work / "qwen2")
    Gemma3ForCausalLM(Gemma3TextConfig(**shape, head_dim=16, sliding_window=32)).save_pretrained(work / "gemma3-text")
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(bytes_to_unicode().values())}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    for fam in ("qwen2", "gemma3-text"):
        tok.save(str(work / fam / "tokenizer.json"))


def families_check():
    """The GGUF fuse wrote from each, loaded by transformers (whose GGUF reader
    follows llama.cpp's converter), equals the source; so does fuse's own
    reading of that GGUF; and the logits agree."""
    from transformers import AutoModelForCausalLM
    for fam in ("qwen2", "gemma3-text"):
        src = load_file(work / fam / "model.safetensors")
        m = AutoModelForCausalLM.from_pretrained(work, gguf_file=f"{fam}.gguf", dtype=torch.float32).eval()
        got, back = m.state_dict(), load_file(work / f"{fam}-back" / "model.safetensors")
        worst = max(max((got[k] - v).abs().max().item(), (back[k] - v).abs().max().item()) for k, v in src.items())
        x = torch.tensor([[1, 5, 9, 33]])
        dl = (m(x).logits - AutoModelForCausalLM.from_pretrained(work / fam).eval()(x).logits).abs().max().item()
        assert worst == 0.0 and dl == 0.0, (fam, worst, dl)
        print(f"{fam}: GGUF written by fuse loads in transformers equal to the source, logits equal; fuse reads it back equal")


def spm_make():
    """A Llama with a SentencePiece tokenizer trained here on fuse's docs
    (byte fallback, a user-defined symbol) and one added special token."""
    import glob, shutil, sentencepiece as spm
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    docs = Path(__file__).resolve().parents[2]
    (work / "corpus.txt").write_text("\n".join(Path(f).read_text() for f in glob.glob(str(docs / "docs/*.md"))))
    spm.SentencePieceTrainer.train(input=str(work / "corpus.txt"), model_prefix=str(work / "sp"), vocab_size=400,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0,
                                   user_defined_symbols=["<tool>"], minloglevel=2)
    d = work / "llama-spm"
    d.mkdir(exist_ok=True)
    shutil.copy(work / "sp.model", d / "tokenizer.model")
    (d / "tokenizer_config.json").write_text('{"tokenizer_class": "LlamaTokenizer"}')
    tok = AutoTokenizer.from_pretrained(d)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_end|>"]})
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(d)
    tok.save_pretrained(d)


def spm_check():
    """The GGUF's vocabulary is what sentencepiece reports (llama.cpp's
    converter reads the same), and transformers' tokenizer built from the GGUF
    tokenizes like the model's own."""
    import gguf, sentencepiece as spm
    from transformers import AutoTokenizer
    sp = spm.SentencePieceProcessor(model_file=str(work / "sp.model"))
    r = gguf.GGUFReader(work / "llama-spm.gguf")
    f = lambda k: r.fields[k].contents()
    toks, scores, types = f("tokenizer.ggml.tokens"), f("tokenizer.ggml.scores"), f("tokenizer.ggml.token_type")
    kind = lambda i: (2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 5 if sp.is_unused(i)
                      else 6 if sp.is_byte(i) else 4 if sp.id_to_piece(i) == "<tool>" else 1)
    n = sp.get_piece_size()
    assert toks[:n] == [sp.id_to_piece(i) for i in range(n)] and scores[:n] == [sp.get_score(i) for i in range(n)]
    assert types[:n] == [kind(i) for i in range(n)] and toks[n:] == ["<|im_end|>"]
    g = AutoTokenizer.from_pretrained(work, gguf_file="llama-spm.gguf")
    h = AutoTokenizer.from_pretrained(work / "llama-spm")
    texts = ["Hello world merge recipes", "fuse run r.fuse -o out\n  indented 123 <tool>",
             (work / "corpus.txt").read_text()[:3000], "<|im_end|> done"]
    assert all(g(t, add_special_tokens=False)["input_ids"] == h(t, add_special_tokens=False)["input_ids"] for t in texts)
    print(f"SentencePiece Llama as GGUF: {len(toks)} tokens with sentencepiece's scores and types; "
          "transformers' GGUF tokenizer tokenizes like the model's own")


globals()[sys.argv[1]]()
