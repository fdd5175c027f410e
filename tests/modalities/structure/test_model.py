"""Frame network equivariance, the backbone flow task, sampling (incl. motifs) and the CLI."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from modalities.structure.data import backbone_dataset, read_pdb
from modalities.structure.nets import AtomNet, FrameNet
from modalities.structure.task import BackboneFlowTask, local_distance_loss, masked_center
from toolkit.geometry import so3
from toolkit.geometry.se3 import Rigid
from toolkit.testing.fit import fit_fixed_batch

ROOT = Path(__file__).resolve().parents[3]


def _perturbed(net: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # leave the zero-initialised output layers non-trivial
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net


def _frames(b: int, n: int) -> Rigid:
    g = torch.Generator().manual_seed(0)
    return Rigid(so3.random_uniform((b, n), generator=g, dtype=torch.float64),
                 torch.randn(b, n, 3, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("pair_update", [False, True])
def test_frame_net_is_se3_equivariant(pair_update):
    net = _perturbed(FrameNet(width=32, pair_width=8, depth=2, heads=2, num_classes=3,
                              pair_update=pair_update).double())
    T, b, n = _frames(2, 12), 2, 12
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, 9:] = False
    t, y = torch.tensor([0.3, 0.8], dtype=torch.float64), torch.tensor([0, 3])
    sc = torch.randn(b, n, 3, dtype=torch.float64)
    fixed = torch.zeros(b, n, dtype=torch.bool)
    fixed[:, 2:4] = True
    out = net(T, t, mask, sc, fixed, y=y)
    g = Rigid(so3.random_uniform((), generator=torch.Generator().manual_seed(5),
                                 dtype=torch.float64), torch.tensor([1.0, -2.0, 0.5]).double())

    def move(F: Rigid) -> Rigid:
        return Rigid(g.rots @ F.rots, (g.rots @ F.trans[..., None])[..., 0] + g.trans)

    out_g = net(move(T), t, mask, (g.rots @ sc[..., None])[..., 0] + g.trans, fixed, y=y)
    exp = move(out)
    assert torch.allclose(out_g.rots[mask], exp.rots[mask], atol=1e-10)
    assert torch.allclose(out_g.trans[mask], exp.trans[mask], atol=1e-10)
    # the network does something (not the identity), and motif frames are kept exactly
    assert (out.trans - T.trans)[mask & ~fixed].abs().max() > 1e-3
    assert torch.equal(out.trans[fixed], T.trans[fixed])
    # padded residues do not influence real ones
    T2 = Rigid(T.rots.clone(), T.trans.clone())
    T2.trans[1, 10] += 5.0
    assert torch.allclose(net(T2, t, mask, sc, fixed, y=y).trans[1, :9], out.trans[1, :9])
    with pytest.raises(ValueError, match="labels"):
        net(T, t, mask, y=torch.tensor([0, 7]))


def test_atom_net_ignores_padding_and_is_finite_in_eval():
    net = _perturbed(AtomNet(width=32, depth=2, heads=2)).eval()
    x, mask = torch.randn(2, 10, 3, 3), torch.ones(2, 10, dtype=torch.bool)
    mask[0, 6:] = False
    with torch.no_grad():
        out = net(x, torch.rand(2), mask)
        x2 = x.clone()
        x2[0, 8] += 3.0
        out2 = net(x2, torch.rand(2).fill_(0.5), mask)
    assert torch.isfinite(out).all() and (out[0, 6:] == 0).all()
    out3 = net(x, torch.full((2,), 0.5), mask)
    assert torch.allclose(out2[0, :6], out3[0, :6], atol=1e-5)


def test_masked_center_and_local_distance_loss():
    x, mask = torch.randn(2, 5, 3), torch.tensor([[1, 1, 1, 0, 0], [1] * 5]).bool()
    c = masked_center(x, mask)
    assert torch.allclose(c[mask.nonzero(as_tuple=True)].view(-1, 3)[:3].sum(0), torch.zeros(3),
                          atol=1e-6) and (c[0, 3:] == 0).all()
    a = torch.randn(1, 6, 3, 3)
    m = torch.ones(1, 6, dtype=torch.bool)
    assert local_distance_loss(a, a, m, cutoff=10.0) == 0
    R = so3.random_uniform(()).to(a)
    moved = (R @ a[..., None])[..., 0] + 1.0  # rigid motion: distances unchanged
    assert local_distance_loss(moved, a, m, cutoff=10.0) < 1e-9
    assert local_distance_loss(a * 1.1, a, m, cutoff=10.0) > 1e-3


@pytest.mark.parametrize("net_cls", [FrameNet, AtomNet])
def test_training_steps_reduce_the_loss(net_cls):
    torch.manual_seed(0)
    ds = backbone_dataset(crop=24, min_length=16, repeats=1)
    batch = torch.utils.data.default_collate([ds[i] for i in range(8)])
    kw = {"pair_width": 8} if net_cls is FrameNet else {}
    net = net_cls(width=32, depth=2, heads=2, **kw)
    task = BackboneFlowTask(self_cond=0.5, motif_prob=0.3, aux_weight=0.1)
    before, after = fit_fixed_batch(task, net, batch, 150 if net_cls is FrameNet else 300,
                                    lr=2e-3 if net_cls is FrameNet else 3e-3)
    # the Euclidean baseline learns slower (it must learn rotations from augmentation)
    assert after < (0.7 if net_cls is FrameNet else 0.95) * before


@pytest.mark.parametrize("net_cls", [FrameNet, AtomNet])
def test_generate_shapes_motif_and_determinism(net_cls):
    torch.manual_seed(0)
    kw = {"pair_width": 8} if net_cls is FrameNet else {}
    net = _perturbed(net_cls(width=32, depth=2, heads=2, **kw), 0.02).eval()
    task = BackboneFlowTask(steps=4, grid_power=2.0)
    out = task.generate(net, [12, 20], torch.Generator().manual_seed(0))
    assert [tuple(s.shape) for s in out] == [(12, 3, 3), (20, 3, 3)]
    assert all(torch.isfinite(s).all() for s in out)
    again = task.generate(net, [12, 20], torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(out, again))
    info = {}
    task.generate(net, [12], torch.Generator().manual_seed(0), info=info)
    assert info["nfe"] == 4
    motif = backbone_dataset().chains[0].coords[:20]
    keep = torch.zeros(20, dtype=torch.bool)
    keep[5:11] = True
    got = task.generate(net, [20, 20], torch.Generator().manual_seed(1), motif=motif,
                        motif_mask=keep)
    ref = motif[keep, 1].double()
    for s in got:  # the motif keeps its internal geometry (ideal N/CA/C re-placement)
        ca = s[keep, 1].double()
        assert (torch.cdist(ca, ca) - torch.cdist(ref, ref)).abs().max() < 0.05
    with pytest.raises(ValueError, match="lengths"):
        task.generate(net, [1])
    with pytest.raises(ValueError, match="one common length"):
        task.generate(net, [20, 21], motif=motif, motif_mask=keep)


def test_cli_train_sample_eval(tmp_path):
    """The recipe end to end through the CLI: 4 tiny steps, PDB samples, the eval report."""
    run = tmp_path / "run"
    env = {"PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "toolkit.cli"]
    common = ["model.width=32", "model.pair_width=8", "model.depth=1", "trainer.max_steps=4",
              "trainer.batch_size=2", "trainer.val_every=0", "trainer.progress=false",
              "task.steps=3", "data.repeats=1", f"run_dir={run}"]
    r = subprocess.run(cmd + ["train", "recipe=protein_backbone_se3fm", *common],
                       capture_output=True, text=True, env={**_env(), **env}, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run(cmd + ["sample", f"checkpoint={run}", "lengths=[20,24]", "n=1",
                              f"out={tmp_path / 's'}"], capture_output=True, text=True,
                       env={**_env(), **env}, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    pdbs = sorted((tmp_path / "s").glob("*.pdb"))
    assert len(pdbs) == 2 and (tmp_path / "s" / "traces.png").stat().st_size > 1000
    b = read_pdb(pdbs[0])
    assert len(b) == 20 and torch.isfinite(b.coords).all()  # N, CA, C and O written
    r = subprocess.run(cmd + ["eval", f"checkpoint={run}", "n=4", "min_length=20",
                              "max_length=30", "max_pairs=3"], capture_output=True, text=True,
                       env={**_env(), **env}, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "CA-CA" in r.stdout and (run / "eval.json").is_file()
    r = subprocess.run(cmd + ["eval", f"checkpoint={run}", "n=4", "min_lenght=20"],
                       capture_output=True, text=True, env={**_env(), **env}, timeout=600)
    assert r.returncode == 2 and "min_lenght" in r.stderr


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_ot_coupling_in_the_task_lowers_the_path_length():
    """FoldFlow-OT pairing: the coupled prior is closer to the data than the random pairing
    (same draws), and the loss stays finite."""
    from toolkit.train.tasks import StepContext

    ds = backbone_dataset(crop=24, min_length=16, repeats=1)
    batch = torch.utils.data.default_collate([ds[i] for i in range(8)])
    net = FrameNet(width=16, pair_width=8, depth=1, heads=2)
    seen = {}

    class Spy(BackboneFlowTask):
        def _loss_se3(self, *args):
            out = super()._loss_se3(*args)
            seen[self.ot_coupling] = float(out["trans"]), float(out["rot"])
            return out

    for ot in (False, True):
        task = Spy(ot_coupling=ot, self_cond=0.0, motif_prob=0.0)
        out = task.loss(net, batch, StepContext(0, 0, torch.Generator().manual_seed(0)))
        assert torch.isfinite(out["loss"])
    # with an untrained network the loss is dominated by the conditional field's size,
    # which OT pairing shrinks
    assert seen[True][0] + seen[True][1] < seen[False][0] + seen[False][1]
