"""Test set-up shared by every test file.

Eight simulated CPU devices, so sharding code runs as on a real host with
several accelerators. The flag must be set before jax is first imported.
"""
import os

os.environ.setdefault(
    "XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
