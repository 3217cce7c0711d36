"""Weights written elsewhere, read without their frameworks: torch.save files and safetensors, into NumPy."""

from wpce_jax.weights.safetensors_file import load_safetensors
from wpce_jax.weights.torch_file import UnsafePickleError, WeightsFileError, load_torch_file

__all__ = ["load_torch_file", "load_safetensors", "WeightsFileError", "UnsafePickleError"]
