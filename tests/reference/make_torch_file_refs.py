"""Writes the golden files for tests/test_weights_readers.py with PyTorch, OmegaConf, safetensors and the reference
release's CLIP tokenizer; the tests themselves never import torch.

Run from the repository root in a scratch venv (never the project's):
    python3 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch==2.13.0 omegaconf safetensors numpy ftfy regex
    /tmp/torchvenv/bin/python tests/reference/make_torch_file_refs.py /path/to/sony-wpse/tokenizer.py

The last argument is the sony/wpse release's tokenizer.py (OpenAI CLIP's SimpleTokenizer as the release ships it);
it reads tests/reference/bpe_simple_vocab_16e6.txt.gz.

Outputs in tests/reference/torch_files/:
  checkpoint.pt      the release's checkpoint layout {"epoch", "state_dict", "optimizer", "scaler", "best_acc1",
                     "args"}: every dtype, views (transposed, sliced with a storage offset, expanded), two tensors
                     sharing a storage, a Parameter, a 0-d and an empty tensor; args an OmegaConf DictConfig.
  new_dtypes.pt      uint16/32/64 and float8 tensors (torch writes these with _rebuild_tensor_v3).
  big_endian.pt      a state dict rewritten with byteorder "big" and byte-swapped storages (torch.load reads it
                     back equal to the original: checked here).
  torchscript.pt     a TorchScript archive (must be refused with advice).
  legacy.pt          the pre-1.6 non-zip format (must be refused with advice).
  weights.safetensors  float32, float16, bfloat16, int64.
  expected.json      each file's expected tree; arrays as {"__array__": npz key, "dtype": name}, tuples as
                     {"__tuple__": [...]}, dicts with non-string keys as {"__items__": [[k, v], ...]}.
  expected.npz       the arrays (bfloat16 / float8 as their unsigned-integer bits).
  tokenizer_captions.json  the captions (hand-written hard cases, then 300 random ones).
  tokenizer_ids.npz  the release's SimpleTokenizer on them: encode() ids (encode_flat cut by encode_lengths),
                     OpenAI clip.tokenize(truncate=True) rows at context 77 (tokenize_77_truncate: a long caption
                     ends in the end token), and the release's own __call__ rows (release_call_77: cut at 77).
"""

import importlib.util
import io
import json
import os
import sys
import zipfile

import numpy as np
import torch
from omegaconf import OmegaConf, open_dict
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "torch_files")

arrays = {}


def _bits(t):
    """A tensor's values as a NumPy array; dtypes NumPy lacks as unsigned-integer bits."""
    name = str(t.dtype).removeprefix("torch.")
    t = t.detach().contiguous()
    if name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        t = t.view(torch.int16 if t.element_size() == 2 else torch.uint8)
        a = t.numpy().view(np.uint16 if t.element_size() == 2 else np.uint8)
    else:
        a = t.numpy()
    return name, a.copy()


def encode(x, path):
    """JSON-able expected tree; arrays go to `arrays` under their path."""
    if isinstance(x, torch.Tensor):
        name, a = _bits(x)
        arrays[path] = a
        return {"__array__": path, "dtype": name}
    if OmegaConf.is_config(x):
        return encode(OmegaConf.to_container(x, resolve=False), path)
    if isinstance(x, dict):
        if all(isinstance(k, str) for k in x):
            return {k: encode(v, f"{path}/{k}") for k, v in x.items()}
        return {"__items__": [[k, encode(v, f"{path}/{k}")] for k, v in x.items()]}
    if isinstance(x, tuple):
        return {"__tuple__": [encode(v, f"{path}/{i}") for i, v in enumerate(x)]}
    if isinstance(x, list):
        return [encode(v, f"{path}/{i}") for i, v in enumerate(x)]
    assert x is None or isinstance(x, (bool, int, float, str)), type(x)
    return x


def checkpoint():
    g = torch.Generator().manual_seed(0)
    sd = {}
    for dt in [torch.float32, torch.float64, torch.float16, torch.bfloat16]:
        sd[f"dtype.{str(dt)[6:]}"] = torch.randn(3, 5, generator=g).to(dt)
    for dt in [torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8]:
        info = torch.iinfo(dt)
        sd[f"dtype.{str(dt)[6:]}"] = torch.randint(info.min, info.max, (4, 3), generator=g, dtype=dt)
    sd["dtype.bool"] = torch.rand(7, generator=g) > 0.5
    base = torch.randn(4, 6, generator=g)
    sd["view.transposed"] = base.t()  # stride (1, 6)
    sd["view.sliced"] = base[1:3, 2:5]  # storage offset 8, stride (6, 1): shares base's storage
    sd["view.base"] = base
    sd["view.expanded"] = torch.randn(3, 1, generator=g).expand(3, 4)  # stride (1, 0)
    sd["view.step"] = torch.arange(20, dtype=torch.int32)[3::4]  # offset 3, stride 4
    sd["scalar"] = torch.tensor(2.6592)  # 0-d, like logit_scale
    sd["empty"] = torch.zeros(0, 3)
    sd["param"] = torch.nn.Parameter(torch.randn(2, 3, generator=g))
    torch.manual_seed(0)  # the Linear initialisation below
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.5)
    model(torch.randn(4, 3, generator=g)).sum().backward()
    opt.step()
    # The release's Hydra config, with the structure its main.py saves (args mutated after composition).
    args = OmegaConf.create({
        "model": {"_target_": "models.CLIP_WPSE_VITB16", "weight_act": {"_target_": "models.ScaledTanh"},
                  "rff_dim": 1024, "sigma": 0.5},
        "criterion": {"_target_": "losses.WPSELoss", "a_lin": 0.667, "a_rff": 0.333},
        "dataset": {"name": "cc3m", "root": "/data/cc3m", "metadata": None},
        "lr": 5e-4, "lr_start": 1e-6, "lr_end": 1e-5, "betas": [0.9, 0.98], "eps": 1e-8, "wd": 0.5,
        "epochs": 32, "warmup_epochs": 1, "batch_size": 256, "disable_scaler": False, "resume": "",
        "output_dir": "./output/wpse", "seed": 0, "imagenet_valsplit": "val",
        "lr_peak": "${lr}", "train_data": "???",  # an interpolation and a missing value stay as written
        "note": "caf\u00e9 \u2014 \U0001F600", "nested_list": [[1, 2], {"a": None, "b": "x"}, 3.5, True],
    })
    OmegaConf.set_struct(args, True)
    with open_dict(args):
        args.rank, args.world_size, args.gpu, args.distributed = 0, 8, 0, True
    return {"epoch": 3, "state_dict": sd, "optimizer": opt.state_dict(),
            "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                       "_growth_tracker": 17},
            "best_acc1": 12.25, "args": args}


def big_endian(path, original):
    """Rewrites a torch zip as a big-endian machine would have written it: byteorder "big", storages swapped.

    torch.save numbers storages "0", "1", ... in the order it meets them; each tensor of `original` owns one.
    """
    units = {str(i): (t.element_size() // 2 if t.is_complex() else t.element_size())
             for i, t in enumerate(original.values())}
    zin = zipfile.ZipFile(path)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in info.filename:
                unit = units[info.filename.rsplit("/", 1)[1]]
                if unit > 1:
                    data = np.frombuffer(data, f"<u{unit}").astype(f">u{unit}").tobytes()
            zout.writestr(info, data)
    return buf.getvalue()


def main():
    os.makedirs(OUT, exist_ok=True)
    expected = {}
    ckpt = checkpoint()
    torch.save(ckpt, f"{OUT}/checkpoint.pt")
    expected["checkpoint.pt"] = encode(ckpt, "checkpoint")

    new = {"uint16": torch.tensor([0, 1, 65535], dtype=torch.uint16),
           "uint32": torch.tensor([0, 7, 2**32 - 1], dtype=torch.uint32),
           "uint64": torch.tensor([0, 9, 2**63 + 5], dtype=torch.uint64),
           "float8_e4m3fn": torch.tensor([0.5, -2.0, 448.0]).to(torch.float8_e4m3fn),
           "float8_e5m2": torch.tensor([0.25, -3.0, 57344.0]).to(torch.float8_e5m2)}
    torch.save(new, f"{OUT}/new_dtypes.pt")
    expected["new_dtypes.pt"] = {k: {"__array__": f"new/{k}", "dtype": k} for k in new}
    for k, t in new.items():
        arrays[f"new/{k}"] = _bits(t)[1] if "float8" in k else t.view(
            {"uint16": torch.int16, "uint32": torch.int32, "uint64": torch.int64}[k]).numpy().view(
            {"uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64}[k]).copy()

    g = torch.Generator().manual_seed(1)
    little = {"f32": torch.randn(2, 3, generator=g), "f64": torch.randn(3, generator=g, dtype=torch.float64),
              "bf16": torch.randn(4, generator=g).bfloat16(), "i16": torch.tensor([1, -2, 300], dtype=torch.int16),
              "c64": torch.randn(2, generator=g, dtype=torch.complex64)}
    torch.save(little, f"{OUT}/little.tmp")
    big = big_endian(f"{OUT}/little.tmp", little)
    os.remove(f"{OUT}/little.tmp")
    with open(f"{OUT}/big_endian.pt", "wb") as f:
        f.write(big)
    back = torch.load(f"{OUT}/big_endian.pt", weights_only=True)
    for k, t in little.items():
        assert torch.equal(back[k], t), k  # torch itself reads the rewritten file as the original
    expected["big_endian.pt"] = {k: encode(t, f"big/{k}") for k, t in little.items()}

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(2))

        def forward(self, x):
            return x * self.w

    torch.jit.save(torch.jit.script(Tiny()), f"{OUT}/torchscript.pt")
    torch.save({"w": torch.ones(2)}, f"{OUT}/legacy.pt", _use_new_zipfile_serialization=False)

    st = {"f32": torch.randn(3, 4, generator=g), "f16": torch.randn(5, generator=g).half(),
          "bf16": torch.randn(2, 3, generator=g).bfloat16(), "i64": torch.tensor([[1, -(2**40)]])}
    save_file(st, f"{OUT}/weights.safetensors")
    expected["weights.safetensors"] = {k: encode(t, f"st/{k}") for k, t in st.items()}

    with open(f"{OUT}/expected.json", "w") as f:
        json.dump(expected, f, indent=1, ensure_ascii=False)
    np.savez_compressed(f"{OUT}/expected.npz", **arrays)

    if len(sys.argv) > 1:
        tokenizer_goldens(sys.argv[1])


# Hand-written captions: the cases where a tokenizer can go wrong.
SPECIAL_CAPTIONS = [
    "a photo of a dog", "A Photo Of A DOG.", "  leading, trailing   and\tinner \n whitespace  ",
    "caf\u00e9 cr\u00e8me br\u00fbl\u00e9e na\u00efve fa\u00e7ade \u00fcber \u00c5ngstr\u00f6m",
    "cafe\u0301 (a decomposed accent)", "emoji \U0001F600\U0001F436 \U0001F468\u200d\U0001F469\u200d\U0001F467 "
    "\U0001F44D\U0001F3FD flags \U0001F1EF\U0001F1F5", "Tom &amp; Jerry", "it&#39;s &quot;quoted&quot; &lt;b&gt;",
    "double &amp;amp; escaped &amp;#39;", "I'M HERE, it's, we're, they've, I'll, he'd, don't",
    "numbers 2024 3.14159 1,000,000 and 42nd", "\u201ccurly\u201d \u2018quotes\u2019 and \u2014 dashes \u2026",
    "\ufb01ne \ufb02ower ligatures", "\uff26\uff55\uff4c\uff4c\uff57\uff49\uff44\uff54\uff48 \uff11\uff12\uff13",
    "\u4e00\u53ea\u732b\u5728\u7761\u89c9 \u65e5\u672c\u8a9e\u306e\u6587\u7ae0 \ud55c\uad6d\uc5b4",
    "\u0645\u0631\u062d\u0628\u0627 \u05e9\u05dc\u05d5\u05dd \u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac "
    "\u0440\u0443\u0441\u0441\u043a\u0438\u0439", "non\u00a0breaking\u2003em space\u3000ideographic",
    "tabs\tand\r\nwindows line\rbreaks", "url https://example.com/a_b?c=d&e=f#g", "email name@example.org",
    "punctuation!!! ??? ... --- ((brackets)) [x] {y} <z>", "#hashtag @mention $5 100% a+b=c",
    "", " ", "a", "\u00e9", "\U0001F600", "x" * 300, "supercalifragilisticexpialidocious " * 3,
    "word " * 100, "\u00e9\u00e8\u00ea " * 60, "\U0001F600 " * 90,
    "It\u2019s a dog\u2019s life", "caf\u00c3\u00a9 (mojibake)", "control\x00chars\x07here\x1b[31mred\x1b[0m",
    "zero\u200bwidth\u200cjoiner\ufeffbom", "MIXED case \u00c9COLE \u00df stra\u00dfe \u0130stanbul",
]

WORDS = ("a photo of the dog cat bird car street tree house man woman child playing running sitting on in at "
         "with red blue green small large old new beautiful night day city beach mountain river food table "
         "caf\u00e9 na\u00efve pi\u00f1ata jalape\u00f1o se\u00f1or M\u00fcnchen Z\u00fcrich S\u00e3o Paulo "
         "Krak\u00f3w \u00c5rhus Dvo\u0159\u00e1k").split()
EXTRAS = ["&amp;", "&#39;", "&quot;", "\U0001F600", "\U0001F525", "\u2764\ufe0f", "  ", "\t", "!", "?", ",",
          "'s", "'ll", "2019", "#1", "x2", "\u2014", "...", "(", ")", "\u00a9", "\u00ae", "\u2122", "50%"]


def captions():
    """SPECIAL_CAPTIONS and 300 random ones from WORDS and EXTRAS (some over 77 tokens)."""
    rng = np.random.default_rng(0)
    out = list(SPECIAL_CAPTIONS)
    for i in range(300):
        n = int(rng.integers(1, 90 if i % 10 == 0 else 20))
        parts = []
        for _ in range(n):
            w = str(rng.choice(WORDS)) if rng.random() < 0.8 else str(rng.choice(EXTRAS))
            parts.append(w.capitalize() if rng.random() < 0.1 else w)
        out.append(" ".join(parts) if rng.random() < 0.8 else "".join(parts))
    return out


def tokenizer_goldens(tokenizer_py):
    spec = importlib.util.spec_from_file_location("release_tokenizer", tokenizer_py)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    tok = mod.SimpleTokenizer(os.path.join(HERE, "bpe_simple_vocab_16e6.txt.gz"))
    texts = captions()
    encoded = [tok.encode(t) for t in texts]
    sot, eot = tok.encoder["<|startoftext|>"], tok.encoder["<|endoftext|>"]
    rows = np.zeros((len(texts), 77), np.int32)
    for i, ids in enumerate(encoded):  # OpenAI's clip.tokenize(texts, 77, truncate=True)
        ids = [sot] + ids + [eot]
        if len(ids) > 77:
            ids = ids[:77]
            ids[-1] = eot
        rows[i, :len(ids)] = ids
    # The release's own SimpleTokenizer.__call__ cuts at 77 and so drops the end token of long captions.
    release_rows = tok(texts, context_length=77).numpy().astype(np.int32)
    with open(f"{OUT}/tokenizer_captions.json", "w") as f:
        json.dump(texts, f, ensure_ascii=False, indent=0)
    np.savez_compressed(
        f"{OUT}/tokenizer_ids.npz", encode_flat=np.concatenate([np.asarray(e, np.int32) for e in encoded]),
        encode_lengths=np.asarray([len(e) for e in encoded], np.int32), tokenize_77_truncate=rows,
        release_call_77=release_rows)


if __name__ == "__main__":
    main()
