"""jaxdiff's recipes: `get_config(arg)` per file, `arg` "" (the recipe) or "smoke".

Recipes build on each other by import (`from configs import digits_edm`); the
pieces several recipes share (datasets, networks, method settings, the `:smoke`
shrinks) are in `common.py`. Load one with `jaxdiff.config.load_config` or on
the command line with `--config=configs/<name>.py[:smoke]`.
"""
