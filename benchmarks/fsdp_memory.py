"""Per-device memory of the compiled training step, FSDP against replicated parameters, for ViT-B/16 and ViT-L/14.

    python benchmarks/fsdp_memory.py [--per-device-batch 8] [--fsdp 1 8]

Nothing is allocated or run: the step is lowered on abstract arrays and compiled for the mesh (by default 8 fake
CPU devices when no accelerator is present), and XLA's `compiled.memory_analysis()` gives each device's bytes:
arguments (parameters, Adam's two moments, the batch), outputs, and temporaries (activations, gathered weights,
gradients). With fsdp = f the parameters and moments are split over f devices (wpce_jax/parallel.py).
Shapes: configs/vitb16_cc12m.py (B/16 image tower, 12-block width-512 text tower, bfloat16); L/14 swaps in the
ViT-L/14 image tower and CLIP L/14's width-768 text tower.
"""
import argparse
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")  # only affects the CPU platform

import jax  # noqa: E402

from wpce_jax.checkpoint import abstract_like  # noqa: E402
from wpce_jax.cli import load_config_file  # noqa: E402
from wpce_jax.config_validation import mode_settings  # noqa: E402
from wpce_jax.models.model_config import make_model  # noqa: E402
from wpce_jax.optimizer import make_optimizer  # noqa: E402
from wpce_jax.parallel import batch_sharding, make_mesh, replicated, state_shardings  # noqa: E402
from wpce_jax.train_step import initial_state, make_train_step  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 2 ** 20


def config_for(name: str, per_device_batch: int, fsdp: int):
    c = load_config_file(os.path.join(ROOT, "configs", "vitb16_cc12m.py"), "wpce")
    c.model.text.vocab_size, c.model.text.eot_id = 49408, 49407
    c.total_steps, c.batch_size, c.mesh.fsdp = 1000, per_device_batch * jax.device_count(), fsdp
    if name == "L/14":
        c.model.image.variant = "L/14"
        c.model.embed_dim = 768
        c.model.text.update(dict(width=768, heads=12, mlp_dim=3072))
    return c


def memory(config) -> dict:
    """Per-device bytes of the compiled step: arguments, outputs, temporaries, and parameter count."""
    mesh = make_mesh(fsdp=config.mesh.fsdp)
    model, tx = make_model(config), make_optimizer(config)
    abstract = jax.eval_shape(lambda: initial_state(model, tx, config, jax.random.key(0)))
    shardings = state_shardings(abstract, mesh)
    state = abstract_like(abstract, shardings)
    size, length = config.data.image_size, config.model.text.context_length
    rows = batch_sharding(mesh)
    batch = {"image": jax.ShapeDtypeStruct((config.batch_size, size, size, 3), jax.numpy.float32, sharding=rows),
             "tokens": jax.ShapeDtypeStruct((config.batch_size, length), jax.numpy.int32, sharding=rows)}
    step = jax.jit(make_train_step(model, config, mesh, tx, mode_settings(config)), donate_argnums=0,
                   out_shardings=(shardings, replicated(mesh)))
    stats = step.lower(state, batch).compile().memory_analysis()
    params = sum(x.size for x in jax.tree.leaves(abstract.params))
    return {"params": params, "arguments": stats.argument_size_in_bytes, "outputs": stats.output_size_in_bytes,
            "temporaries": stats.temp_size_in_bytes, "aliased": stats.alias_size_in_bytes}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-device-batch", type=int, default=8)
    parser.add_argument("--fsdp", type=int, nargs="+", default=[1, jax.device_count()])
    args = parser.parse_args()
    print(f"{jax.device_count()} x {jax.devices()[0].device_kind}, batch {args.per_device_batch} per device; "
          f"MiB per device")
    print(f"{'':>6} {'fsdp':>4} {'params':>8} {'arguments':>10} {'outputs':>9} {'temp':>9} {'total':>9} "
          f"{'vs fsdp ' + str(args.fsdp[0]):>11}")
    for name in ("B/16", "L/14"):
        base = None
        for fsdp in args.fsdp:
            m = memory(config_for(name, args.per_device_batch, fsdp))
            # Donated arguments alias the outputs they become: count those bytes once.
            total = m["arguments"] + m["outputs"] - m["aliased"] + m["temporaries"]
            base = base or total
            print(f"{name:>6} {fsdp:>4} {m['params'] / 1e6:>7.0f}M {m['arguments'] / MIB:>10.0f} "
                  f"{m['outputs'] / MIB:>9.0f} {m['temporaries'] / MIB:>9.0f} {total / MIB:>9.0f} "
                  f"{total / base:>11.2f}", flush=True)


if __name__ == "__main__":
    main()
