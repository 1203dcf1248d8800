"""Official NVlabs/edm and NVlabs/edm2 network pickles in jaxdiff, read safely.

  python -m jaxdiff.convert --source=edm-cifar10-32x32-uncond-vp.pkl --workdir=runs/edm_c10
  python -m jaxdiff.main --config=runs/edm_c10/recipe.py --workdir=runs/edm_c10 --mode=sample

  from jaxdiff.convert import official_denoiser
  D = official_denoiser("edm-cifar10-32x32-cond-vp.pkl")
  x0_hat = D(x_nhwc, sigma, class_labels_one_hot)

The pickles (EDM's releases, and the snapshots of NVlabs/edm, Newbeeer/stf and
locuslab/ect training runs) carry the Python source of their networks; it is never run:
`pickle_reader` resolves only tensors, containers and EDM's persistence records, and
refuses every other global by name. `edm` maps the preconditioner (EDMPrecond,
VPPrecond, VEPrecond, EDM2's Precond) and dispatches the network to the converter
registered for its class name (`song_unet`: SongUNet, DDPM++ / NCSN++; `dhariwal_unet`:
DhariwalUNet, ADM; `edm2`: EDM2's Precond, UNet and log-variance head), which checks
every tensor.
`denoiser` gives the official D(x; sigma) in JAX; `writer` writes a jaxdiff workdir that
`--mode=sample` and `config.init_from` accept. docs/convert.md.
"""
from jaxdiff.convert import song_unet  # noqa: F401  (registers SongUNet's converter)
from jaxdiff.convert import dhariwal_unet  # noqa: F401  (registers DhariwalUNet's: ADM)
from jaxdiff.convert import edm2  # noqa: F401  (registers EDM2's Precond)
from jaxdiff.convert.denoiser import OfficialDenoiser, official_denoiser
from jaxdiff.convert.edm import Network, Precond, load_network, register_architecture
from jaxdiff.convert.pickle_reader import EXPECTED, ModuleRecord, read_pickle
from jaxdiff.convert.writer import build_config, convert

__all__ = ["EXPECTED", "ModuleRecord", "Network", "OfficialDenoiser", "Precond", "build_config",
           "convert", "load_network", "official_denoiser", "read_pickle",
           "register_architecture"]
