"""wpce_jax: multimodal contrastive learning with Weighted Point Cloud Embeddings (WPCE) in JAX/Flax."""
