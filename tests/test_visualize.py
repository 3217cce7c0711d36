"""wpce_jax.visualize draws what it is given (exact arrays, a colour scale centred at 0), and LoadedModel's point
clouds are the towers' own."""
import io

import matplotlib
import numpy as np
import pytest
from matplotlib.image import AxesImage

from wpce_jax import visualize

matplotlib.use("Agg")

RNG = np.random.default_rng(0)


def _images(n, side=32):
    return RNG.integers(0, 256, size=(n, side, side, 3), dtype=np.uint8)


def _renders(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)
    assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


def _axes_images(ax):
    return [c for c in ax.get_children() if isinstance(c, AxesImage)]


def _is_blue(rgba):
    r, _, b, _ = rgba
    return b > r + 0.1


def _is_red(rgba):
    r, _, b, _ = rgba
    return r > b + 0.1


def test_weight_norm_is_centred_at_zero_and_covers_every_weight():
    w = np.array([[-0.5, 2.0, 0.1], [3.0, -4.0, 0.0]])
    norm = visualize.weight_norm(w)
    assert norm.vmin == -4.0 and norm.vmax == 4.0
    assert norm(0.0) == pytest.approx(0.5)
    assert norm(-4.0) == pytest.approx(0.0) and norm(3.0) == pytest.approx(0.875)
    assert all(0 <= norm(x) <= 1 for x in w.ravel())
    assert visualize.weight_norm(np.zeros((2, 3))).vmax == 1.0  # all-zero weights still give a usable scale
    with pytest.raises(ValueError, match="finite"):
        visualize.weight_norm(np.array([np.nan, 1.0]))


def test_image_weight_heatmaps_draw_each_patch_weight_on_a_zero_centred_diverging_scale():
    images = _images(3)
    weights = RNG.normal(size=(3, 17))
    weights[1, 5] = -7.5   # the most extreme weight is negative
    weights[2, 0] = 2.0    # a class token
    fig = visualize.image_weight_heatmaps(images, weights, patch_grid=(4, 4), titles=["a", "b", "c"])
    main = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(main) == 6 and len(fig.axes) == 7  # images, heatmaps, one colour bar
    for i in range(3):
        top, bottom = _axes_images(main[i]), _axes_images(main[3 + i])
        assert len(top) == 1 and np.array_equal(top[0].get_array(), images[i])
        gray, heat = bottom  # the image in gray, the heatmap over it
        np.testing.assert_array_equal(np.asarray(heat.get_array()), weights[i, 1:].reshape(4, 4))
        assert heat.get_extent() == [-0.5, 31.5, 31.5, -0.5]  # each cell covers its 8x8 patch
        norm = heat.norm
        assert norm.vmin == -7.5 and norm.vmax == 7.5 and norm(0.0) == pytest.approx(0.5)
        assert norm.vmin <= weights.min() and norm.vmax >= weights.max()
        assert main[3 + i].get_xlabel() == f"cls {weights[i, 0]:+.2f}"
    heat = _axes_images(main[4])[1]
    negative = heat.to_rgba(np.array([[-7.5]]))[0, 0]
    positive = heat.to_rgba(np.array([[7.5]]))[0, 0]
    assert heat.norm(-7.5) < 0.5 and _is_blue(negative) and _is_red(positive)
    assert fig.axes[-1].get_label() == "<colorbar>"
    _renders(fig)


def test_image_weight_heatmaps_infer_a_square_grid_and_reject_a_wrong_one():
    fig = visualize.image_weight_heatmaps(_images(2), RNG.normal(size=(2, 10)))  # 1 + 3x3
    assert _axes_images(fig.axes[2])[1].get_array().shape == (3, 3)
    with pytest.raises(ValueError, match="square patch grid"):
        visualize.image_weight_heatmaps(_images(2), RNG.normal(size=(2, 11)))
    with pytest.raises(ValueError, match="patch_grid"):
        visualize.image_weight_heatmaps(_images(2), RNG.normal(size=(2, 17)), patch_grid=(3, 3))
    with pytest.raises(ValueError, match=r"\[N, M\]"):
        visualize.image_weight_heatmaps(_images(2), RNG.normal(size=(3, 17)))


def test_text_weight_bars_draw_one_bar_per_token_with_its_sign_and_colour():
    tokens = [["<sot>", "▁a", "▁seven", "<eot>", "<pad>"], ["<sot>", "▁the", "▁7", "<eot>", "<pad>"]]
    weights = np.array([[0.1, -2.0, 3.0, 0.0, -0.4], [1.0, 0.5, -1.0, 2.5, 0.2]])
    fig = visualize.text_weight_bars(tokens, weights)
    main = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(main) == 2 and len(fig.axes) == 3
    for ax, toks, w in zip(main, tokens, weights):
        bars = ax.patches
        np.testing.assert_allclose([b.get_height() for b in bars], w)
        assert [t.get_text() for t in ax.get_xticklabels()] == toks
        assert ax.get_ylim() == pytest.approx((-3.3, 3.3))  # symmetric about 0, shared
        for b, x in zip(bars, w):
            if x < -0.5:
                assert _is_blue(b.get_facecolor())
            if x > 0.5:
                assert _is_red(b.get_facecolor())
    with pytest.raises(ValueError, match=r"\[N, L\]"):
        visualize.text_weight_bars(tokens, weights[:, :4])
    _renders(fig)


def test_similarity_matrix_shows_exactly_the_given_scores():
    scores = RNG.normal(size=(4, 6))
    rows, cols = [f"r{i}" for i in range(4)], [f"c{j}" for j in range(6)]
    fig = visualize.similarity_matrix(scores, rows, cols, title="t")
    assert len(fig.axes) == 2  # the matrix and its colour bar
    ax = fig.axes[0]
    (im,) = _axes_images(ax)
    np.testing.assert_array_equal(np.asarray(im.get_array()), scores)
    assert im.norm.vmin == scores.min() and im.norm.vmax == scores.max()
    assert [t.get_text() for t in ax.get_xticklabels()] == cols
    assert [t.get_text() for t in ax.get_yticklabels()] == rows
    assert sorted(float(t.get_text()) for t in ax.texts) == pytest.approx(sorted(np.round(scores.ravel(), 2)))
    assert not visualize.similarity_matrix(RNG.normal(size=(20, 20))).axes[0].texts  # no annotation when large
    with pytest.raises(ValueError, match="col_labels"):
        visualize.similarity_matrix(scores, rows, cols[:5])
    _renders(fig)


def test_zeroshot_grid_titles_each_image_with_its_prediction():
    images = _images(13)
    true = np.arange(13) % 10
    predicted = true.copy()
    predicted[[2, 7]] = [5, 0]
    names = [str(i) for i in range(10)]
    fig = visualize.zeroshot_grid(images, predicted, true, names, ncols=5)
    assert len(fig.axes) == 13  # 3 rows of 5, the two unused cells removed
    for i, ax in enumerate(fig.axes):
        assert np.array_equal(_axes_images(ax)[0].get_array(), images[i])
    assert fig.axes[2].get_title() == "5 (2)" and fig.axes[2].title.get_color() == "tab:red"
    assert fig.axes[3].get_title() == "3" and fig.axes[3].title.get_color() == "tab:green"
    assert "11 of these 13" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="predicted and true"):
        visualize.zeroshot_grid(images, predicted[:3], true, names)
    _renders(fig)


def test_retrieval_example_shows_the_top_k_images_best_first():
    images = _images(6)
    scores = np.array([0.1, 0.9, -0.3, 0.5, 0.7, 0.0])
    fig = visualize.retrieval_example("a seven", images, scores, k=3, labels=list("abcdef"))
    assert len(fig.axes) == 3
    for ax, i, rank in zip(fig.axes, [1, 4, 3], [1, 2, 3]):
        assert np.array_equal(_axes_images(ax)[0].get_array(), images[i])
        assert ax.get_title() == f"#{rank}  {scores[i]:.3f}" and ax.get_xlabel() == "abcdef"[i]
    assert "a seven" in fig._suptitle.get_text()
    _renders(fig)


# ------------------------------------------------------------------------------ LoadedModel's point clouds

def test_loaded_model_clouds_are_the_towers_own(digits_run):
    import jax

    from wpce_jax import checkpoint
    from wpce_jax.similarity import embed

    model = checkpoint.load(digits_run)
    images = _images(5)
    clouds = model.image_clouds(images)
    direct = model.model.apply({"params": model.params}, model.preprocess(images), method="encode_image")
    rows, cols = model.patch_grid
    assert (rows, cols) == (4, 4)  # 32 px, patch 8
    assert clouds.points.shape == (5, 1 + rows * cols, model.config.model.embed_dim)
    assert isinstance(clouds.weights, np.ndarray) and clouds.mask is None
    np.testing.assert_allclose(clouds.weights, np.asarray(direct.weights), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(clouds.points, np.asarray(direct.points), rtol=1e-5, atol=1e-6)
    # The clouds are what the compared vectors are made of.
    np.testing.assert_allclose(np.asarray(embed(jax.tree.map(jax.numpy.asarray, clouds), model.eval_rff,
                                                model.config)),
                               np.asarray(model.encode_images(images)), rtol=1e-4, atol=1e-5)

    texts = ["a handwritten seven", "the digit 7"]
    tclouds = model.text_clouds(texts)
    tdirect = model.model.apply({"params": model.params}, model.tokenizer(texts), method="encode_text")
    length = model.config.model.text.context_length
    assert tclouds.weights.shape == (2, length)
    np.testing.assert_allclose(tclouds.weights, np.asarray(tdirect.weights), rtol=1e-5, atol=1e-6)

    tokens = model.token_strings(texts)
    ids = model.tokenizer(texts)
    for toks, row, text in zip(tokens, ids, texts):
        assert len(toks) == length and toks[0] == "<sot>"
        end = toks.index("<eot>")
        assert row[end] == model.tokenizer.eot_id and set(toks[end + 1:]) <= {"<pad>"}
        assert "".join(toks[1:end]).replace("▁", " ").strip() == text
    with pytest.raises(ValueError, match="list of strings"):
        model.text_clouds("one string")
    with pytest.raises(ValueError, match="list of strings"):
        model.token_strings("one string")

    fig = visualize.image_weight_heatmaps(images, clouds.weights, model.patch_grid)
    _renders(fig)
    _renders(visualize.text_weight_bars(tokens, tclouds.weights))
