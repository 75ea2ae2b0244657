"""Breeding latents (machinegaze.mix): gene interpolation by layer group, crossover, mutation, the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from machinegaze import GazeError, checkpoints
from machinegaze.generate import load_w, seeds_to_ws
from machinegaze.mix import (
    GROUPS,
    BreedConfig,
    breed,
    breed_grid,
    crossover,
    group_layers,
    layer_weights,
    make_child,
    mutate,
    parse_genes,
)
from machinegaze.nets.stylegan2 import Generator

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def G() -> Generator:
    """A tiny random 64 px generator: 12 style layers, so coarse, middle and fine are all non-empty."""
    torch.manual_seed(0)
    g = Generator(
        z_dim=8,
        c_dim=0,
        w_dim=8,
        img_resolution=64,
        img_channels=3,
        mapping_kwargs=dict(num_layers=2),
        synthesis_kwargs=dict(channel_base=64, channel_max=8),
    )
    with torch.no_grad():
        g.mapping.w_avg.normal_()
    return g.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def parents(G):
    ws = seeds_to_ws(G, [1, 2])
    return ws[:1], ws[1:]


def test_groups_partition_the_layers(G):
    layers = sorted(i for g in GROUPS for i in group_layers(G, g))
    assert layers == list(range(G.num_ws))
    assert all(group_layers(G, g) for g in GROUPS)


def test_genes_zero_give_parent_a_and_one_give_parent_b_exactly(G, parents):
    a, b = parents
    assert torch.equal(breed(G, a, b, "coarse=0,middle=0,fine=0"), a)
    assert torch.equal(breed(G, a, b, {"coarse": 1, "middle": 1, "fine": 1}), b)
    assert torch.equal(breed(G, a, b, "all=1"), b)


def test_genes_act_per_group(G, parents):
    a, b = parents
    child = breed(G, a, b, "coarse=0.8,middle=0.3,fine=0")
    for g, v in (("coarse", 0.8), ("middle", 0.3), ("fine", 0.0)):
        idx = group_layers(G, g)
        torch.testing.assert_close(child[:, idx], a[:, idx] + v * (b[:, idx] - a[:, idx]))
    assert torch.equal(child[:, group_layers(G, "fine")], a[:, group_layers(G, "fine")])
    assert layer_weights(G, "middle=1").tolist() == [
        1.0 if i in group_layers(G, "middle") else 0.0 for i in range(G.num_ws)
    ]


def test_parse_genes_errors():
    assert parse_genes("coarse=0.8") == {"coarse": 0.8, "middle": 0.0, "fine": 0.0}
    for bad in ("coarse", "coarse=x", "coarse=1.5", "face=0.2", ""):
        with pytest.raises(GazeError):
            parse_genes(bad)


def test_crossover_is_seeded_and_takes_whole_layers(G, parents):
    a, b = parents
    c1, m1 = crossover(G, a, b, "uniform", seed=3)
    c2, m2 = crossover(G, a, b, "uniform", seed=3)
    assert torch.equal(c1, c2) and torch.equal(m1, m2)
    masks = {tuple(crossover(G, a, b, "uniform", seed=s)[1].tolist()) for s in range(8)}
    assert len(masks) > 1  # the seed matters
    for i in range(G.num_ws):
        assert torch.equal(c1[:, i], (b if m1[i] else a)[:, i])
    assert torch.equal(crossover(G, a, b, "uniform", rate=0.0)[0], a)
    assert torch.equal(crossover(G, a, b, "uniform", rate=1.0)[0], b)


def test_grouped_crossover_keeps_groups_together(G, parents):
    a, b = parents
    for s in range(6):
        _, mask = crossover(G, a, b, "grouped", seed=s)
        for g in GROUPS:
            assert len(set(mask[group_layers(G, g)].tolist())) == 1
    with pytest.raises(GazeError):
        crossover(G, a, b, "sideways")


def test_mutation_is_seeded_and_scales_with_strength(G, parents):
    a, _ = parents
    assert torch.equal(mutate(G, a, 0.0, seed=1), a)
    m1, m2 = mutate(G, a, 0.2, seed=5), mutate(G, a, 0.2, seed=5)
    assert torch.equal(m1, m2)
    assert not torch.allclose(mutate(G, a, 0.2, seed=6), m1)
    torch.testing.assert_close(mutate(G, a, 0.4, seed=5) - a, 2 * (m1 - a))
    step = m1 - a
    assert torch.allclose(step, step[:, :1].expand_as(step))  # a step in W: the same on every layer


def test_make_child_needs_one_method(G, parents):
    a, b = parents
    with pytest.raises(GazeError):
        make_child(G, a, b, BreedConfig())
    with pytest.raises(GazeError):
        make_child(G, a, b, BreedConfig(genes="all=0.5", crossover="uniform"))
    kid = make_child(G, a, b, BreedConfig(genes="all=0.5", mutate=0.1, mutation_seed=2))
    assert kid.shape == a.shape


def test_breed_grid_diagonal_is_the_parents(G):
    ps = seeds_to_ws(G, [1, 2, 3])
    grid, kids = breed_grid(G, ps, BreedConfig(genes="all=0.5"))
    assert kids.shape == (9, G.num_ws, G.w_dim)
    for i in range(3):
        torch.testing.assert_close(kids[i * 3 + i], ps[i])
    assert grid.shape == (1, 3, 4 * 64, 4 * 64)


def test_cli_breed_writes_child_and_latent(tmp_path, G):
    from machinegaze.cli import main

    net = checkpoints.save_networks(tmp_path / "tiny.safetensors", {"G_ema": G})
    a = tmp_path / "a.npz"
    np.savez(a, w=seeds_to_ws(G, [4]).numpy())
    out = tmp_path / "kids" / "child.png"
    main(
        [
            "breed",
            "--network",
            str(net),
            "--w",
            str(a),
            "--seed",
            "9",
            "--genes",
            "coarse=0.8,middle=0.3,fine=0",
            "--out",
            str(out),
        ]
    )
    child = load_w(out.with_suffix(".npz"), G)
    expect = breed(G, torch.from_numpy(np.load(a)["w"]), seeds_to_ws(G, [9]), "coarse=0.8,middle=0.3,fine=0")
    torch.testing.assert_close(child, expect)
    assert out.is_file()
    # the child is a parent again (lineages continue), here in a grid with two seeds
    grid = tmp_path / "grid.png"
    main(
        [
            "breed",
            "--network",
            str(net),
            "--w",
            str(out.with_suffix(".npz")),
            "--seed",
            "1",
            "--seed",
            "2",
            "--grid",
            "--crossover",
            "grouped",
            "--crossover-seed",
            "4",
            "--out",
            str(grid),
        ]
    )
    assert load_w(grid.with_suffix(".npz"), G).shape == (9, G.num_ws, G.w_dim)
