"""A digits run whose workdir, training records and tokenizer are all gs:// URIs trains, resumes exactly and loads
in a notebook. The bucket is an in-process fake GCS server (gcp-storage-emulator); every client the code uses talks
to it through its documented emulator setting, so the code path is the real one: etils.epath through gcsfs,
Orbax's TensorStore "gcs" driver, array_record's own GCS reader, google-cloud-storage."""
import json
import os
from http import HTTPStatus

import jax
import numpy as np
import pytest
from etils import epath

from wpce_jax import checkpoint
from wpce_jax.data.run_data import prepare_digits
from runs import final_params, free_port, losses, tiny_config, train_here

BUCKET = "wpce-test"


def _download_like_gcs(real):
    """The emulator's media download without two things real GCS does and TensorStore's OCDBT (Orbax) relies on:
    the x-goog-generation header, and 304 Not Modified for ifGenerationNotMatch=<current generation>."""
    def download(request, response, storage, *args, **kwargs):
        try:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        except Exception:  # noqa: BLE001 - not found: the emulator's own answer
            return real(request, response, storage, *args, **kwargs)
        generation = str(obj["generation"])
        response["x-goog-generation"] = generation
        if request.query.get("ifGenerationNotMatch", [None])[0] == generation:
            response.status = HTTPStatus.NOT_MODIFIED
            return None
        return real(request, response, storage, *args, **kwargs)

    return download


@pytest.fixture(scope="module")
def gcs():
    server_module = pytest.importorskip("gcp_storage_emulator.server")
    from gcp_storage_emulator.handlers import objects
    port = free_port()
    server = server_module.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    url = f"http://127.0.0.1:{port}"
    patch = pytest.MonkeyPatch()
    patch.setattr(objects, "download", _download_like_gcs(objects.download))
    for name, value in {"STORAGE_EMULATOR_HOST": url,            # gcsfs (epath) and google-cloud-storage
                        "FSSPEC_GCS_TOKEN": "anon",              # gcsfs: no credential lookup
                        "TENSORSTORE_GCS_HTTP_URL": url,         # Orbax's array data
                        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake",  # TensorStore: no credential lookup
                        "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,  # array_record's reader (grain)
                        }.items():
        patch.setenv(name, value)
    yield f"gs://{BUCKET}"
    patch.undo()
    server.stop()


def upload(local: str, remote: epath.Path) -> None:
    for root, _, files in os.walk(local):
        for name in files:
            target = remote / os.path.relpath(os.path.join(root, name), local)
            target.parent.mkdir(parents=True, exist_ok=True)
            epath.Path(root, name).copy(target, overwrite=True)


def gs_losses(workdir: epath.Path) -> dict:
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


def test_a_run_on_gs_trains_resumes_exactly_and_loads(gcs, cache_dir, digits_run, capsys):
    built = prepare_digits(tiny_config(cache_dir))
    data = epath.Path(gcs) / "digits"
    upload(built.train_dir, data / "train")
    epath.Path(built.tokenizer_path).copy(data / "spm.model", overwrite=True)
    workdir = epath.Path(gcs) / "run"
    # The built-in run's data, read as a converted dataset from the bucket: the same computation as digits_run.
    overrides = {"data.kind": "arrayrecord", "data.train_dir": str(data / "train"), "data.tokenizer": "sentencepiece",
                 "data.tokenizer_path": str(data / "spm.model")}
    train_here(workdir, cache_dir, **overrides)  # in this process, as the command line trains
    assert gs_losses(workdir) == losses(digits_run)
    assert {"config.json", "metrics.jsonl", "checkpoints", "tokenizer", "tensorboard", "eval"} <= {
        p.name for p in workdir.iterdir()} and not (workdir / "run.lock").exists()
    assert json.loads((workdir / "eval" / "step_30.json").read_text())["zeroshot/digits/top1"] > 0
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))

    (workdir / "checkpoints" / "30").rmtree()  # as if the run had died after step 29
    capsys.readouterr()
    train_here(workdir, cache_dir, **overrides)
    assert "resumed from the step-20 checkpoint" in capsys.readouterr().out
    assert gs_losses(workdir) == losses(digits_run)  # steps 21-30 again, bit-identical, each once

    model = checkpoint.load(str(workdir))
    assert model.step == 30 and model.config.data.tokenizer_path == str(workdir / "tokenizer" / "spm.model")
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, model.params), final_params(digits_run))
