"""Regenerate tests/goldens/ddpm_dit.npz and tests/goldens/snr_clusters_ant.npz from the
official code (facebookresearch/DiT `diffusion/`, gohyojun15/ANT_diffusion
`interval_clustering.py`). Nothing from either repository is copied here; this script
imports them from a scratch checkout:

  mkdir -p /tmp/ddpm_ref/dit/diffusion
  for f in __init__.py gaussian_diffusion.py respace.py diffusion_utils.py timestep_sampler.py; do
    git --git-dir=<DiT.git> show HEAD:diffusion/$f > /tmp/ddpm_ref/dit/diffusion/$f; done
  git --git-dir=<ANT_diffusion.git> show HEAD:interval_clustering.py \
    > /tmp/ddpm_ref/ant_interval_clustering.py
  python tests/goldens/make_ddpm_goldens.py --dit /tmp/ddpm_ref/dit --ant /tmp/ddpm_ref

Needs numpy and torch (DiT's diffusion package imports torch). Read at DiT ed81ce2 and
ANT_diffusion 1c14183. ANT's clustering is O(k T^2) Python-level calls: a few minutes.

ddpm_dit.npz (float64 schedules from DiT's numpy arithmetic; float32 torch for the rest):
  sched_{linear,cosine}_{field}_idx   GaussianDiffusion(T=1000) arrays at IDX
  sched_{linear,cosine}_{field}_sum   np.sum of the whole array (a checksum)
  sched20_{linear,cosine}_{field}     the whole arrays for T = 20
  space_{name}                        sorted(space_timesteps(...)) for SPACINGS
  respaced_betas_{name}               SpacedDiffusion(...).betas for the RESPACED subset
  loss_*                              training_losses / p_mean_variance on a fixed batch
                                      (loss_rescaled_*: RESCALED_MSE at T = 2000)
  loop_*                              p_sample_loop / ddim_sample_loop on a small chain, with
                                      the per-step noise recorded (th.randn_like replaced)
snr_clusters_ant.npz:
  edges_{schedule}_{kind}_k{k}        ANT's cluster left ends after the first, as ints
"""
import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

IDX = np.array([0, 1, 2, 3, 4, 9, 10, 50, 99, 100, 101, 250, 333, 499, 500, 501, 666, 750,
                900, 990, 995, 996, 997, 998, 999])
FIELDS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "alphas_cumprod_next",
          "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
          "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
          "sqrt_recipm1_alphas_cumprod", "posterior_variance",
          "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2")
SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
# (T, spec) -> name
SPACINGS = {
    (1000, "250"): "250",
    (1000, "ddim50"): "ddim50",
    (1000, "100"): "100",
    (1000, "10"): "10",
    (1000, "ddim10"): "ddim10",
    (1000, "ddim25"): "ddim25",
    (1000, "10,15,20"): "10_15_20",
    (300, "10,15,20"): "T300_10_15_20",
    (1000, "7,3"): "7_3",
}
RESPACED = ("250", "ddim50", "10", "7_3")
ANT_KS = (2, 3, 4, 5, 8, 20)
ANT_COSINE_KS = (4, 20)


def nchw(a):
  return np.ascontiguousarray(np.moveaxis(a, -1, 1))


def nhwc(a):
  return np.ascontiguousarray(np.moveaxis(a, 1, -1))


def loop_model(th):
  """The deterministic stand-in network of the loop goldens (tests/test_ddpm.py repeats
  it in jnp): NHWC x [B, H, W, C], original timesteps t -> [eps, v] on channels."""

  def f(x_nchw, t):
    x = x_nchw.permute(0, 2, 3, 1)
    tt = t.to(x.dtype).view(-1, 1, 1, 1)
    eps = 0.5 * th.tanh(x) + 1e-3 * tt
    v = 0.3 * th.cos(x) - 0.1
    return th.cat([eps, v], dim=-1).permute(0, 3, 1, 2)

  return f


def dit_goldens(dit_dir):
  sys.path.insert(0, dit_dir)
  import torch as th
  from diffusion import create_diffusion
  from diffusion import gaussian_diffusion as gd
  from diffusion.respace import space_timesteps

  out = {}
  for short, name in SCHEDULES.items():
    for T in (1000, 20):
      diff = gd.GaussianDiffusion(betas=gd.get_named_beta_schedule(name, T),
                                  model_mean_type=gd.ModelMeanType.EPSILON,
                                  model_var_type=gd.ModelVarType.LEARNED_RANGE,
                                  loss_type=gd.LossType.MSE)
      for field in FIELDS:
        arr = np.asarray(getattr(diff, field), np.float64)
        if T == 1000:
          out[f"sched_{short}_{field}_idx"] = arr[IDX]
          out[f"sched_{short}_{field}_sum"] = np.sum(arr)
        else:
          out[f"sched20_{short}_{field}"] = arr
  out["sched_idx"] = IDX

  for (T, spec), name in SPACINGS.items():
    steps = np.array(sorted(space_timesteps(T, spec)), np.int64)
    out[f"space_{name}"] = steps
    out[f"space_{name}_T"] = np.int64(T)
    if name in RESPACED:
      diff = create_diffusion(spec, diffusion_steps=T)
      out[f"respaced_betas_{name}"] = np.asarray(diff.betas, np.float64)
      out[f"timestep_map_{name}"] = np.asarray(diff.timestep_map, np.int64)

  # Losses on a fixed batch (T = 1000 linear, learn_sigma, loss type MSE: DiT's default).
  rng = np.random.default_rng(20240515)
  B, H, W, C = 6, 4, 4, 3
  x0 = rng.uniform(-1, 1, (B, H, W, C)).astype(np.float32)
  x0[0, 0, 0, :] = [-1.0, 1.0, 0.9995]  # the decoder NLL's edge branches at t = 0
  x0[1, 0, 0, :] = [-1.0, 1.0, -0.9995]
  noise = rng.standard_normal((B, H, W, C)).astype(np.float32)
  t = np.array([0, 1, 2, 100, 500, 999], np.int64)
  eps_out = (noise + 0.3 * rng.standard_normal((B, H, W, C))).astype(np.float32)
  v_out = rng.uniform(-1.2, 1.2, (B, H, W, C)).astype(np.float32)
  model_out = np.concatenate([eps_out, v_out], -1)
  out.update(loss_x0=x0, loss_noise=noise, loss_t=t, loss_model_output=model_out)

  # RESCALED_MSE scales the vb by T / 1000: run it at T = 2000 so the factor is 2.
  for rescale in (False, True):
    diff = create_diffusion("", rescale_learned_sigmas=rescale,
                            diffusion_steps=2000 if rescale else 1000)
    x0_t, noise_t, t_t = th.from_numpy(nchw(x0)), th.from_numpy(nchw(noise)), th.from_numpy(t)
    mo = th.from_numpy(nchw(model_out)).requires_grad_(True)
    terms = diff.training_losses(lambda x, tt, **kw: mo, x0_t, t_t, noise=noise_t)
    terms["loss"].sum().backward()
    tag = "_rescaled" if rescale else ""
    for key in ("loss", "mse", "vb"):
      out[f"loss{tag}_{key}"] = terms[key].detach().numpy()
    out[f"loss{tag}_grad"] = nhwc(mo.grad.numpy())
    if not rescale:
      out["loss_x_t"] = nhwc(diff.q_sample(x0_t, t_t, noise=noise_t).numpy())
      x_t = th.from_numpy(nchw(out["loss_x_t"]))
      for clip in (False, True):
        pmv = diff.p_mean_variance(lambda x, tt, **kw: mo.detach(), x_t, t_t, clip_denoised=clip)
        ctag = "_clip" if clip else ""
        for key in ("mean", "variance", "log_variance", "pred_xstart"):
          out[f"pmv{ctag}_{key}"] = nhwc(pmv[key].numpy())
      mean, var, logvar = diff.q_posterior_mean_variance(x0_t, x_t, t_t)
      out["post_mean"], out["post_variance"], out["post_log_variance"] = (
          nhwc(mean.numpy()), nhwc(var.numpy()), nhwc(logvar.numpy()))

  # Fixed (FIXED_LARGE / FIXED_SMALL) variances: learn_sigma=False.
  for sigma_small in (False, True):
    diff = create_diffusion("", learn_sigma=False, sigma_small=sigma_small)
    x_t = th.from_numpy(nchw(out["loss_x_t"]))
    pmv = diff.p_mean_variance(lambda x, tt, **kw: th.from_numpy(nchw(eps_out)), x_t,
                               th.from_numpy(t), clip_denoised=False)
    tag = "small" if sigma_small else "large"
    out[f"pmv_fixed_{tag}_log_variance"] = nhwc(pmv["log_variance"].numpy())
    out[f"pmv_fixed_{tag}_mean"] = nhwc(pmv["mean"].numpy())

  # Sampling loops with recorded noise.
  model = loop_model(th)
  shape = (3, 4, 4, 2)
  for name, spec, kind, kwargs in (
      ("p10", "10", "p", dict(clip_denoised=False)),
      ("p10_clip", "10", "p", dict(clip_denoised=True)),
      ("ddim10_eta0", "ddim10", "ddim", dict(clip_denoised=False, eta=0.0)),
      ("ddim10_eta05_clip", "10", "ddim", dict(clip_denoised=True, eta=0.5)),
  ):
    diff = create_diffusion(spec)
    K = diff.num_timesteps
    x_T = rng.standard_normal(shape).astype(np.float32)
    step_noise = rng.standard_normal((K,) + shape).astype(np.float32)  # row k: index k
    queue = [th.from_numpy(nchw(step_noise[k])) for k in range(K - 1, -1, -1)]
    original = th.randn_like
    th.randn_like = lambda x: queue.pop(0)
    try:
      loop = diff.p_sample_loop if kind == "p" else diff.ddim_sample_loop
      sample = loop(model, nchw(x_T).shape, noise=th.from_numpy(nchw(x_T)),
                    device="cpu", **kwargs)
    finally:
      th.randn_like = original
    assert not queue
    out[f"loop_{name}_x_T"] = x_T
    out[f"loop_{name}_step_noise"] = step_noise
    out[f"loop_{name}_sample"] = nhwc(sample.numpy())
  return out


def ant_goldens(ant_dir, dit_dir):
  sys.path.insert(0, ant_dir)
  sys.path.insert(0, dit_dir)
  import ant_interval_clustering as ant
  from diffusion import gaussian_diffusion as gd

  out = {}
  for short, name in SCHEDULES.items():
    betas = gd.get_named_beta_schedule(name, 1000)
    abar = np.cumprod(1.0 - betas)
    snr = abar / (1.0 - abar)
    for kind, values in (("snr", snr), ("logsnr", np.log(snr))):
      for k in (ANT_KS if short == "linear" else ANT_COSINE_KS):
        clusters = ant.snr_based_clustering(values, k)
        lefts = [int(left) for left, _ in clusters]
        assert lefts[0] == 0
        out[f"edges_{short}_{kind}_k{k}"] = np.array(lefts[1:], np.int64)
        print(short, kind, k, clusters, flush=True)
  return out


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--dit", required=True, help="folder holding DiT's diffusion/ package")
  parser.add_argument("--ant", help="folder holding ANT's interval_clustering.py "
                      "(saved as ant_interval_clustering.py)")
  parser.add_argument("--skip-ant", action="store_true")
  args = parser.parse_args()
  np.savez_compressed(os.path.join(HERE, "ddpm_dit.npz"), **dit_goldens(args.dit))
  if not args.skip_ant:
    np.savez_compressed(os.path.join(HERE, "snr_clusters_ant.npz"),
                        **ant_goldens(args.ant, args.dit))


if __name__ == "__main__":
  main()
