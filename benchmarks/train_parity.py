"""Training-step parity against NVIDIA's reference networks: the same weights in both, the same inputs, then the
G loss, the D loss and the R1 penalty with their gradients for every parameter, side by side.

Our trainer's losses are NVlabs' (non-saturating logistic, R1 on reals), so if the gradients agree, what a run does
differently comes from the recipe (batch, learning rates, augmentation), not from the networks or the losses.
NVIDIA's classes come from a checkout given with --nvlabs-dir (e.g. a clone of NVlabs/stylegan2-ada-pytorch;
nothing is fetched here and nothing of it is copied into this repository).

usage: python benchmarks/train_parity.py --nvlabs-dir PATH [--network faces64] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F


def reference_pair(nvlabs_dir: str, G, D):
    """NVIDIA's Generator and Discriminator built with our networks' hyperparameters, holding our weights."""
    sys.path.insert(0, nvlabs_dir)
    from training import networks  # noqa: PLC0415 (their checkout, only on request)

    res, ch = G.img_resolution, G.img_channels
    syn = G.synthesis
    widths = {b.resolution: b.conv1.weight.shape[0] for b in syn.blocks()}
    base = widths[res] * res  # channels = min(base / r, max) at the top, where the minimum is base / r
    cmax = max(widths.values())
    ref_g = networks.Generator(
        z_dim=G.z_dim,
        c_dim=0,
        w_dim=G.w_dim,
        img_resolution=res,
        img_channels=ch,
        mapping_kwargs=dict(num_layers=G.mapping.num_layers),
        synthesis_kwargs=dict(channel_base=base, channel_max=cmax, num_fp16_res=0, conv_clamp=None),
    )
    ref_d = networks.Discriminator(
        c_dim=0,
        img_resolution=res,
        img_channels=ch,
        channel_base=base,
        channel_max=cmax,
        num_fp16_res=0,
        conv_clamp=None,
        epilogue_kwargs=dict(mbstd_group_size=D.b4.mbstd.group_size),
    )
    for ours, theirs in ((G, ref_g), (D, ref_d)):
        mine = ours.state_dict()
        missing = [k for k in theirs.state_dict() if k not in mine]
        if missing:
            raise SystemExit(f"their network has tensors ours lacks: {missing[:4]}")
        theirs.load_state_dict({k: mine[k] for k in theirs.state_dict()})
    return ref_g, ref_d


def one_step(G, D, z: torch.Tensor, reals: torch.Tensor, c: torch.Tensor) -> dict:
    """Images, logits, losses and per-parameter gradients of one G phase, one D phase and one R1 phase.
    Both sides take (input, conditioning); c is an empty [N, 0] label."""

    fake = G(z, c, noise_mode="const")
    loss_g = F.softplus(-D(fake, c)).mean()
    grads_g = torch.autograd.grad(loss_g, list(G.parameters()))
    fake_logits, real_logits = D(fake.detach(), c), D(reals, c)
    loss_d = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
    grads_d = torch.autograd.grad(loss_d, list(D.parameters()))
    x = reals.detach().requires_grad_(True)
    (gx,) = torch.autograd.grad(D(x, c).sum(), x, create_graph=True)
    r1 = gx.square().sum([1, 2, 3]).mean()
    params = list(D.parameters())
    grads_r1 = torch.autograd.grad(r1, params, allow_unused=True)  # D's last bias does not move its input gradient
    grads_r1 = [torch.zeros_like(p) if g is None else g for g, p in zip(grads_r1, params)]
    return dict(
        fake=fake.detach(),
        fake_logits=fake_logits.detach(),
        real_logits=real_logits.detach(),
        losses=torch.stack([loss_g, loss_d, r1]).detach(),
        G=dict(zip([n for n, _ in G.named_parameters()], grads_g)),
        D=dict(zip([n for n, _ in D.named_parameters()], grads_d)),
        R1=dict(zip([n for n, _ in D.named_parameters()], grads_r1)),
    )


def worst_relative(a: dict, b: dict) -> tuple[float, str]:
    """The largest |a - b| / |b| over the parameters (norms per tensor), and which parameter it is."""
    rel = {k: float((a[k] - b[k]).norm() / b[k].norm().clamp_min(1e-12)) for k in b if b[k].norm() > 0}
    name = max(rel, key=rel.get)
    return rel[name], name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nvlabs-dir", required=True)
    ap.add_argument("--network", default="faces64", help="a network with G and D (name or file)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from machinegaze import zoo

    nets = zoo.load_networks(args.network)
    if nets.D is None:
        raise SystemExit(f"{args.network}: holds no discriminator")
    G, D = nets.G_ema.requires_grad_(True), nets.D.requires_grad_(True)
    ref_g, ref_d = reference_pair(args.nvlabs_dir, G, D)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(args.batch, G.z_dim, generator=gen)
    reals = torch.rand(args.batch, G.img_channels, G.img_resolution, G.img_resolution, generator=gen) * 2 - 1
    c = torch.zeros(args.batch, 0)
    ours, theirs = one_step(G, D, z, reals, c), one_step(ref_g, ref_d, z, reals, c)
    report = {
        "network": args.network,
        "image_max_abs_diff": float((ours["fake"] - theirs["fake"]).abs().max()),
        "logit_max_abs_diff": float(
            max(
                (ours["fake_logits"] - theirs["fake_logits"]).abs().max(),
                (ours["real_logits"] - theirs["real_logits"]).abs().max(),
            )
        ),
        "losses_ours_G_D_R1": ours["losses"].tolist(),
        "losses_theirs_G_D_R1": theirs["losses"].tolist(),
    }
    for part in ("G", "D", "R1"):
        rel, name = worst_relative(ours[part], theirs[part])
        report[f"grad_{part}_worst_relative_diff"] = rel
        report[f"grad_{part}_worst_parameter"] = name
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
