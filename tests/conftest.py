"""Test set-up shared by every test file.

Eight simulated CPU devices, so sharding code runs as on a real host with
several accelerators. The flag must be set before jax is first imported.
"""
import os

os.environ.setdefault(
    "XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import tempfile

import jax

# Programs recur across tests (a resumed run compiles the same step again): the
# persistent compilation cache turns those recompilations into cache reads.
jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("JAXDIFF_TEST_CACHE",
                                 os.path.join(tempfile.gettempdir(), "jaxdiff_test_jax_cache")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
