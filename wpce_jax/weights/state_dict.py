"""A PyTorch state dict read into this project's Flax parameter layouts, with every tensor accounted for.

`StateDict` hands out tensors by name, checks their shapes, remembers which were taken, and reports the rest, so
that an importer cannot silently drop a weight nor read one that is not there: each mistake is a `WeightsFileError`
naming the file and the tensor. The converters below turn PyTorch layouts into Flax ones:

    nn.Linear weight [out, in]                     -> Dense kernel [in, out]
    nn.MultiheadAttention in_proj [3w, w], [3w]    -> query/key/value kernels [w, h, w/h], biases [h, w/h]
    (timm's fused qkv has the same layout)
    out_proj [w, w]                                -> out kernel [h, w/h, w]
    Conv2d weight [out, in, kh, kw]                -> Conv kernel [kh, kw, in, out]
    LayerNorm weight, bias                         -> scale, bias
"""
import numpy as np

from wpce_jax.weights.torch_file import WeightsFileError


class StateDict:
    """name -> float32 NumPy array, read once each.

    source: what to call the file in messages (its path). Tensors of any float dtype come out as float32.
    """

    def __init__(self, tensors: dict, source: str):
        self.tensors, self.source, self.taken = dict(tensors), source, set()

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def shape(self, name: str) -> tuple:
        """The shape of tensor `name` without taking it; WeightsFileError when it is missing."""
        return tuple(self._get(name).shape)

    def _get(self, name: str) -> np.ndarray:
        if name not in self.tensors:
            raise WeightsFileError(f"{self.source}: tensor {name!r} is missing; expected a state dict with it "
                                   f"(the file has {len(self.tensors)} tensors, e.g. {sorted(self.tensors)[:3]})")
        return self.tensors[name]

    def take(self, name: str, shape: tuple | None = None) -> np.ndarray:
        """Tensor `name` as float32, checked against `shape` (None entries match any size)."""
        value = self._get(name)
        if shape is not None and (len(value.shape) != len(shape)
                                  or any(s is not None and s != v for s, v in zip(shape, value.shape))):
            expected = "x".join("?" if s is None else str(s) for s in shape)
            raise WeightsFileError(f"{self.source}: tensor {name!r} has shape {tuple(value.shape)}, expected "
                                   f"[{expected}]")
        self.taken.add(name)
        return np.asarray(value, dtype=np.float32)

    def skip(self, *names: str) -> None:
        """Marks tensors that carry no parameter (buffers such as position ids, attention masks) as read."""
        self.taken.update(n for n in names if n in self.tensors)

    def check_all_taken(self) -> None:
        """WeightsFileError listing the tensors no mapping read: a file of another architecture or format."""
        unused = sorted(set(self.tensors) - self.taken)
        if unused:
            shown = ", ".join(unused[:8]) + (f", ... ({len(unused)} in all)" if len(unused) > 8 else "")
            raise WeightsFileError(f"{self.source}: unexpected tensors the import does not use: {shown}; is the "
                                   f"file of the --format given?")

    # ------------------------------------------------------------------------------------ layout converters

    def dense(self, prefix: str, in_dim: int, out_dim: int, bias: bool = True) -> dict:
        """nn.Linear `prefix`.weight [out, in] (and .bias [out]) -> {"kernel": [in, out], "bias": [out]}."""
        out = {"kernel": self.take(f"{prefix}.weight", (out_dim, in_dim)).T}
        if bias:
            out["bias"] = self.take(f"{prefix}.bias", (out_dim,))
        return out

    def layer_norm(self, prefix: str, width: int) -> dict:
        return {"scale": self.take(f"{prefix}.weight", (width,)), "bias": self.take(f"{prefix}.bias", (width,))}

    def fused_attention(self, weight: str, bias: str, out_prefix: str, width: int, heads: int) -> dict:
        """Fused q/k/v projection (torch MultiheadAttention's in_proj, timm's qkv) and its output projection ->
        the Flax MultiHeadDotProductAttention parameters."""
        w = self.take(weight, (3 * width, width))
        b = self.take(bias, (3 * width,))
        split = lambda i: (w[i * width:(i + 1) * width], b[i * width:(i + 1) * width])
        return attention_params(*split(0), *split(1), *split(2), self.take(f"{out_prefix}.weight", (width, width)),
                                self.take(f"{out_prefix}.bias", (width,)), heads)

    def separate_attention(self, prefix: str, width: int, heads: int) -> dict:
        """transformers' q_proj/k_proj/v_proj/out_proj -> the Flax MultiHeadDotProductAttention parameters."""
        parts = [self.take(f"{prefix}.{n}_proj.{p}", (width, width) if p == "weight" else (width,))
                 for n in ("q", "k", "v", "out") for p in ("weight", "bias")]
        return attention_params(*parts, heads)


def attention_params(wq, bq, wk, bk, wv, bv, wo, bo, heads: int) -> dict:
    """PyTorch projections (weights [w, w] as y = x W^T + b; heads contiguous along the output) -> Flax
    MultiHeadDotProductAttention's {"query", "key", "value": kernel [w, h, w/h], bias [h, w/h]; "out": kernel
    [h, w/h, w], bias [w]}."""
    width = wq.shape[0]
    head_dim = width // heads
    proj = lambda w, b: {"kernel": w.T.reshape(width, heads, head_dim), "bias": b.reshape(heads, head_dim)}
    return {"query": proj(wq, bq), "key": proj(wk, bk), "value": proj(wv, bv),
            "out": {"kernel": wo.T.reshape(heads, head_dim, width), "bias": bo}}


def conv_kernel(weight: np.ndarray) -> np.ndarray:
    """Conv2d weight [out, in, kh, kw] -> Flax Conv kernel [kh, kw, in, out]."""
    return np.transpose(weight, (2, 3, 1, 0))


def check_heads(source: str, what: str, width: int, heads: int) -> None:
    if heads <= 0 or width % heads:
        raise WeightsFileError(f"{source}: {what} width {width} is not divisible into {heads} attention heads")


def count_blocks(sd: StateDict, prefix: str, leaf: str) -> int:
    """Blocks `prefix`N.`leaf` numbered from 0 without gaps; WeightsFileError when there is none."""
    depth = 0
    while f"{prefix}{depth}.{leaf}" in sd:
        depth += 1
    if depth == 0:
        raise WeightsFileError(f"{sd.source}: no tensor {prefix}0.{leaf}; expected transformer blocks named "
                               f"{prefix}<N>.*")
    return depth
