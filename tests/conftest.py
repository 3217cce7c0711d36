"""Test set-up: eight fake CPU devices, so sharded code runs here as it would on an 8-chip host."""
import os

# Must be set before JAX initialises its backends; a caller's own XLA_FLAGS win.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
