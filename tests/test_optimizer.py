"""AdamW decay mask, the warm-up + cosine schedule, clipping, one update per step, and the logit-scale bound."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from runs import DIGITS
from wpce_jax.cli import load_config_file
from wpce_jax.optimizer import clip_logit_scale, decay_mask, learning_rate_schedule, make_optimizer, num_updates


def config(**optim):
    c = load_config_file(DIGITS)
    c.total_steps = 100
    c.optim.update(dict(lr=1e-3, init_lr=1e-6, end_lr=1e-5, warmup_steps=10, **optim))
    return c


def test_schedule_warmup_then_cosine():
    schedule = learning_rate_schedule(config())
    lr = lambda s: float(schedule(s))
    # optax interpolates in float32 around the peak (1e-3): absolute rounding ~1e-10, hence rel 1e-4 at 1e-6.
    approx = lambda x: pytest.approx(x, rel=1e-4)
    assert lr(0) == approx(1e-6) and lr(10) == approx(1e-3)
    assert lr(5) == approx(1e-6 + 0.5 * (1e-3 - 1e-6))  # linear warm-up
    # Cosine from step 10 to 100: half-way (step 55) is the mean of peak and end.
    assert lr(55) == approx((1e-3 + 1e-5) / 2)
    assert lr(100) == approx(1e-5)


def test_decay_mask_matrices_only():
    params = {"dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3)}, "ln": {"scale": jnp.ones(3)},
              "attn": {"kernel": jnp.ones((3, 2, 4)), "bias": jnp.ones((2, 4))}, "cls_token": jnp.ones((1, 1, 3)),
              "pos_embed": jnp.ones((1, 5, 3)), "logit_scale": jnp.ones(()), "embed": {"embedding": jnp.ones((10, 3))}}
    assert decay_mask(params) == {"dense": {"kernel": True, "bias": False}, "ln": {"scale": False},
                                  "attn": {"kernel": True, "bias": False}, "cls_token": False, "pos_embed": True,
                                  "logit_scale": False, "embed": {"embedding": True}}


def test_decay_mask_on_the_real_model():
    from wpce_jax.models.model_config import init_params, make_model
    c = config()
    c.model.text.vocab_size, c.model.text.eot_id = 50, 49
    model = make_model(c)
    params = jax.eval_shape(lambda: init_params(model, jax.random.key(0), c))
    flat = {jax.tree_util.keystr(p): m for p, m in jax.tree_util.tree_flatten_with_path(decay_mask(params))[0]}
    decayed = {k for k, m in flat.items() if m}
    # Attention q/k/v biases are [heads, head_dim]: biases all the same, never decayed.
    assert not any("bias" in k or "scale" in k or "cls_token" in k or "logit_scale" in k for k in decayed)
    for must in ("['attn']['query']['kernel']", "['mlp']['fc1']['kernel']", "['token_embed']['embedding']",
                 "['text_encoder']['pos_embed']", "['image_encoder']['pos_embed']", "['patch_embed']['kernel']",
                 "['text_head']['weights']['kernel']", "['image_head']['points']['kernel']"):
        assert any(must in k for k in decayed), must
    assert any("['attn']['key']['bias']" in k for k in flat)


def test_weight_decay_touches_only_masked_parameters():
    params = {"w": {"kernel": jnp.full((3, 2), 2.0)}, "b": {"bias": jnp.full((2,), 2.0)}}
    tx = make_optimizer(config(weight_decay=0.5))
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    # With zero gradients AdamW's update is -lr * wd * param, for decayed leaves only.
    np.testing.assert_allclose(np.asarray(updates["w"]["kernel"]), -1e-6 * 0.5 * 2.0, rtol=1e-5)  # float32 lr
    np.testing.assert_array_equal(np.asarray(updates["b"]["bias"]), 0.0)


def test_gradient_clipping():
    params = {"w": jnp.ones((2, 2))}
    grads = {"w": jnp.full((2, 2), 100.0)}
    tx_clip, tx_raw = make_optimizer(config(grad_clip_norm=1.0, weight_decay=0.0)), optax.clip_by_global_norm(1.0)
    clipped, _ = tx_raw.update(grads, tx_raw.init(params))
    assert float(optax.tree.norm(clipped)) == pytest.approx(1.0)
    # Adam normalises, so compare the second moment Adam saw: it must come from the clipped gradient (0.5 each).
    _, state = tx_clip.update(grads, tx_clip.init(params), params)
    nu = optax.tree.get(state, "nu")["w"]
    np.testing.assert_allclose(np.asarray(nu), (1 - 0.98) * 0.5**2, rtol=1e-5)


def test_accum_steps_leaves_the_optimiser_and_schedule_alone():
    # accum_steps splits a train step's batch (train_step.make_grad_fn); the optimiser updates on every call with
    # the gradient it is given, and the schedule counts train steps (tests/test_accumulation.py runs the step).
    params = {"w": jnp.ones((2, 2))}
    split, plain = config(accum_steps=4, weight_decay=0.0), config(weight_decay=0.0)
    assert num_updates(split) == num_updates(plain) == 100
    for s in (0, 5, 10, 55, 100):
        assert float(learning_rate_schedule(split)(s)) == float(learning_rate_schedule(plain)(s))
    tx, reference = make_optimizer(split), make_optimizer(plain)
    state, ref_state = tx.init(params), reference.init(params)
    for g in (1.0, 3.0):
        grads = {"w": jnp.full((2, 2), g)}
        (u, state), (want, ref_state) = tx.update(grads, state, params), reference.update(grads, ref_state, params)
        assert np.any(np.asarray(u["w"]))  # an update on every call
        np.testing.assert_array_equal(np.asarray(u["w"]), np.asarray(want["w"]))


@pytest.mark.parametrize("similarity,low,high", [("wpce", 1.0, 100.0), ("clip", 0.0, math.log(100.0))])
def test_logit_scale_clip(similarity, low, high):
    for value, want in ((-5.0, low), (500.0, high), ((low + high) / 2, (low + high) / 2)):
        params = {"logit_scale": jnp.float32(value), "w": jnp.ones(2)}
        out = clip_logit_scale(params, similarity, 1.0, 100.0)
        assert float(out["logit_scale"]) == pytest.approx(want, rel=1e-6)
        assert out["w"] is params["w"]
