"""The run record (DIR/config.json) and the resume check: fields that change the computation must match the
checkpoint's, the others may change with a line each."""
import json

import pytest
from ml_collections import ConfigDict

from wpce_jax import run_record
from wpce_jax.checkpoint import config_to_json
from runs import tiny_config


def test_compare_separates_fatal_and_allowed_changes(cache_dir):
    saved = config_to_json(tiny_config(cache_dir))
    current = tiny_config(cache_dir, **{"model.embed_dim": 32, "wpce.kernel": "imq", "seed": 1,
                                        "optim.lr": 2e-3, "batch_size": 64, "data.crop_scale": (0.5, 1.0),
                                        "eval_every_steps": 7, "data.worker_count": 2, "total_steps": 60,
                                        "eval.zeroshot": ""})
    fatal, allowed = run_record.compare(saved, current)
    assert [line.split(":")[0] for line in fatal] == ["batch_size", "data.crop_scale", "model.embed_dim",
                                                      "optim.lr", "seed", "wpce.kernel"]
    assert "model.embed_dim: 16 -> 32" in fatal
    assert [line.split(":")[0] for line in allowed] == ["data.worker_count", "eval.zeroshot", "eval_every_steps",
                                                        "total_steps"]
    assert run_record.compare(saved, tiny_config(cache_dir)) == ([], [])


def test_fields_the_checkpoint_lacks_are_allowed(cache_dir):
    saved = config_to_json(tiny_config(cache_dir))
    del saved["objective"]  # a checkpoint from before the field existed
    fatal, allowed = run_record.compare(saved, tiny_config(cache_dir))
    assert fatal == [] and allowed == ["objective: (absent) -> 'infonce'"]


def test_values_of_older_configs_that_mean_the_same_are_equal(cache_dir):
    saved = config_to_json(tiny_config(cache_dir))
    saved["model"]["remat"] = False  # written before remat policies
    assert run_record.compare(saved, tiny_config(cache_dir)) == ([], [])
    saved["model"]["remat"] = True
    assert run_record.compare(saved, tiny_config(cache_dir))[0] == ["model.remat: 'full' -> 'none'"]


def test_check_resume_lists_every_fatal_field(cache_dir):
    saved = config_to_json(tiny_config(cache_dir))
    with pytest.raises(run_record.ConfigChangedError, match=r"step-20 checkpoint(.|\n)*model.embed_dim: 16 -> 32"
                                                            r"(.|\n)*wpce.scale: 0.5 -> 1.0"):
        run_record.check_resume(saved, tiny_config(cache_dir, **{"model.embed_dim": 32, "wpce.scale": 1.0}), 20)


def test_write_records_config_versions_and_commit(cache_dir, tmp_path):
    config = tiny_config(cache_dir)
    path = run_record.write(tmp_path, config, "jax on cpu")
    record = json.loads(path.read_text())
    assert record["config"] == config_to_json(config)
    assert {"python", "jax", "flax", "optax", "orbax-checkpoint", "grain", "numpy"} <= set(record["versions"])
    assert record["platform"] == "jax on cpu" and record["started"]
    # The tests run from the project's git checkout: a 40-hex commit, "+dirty" when files are modified.
    assert record["git_commit"] is None or len(record["git_commit"].split("+")[0]) == 40
    assert ConfigDict(record["config"]).model.embed_dim == 16
