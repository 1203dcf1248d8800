"""EDM's non-leaky augmentation pipeline as pure JAX (docs/augment.md).

Modules: `params` (settings and random draws), `resample` (the geometric resampling),
`pipe` (the transforms and labels).

Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative
Models" (arXiv 2206.00364, appendix on augmentation regularization), and NVlabs/edm
`training/augment.py` (`AugmentPipe`, itself StyleGAN2-ADA's pipeline, written there
with plain torch conv2d / grid_sample instead of ADA's upfirdn2d plugins).
EDM augments the clean training batch before noise is added and conditions the
denoiser on `augment_labels`, so at sampling time (labels = 0) the network produces
un-augmented images: the augmentation does not leak.

Three entry points:

  sample_augment_params(key, batch, config) -> AugmentParams
      every random draw of the pipeline for `batch` images, already gated by its
      probability (`rand < multiplier * p`): a gated-off transform is stored as 0.
  apply_augment(images, params) -> (images, labels)
      deterministic; NHWC images, [N, label_dim(config)] float32 labels in the
      official order (table in docs/augment.md).
  augment(key, images, *, p=1, xflip=0, ...) -> (images, labels)
      both at once, with AugmentPipe's constructor arguments and defaults.

`EDM_CIFAR10` is the configuration of NVlabs/edm train.py (`--augment=0.12`,
the default): p=0.12, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1,
translate_frac=1, label_dim 9 (= the network's augment_dim).

Everything is jit-able with static shapes: the enabled set of transforms is static
(a multiplier > 0 in the config, exactly as the official `if self.xflip > 0:`), and
everything else is per-sample selects, gathers and fixed-size convolutions.

Geometric resampling follows the official recipe: reflection-pad, 2x upsample with
the sym6 wavelet low-pass filter, bilinear sampling with zero padding through the
inverse 3x3 matrix, sym6 low-pass and 2x downsample. The official code pads by a
margin computed from the whole batch (data-dependent shape); here the image is
always reflection-padded by the largest margin the official code can use (W-1 and
H-1), and with `margin="batch"` (default) everything outside the batch's official
margin is zeroed before and after upsampling, which reproduces the official result
up to float rounding. `margin="max"` skips that masking, so each image no longer
depends on the rest of its batch; it differs from the official result only in the
3-pixel output border of a sample zoomed out further than its batch's margin allows
(measured: <= 1.2e-3 in contrived cases, <= 1e-4 in about one image per 256 with
EDM's CIFAR-10 settings; docs/augment.md).

Deviations (measured in docs/augment.md): a sample whose geometric (or colour)
draws are all gated off is returned bit-exactly, whereas the official pipeline still
resamples it (identity up to ~1e-6); the sums inside the filters run in a different
order, so results agree with the official ones to float32 rounding, not bitwise.
"""
from jaxdiff.augment.params import (COLOR, EDM_CIFAR10, GEOMETRIC, LABEL_LAYOUT, TRANSFORMS,
                                    AugmentConfig, AugmentParams, edm_config, label_dim,
                                    sample_augment_params)
from jaxdiff.augment.pipe import apply_augment, augment
from jaxdiff.augment.resample import SYM6

__all__ = ["COLOR", "EDM_CIFAR10", "GEOMETRIC", "LABEL_LAYOUT", "SYM6", "TRANSFORMS",
           "AugmentConfig", "AugmentParams", "apply_augment", "augment", "edm_config",
           "label_dim", "sample_augment_params"]
