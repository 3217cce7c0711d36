"""Every config file builds and validates with each argument its docstring documents, and refuses any other with one
line that names the file and the allowed values."""
import os
import subprocess
import sys

import pytest

from wpce_jax.cli import ConfigFileParser
from wpce_jax.config_validation import validate
from runs import ROOT

SIMILARITIES = ["wpce", "clip"]
KINDS = ["softmax", "pairwise_logistic", "approx_ndcg", "pointwise_sigmoid", "infonce"]
LOSSES = ["triplet", "margin_contrastive"]
DOCUMENTED = {  # file -> the arguments its docstring lists (None: no ":ARG")
    "digits.py": [None, *SIMILARITIES],
    "digit_pairs.py": [None, *SIMILARITIES, *(f"{s},{k}" for s in SIMILARITIES for k in KINDS)],
    "digits_two_view.py": [None, *SIMILARITIES],
    "digits_labelled.py": [None, *SIMILARITIES, *(f"{s},{m}" for s in SIMILARITIES for m in LOSSES)],
    "compositional.py": [None, "wpce", "clip", "clip_wide"],
    "dml.py": [None, "cub", "cars", "sop", "cub,clip", "sop,margin_contrastive",
               *(f"{d},{s},{m}" for d in ("cub", "cars", "sop") for s in SIMILARITIES for m in LOSSES)],
    "finetune_clip.py": [None, "lit", "full", *(f"{m},{s}" for m in ("lit", "full") for s in SIMILARITIES)],
    "vitb16_cc12m.py": [None, *SIMILARITIES],
    "cifar100_hierarchy.py": [None, "ranking", "labelled", *(f"ranking,{s}" for s in SIMILARITIES),
                              *(f"ranking,{s},{k}" for s in SIMILARITIES for k in KINDS), "labelled,clip"],
}


def load(name, arg=None):
    path = os.path.join(ROOT, "configs", name)
    return ConfigFileParser("config", lock_config=False).parse(path if arg is None else f"{path}:{arg}")


def test_every_config_file_is_listed():
    assert sorted(DOCUMENTED) == sorted(f for f in os.listdir(os.path.join(ROOT, "configs"))
                                        if f.endswith(".py") and f not in ("__init__.py", "common.py"))


@pytest.mark.parametrize("name,arg", [(n, a) for n, args in DOCUMENTED.items() for a in args])
def test_documented_arguments_validate(name, arg, tmp_path):
    config = load(name, arg)
    # What the command line or the data fills in: paths (not read here) and the tokenizer's vocabulary.
    for field, value in (("data.train_dir", str(tmp_path / "train")), ("data.tokenizer_path", str(tmp_path / "tok")),
                         ("eval.image_retrieval", f"test=arrayrecord:{tmp_path / 'test'}")):
        node, leaf = config, field.split(".")
        if node[leaf[0]][leaf[1]] is None:
            node[leaf[0]][leaf[1]] = value
    if config.require_init_from:
        config.init_from = str(tmp_path / "source")
    validate(config)
    for choice in (arg or "").split(","):  # every part of the argument shows in the config
        assert choice in ("", "cub", "cars", "sop", "lit", "full", "clip_wide", "ranking", "labelled") or choice in (
            config.model.similarity, config.ranking.kind, config.get("metric_loss"))


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_bad_argument_is_one_line(name):
    with pytest.raises(ValueError) as error:
        load(name, "nope")
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"configs/{name} takes") and message.endswith("got 'nope'")
    for arg in DOCUMENTED[name]:
        for part in (arg or "").split(","):
            assert f"{part}'" in message


def test_config_loads_from_another_working_directory(tmp_path):
    """`python -m wpce_jax.main --config=/abs/configs/X.py` with wpce_jax importable but not the repository root (an
    installed package): the configs still find their package. A bad argument is one line on the command line too."""
    os.symlink(os.path.join(ROOT, "wpce_jax"), tmp_path / "wpce_jax")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    config = os.path.join(ROOT, "configs", "digits_labelled.py")
    out = subprocess.run([sys.executable, "-c", "from wpce_jax.cli import ConfigFileParser; "
                          f"print(ConfigFileParser('config').parse({config + ':clip'!r}).model.similarity)"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.split() == ["clip"], out.stderr[-3000:]
    out = subprocess.run([sys.executable, "-m", "wpce_jax.main", f"--config={config}:cosine",
                          f"--workdir={tmp_path / 'run'}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "configs/digits_labelled.py takes" in lines[0], out.stderr
