"""Training objectives: one package or module per paper, each registered by name.

  base.py         the contract every method fulfils (and the noise-sampler interface)
  registry.py     name -> method class; `build`, `get`, `names`
  edm.py          EDM denoising score matching (Karras et al. 2022)       "edm"
  stf/            Stable Target Field (Xu et al. 2023)                     "stf"
  consistency/    CT, iCT, ECT, SCT (Song et al. 2023; Song & Dhariwal
                  2023; Geng et al. 2024; Wang et al. 2024)                "ct" "ict" "ect" "sct"
  act/            Adversarial Consistency Training (Kong et al. 2024)      "act"
  lpips.py        LPIPS-VGG16, the perceptual distance of CT and ACT
  formulations.py EDM's EDM / VP / VE noise levels, loss weights and preconditionings
  flow.py         flow matching, SiT's linear interpolant (Ma et al. 2024)    "flow"
  ddpm.py         discrete-time diffusion as DiT trains it (Ho et al. 2020)    "ddpm"

Importing this package registers every method. The difficulty curriculum is not
an objective: it restricts the noise sampler every objective receives.
"""
from jaxdiff.objectives import edm  # noqa: F401  (each import registers its methods)
from jaxdiff.objectives import ddpm, flow, formulations  # noqa: F401
from jaxdiff.objectives.act import objective as _act  # noqa: F401
from jaxdiff.objectives.consistency import ct, ect, ict, sct  # noqa: F401
from jaxdiff.objectives.registry import build, config_sections, get, names
from jaxdiff.objectives.stf import objective as _stf  # noqa: F401

# The method of `base_config()`: EDM, the foundation every other method builds on.
DEFAULT = "edm"
DEFAULT_FORMULATION = formulations.FORMULATIONS[0]   # EDM's own; see objectives/formulations.py

__all__ = ["DEFAULT", "DEFAULT_FORMULATION", "build", "config_sections", "get", "names"]
