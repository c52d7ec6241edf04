"""Data-parallel training under torchrun (gloo, 2 CPU processes) against a single process.

What "matches" means here. With DDP each rank takes its slice of the same global batch and
the gradients are averaged, so a step is the single-process step of the same global batch,
up to the order of floating-point additions. Two things make real runs differ beyond that,
and the exactness tests switch both off: BatchNorm normalises with each rank's own half
batch (so we use timm's ``test_efficientnet_gn``, a GroupNorm network, which has no batch
statistics), and augmentation draws differ per rank (so ``--zoom 0 --rotation 0 --shift 0
--no-hflip``). What is left is summation order (and thread counts): measured, the final
weights differ by at most 1e-6 per tensor (``max_rel_diff``; ~1e-8 over all weights) and the
per-epoch losses by ~1e-7. The tests allow ``REL_TOL = 1e-4`` for both, room for other
CPUs' kernels. A DDP wrapper that is not rebuilt after a layer group is unfrozen (that
group's gradients are then never averaged) measured 0.5 per tensor and 2e-3 to 8e-3 on
the validation loss: far outside the tolerance.

The BatchNorm network (timm ``test_resnet``, augmentation on) is run once as well: there the
two runs are only statistically alike, so it checks a looser bound and everything else
(files written once, one log, the process group torn down cleanly).

All launches: ``python -m torch.distributed.run --standalone --nproc_per_node=2 -m wastenet
train ...`` with ``OMP_NUM_THREADS=1`` (two processes share this 2-core CPU).
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from wastenet import checkpoint
from wastenet.cli import main
from wastenet.training import distributed as D

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                       reason="torch.distributed with gloo is not available"),
]

REL_TOL = 1e-4  # see the module docstring
NO_AUGMENT = ["--zoom", "0", "--rotation", "0", "--shift", "0", "--no-hflip"]
GN = ["--model", "test_efficientnet_gn", "--weights", "none", "--img-size", "48", "--amp", "off",
      "--batch-size", "6", "--workers", "1", *NO_AUGMENT]
STAGED = ["--recipe", "wastenet", "--head-epochs", "3", "--head-views", "1", "--step-epochs", "1",
          "--epochs", "2", "--unfreeze-groups", "2"]


def torchrun(args: list[str], cwd: Path, script: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    target = [script] if script else ["-m", "wastenet", "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           *target], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def single_process(args: list[str]) -> None:
    """The reference run, in this process; its test report is skipped (only history and
    weights are compared, and the report costs more than the training here)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("wastenet.training.finish.finish", lambda trainer, train_seconds: {})
        assert main(["train", *args]) == 0


def history(run: Path) -> list[dict]:
    return list(csv.DictReader((run / "history.csv").open()))


def max_rel_diff(a: dict, b: dict) -> float:
    """Largest per-tensor ||a - b|| / ||b|| over floating-point weights (a small absolute floor
    keeps zero-initialised tensors from dividing by ~0)."""
    return max(float((a[k] - b[k]).norm() / (b[k].norm() + 1e-3)) for k in b if b[k].is_floating_point())


def assert_same_history(dist_run: Path, single_run: Path, tol: float,
                        keys=("train_loss", "val_loss", "train_acc", "val_acc")) -> None:
    h_dist, h_single = history(dist_run), history(single_run)
    assert [r["stage"] for r in h_dist] == [r["stage"] for r in h_single]
    for rd, rs in zip(h_dist, h_single):
        for key in keys:
            assert abs(float(rd[key]) - float(rs[key])) <= tol, (rd["epoch"], key, rd[key], rs[key])
        assert rd["group_lrs"] == rs["group_lrs"]  # same number of global steps: same schedule


def assert_written_once(run: Path, proc: subprocess.CompletedProcess, n_epochs: int) -> None:
    """Only rank 0 logs and writes: one log line per epoch, one report, no stray temp files."""
    assert len(history(run)) == n_epochs
    assert len(checkpoint.load(run / "last.pt")["history"]) == n_epochs
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".")]
    log = proc.stderr
    assert log.count("decoded ") == 1 and log.count("calibration: temperature") == 1
    assert sum(line.startswith("[") and "| val loss" in line for line in log.splitlines()) == sum(
        r["stage"] != "head" for r in history(run))
    assert proc.stdout.count("test accuracy") == 1  # rank 1 returns no metrics and prints nothing
    for name in ("best.pt", "split.csv", "config.yaml", "metrics.json", "report.md", "summary.json"):
        assert (run / name).is_file(), name
    import json

    assert json.loads((run / "summary.json").read_text())["run"]["world_size"] > 1  # how it ran, on record


# ---------------------------------------------------------------- helpers, in one process
def test_single_process_helpers_are_no_ops():
    assert not D.is_distributed() and D.world_size() == 1 and D.rank() == 0 and D.is_main()
    t = torch.arange(5.0)
    assert D.all_gather_tensor(t) is t and D.all_reduce_sums([1, 2.5]) == [1.0, 2.5]
    assert D.shard_range(7) == slice(0, 7) and D.loss_weight(3, 8) == 1.0
    model = torch.nn.Linear(2, 2)
    assert D.wrap(model, torch.device("cpu")) is model and checkpoint.unwrap(model) is model
    assert checkpoint.unwrap(torch.nn.DataParallel(model)) is model
    assert D.broadcast_object({"a": 1}) == {"a": 1}
    perm = torch.randperm(11)
    batches = D.local_batches(perm, 4)
    assert [len(i) for i, _ in batches] == [4, 4, 3]  # as the single-process loop, batches of one skipped
    assert torch.equal(torch.cat([i for i, _ in batches]), perm)
    assert [len(i) for i, _ in D.local_batches(perm[:9], 4)] == [4, 4]


@pytest.mark.parametrize("world", [2, 3])
def test_each_global_batch_is_split_across_ranks_exactly_once(world):
    perm = torch.randperm(23, generator=torch.Generator().manual_seed(0))
    per_rank = [D.local_batches(perm, 10, rank_=r, world=world) for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1  # every rank takes the same number of steps
    for step in range(len(per_rank[0])):
        parts = [per_rank[r][step][0] for r in range(world)]
        n_global = per_rank[0][step][1]
        assert torch.equal(torch.cat(parts), perm[10 * step : 10 * step + n_global])  # the single-process batch
        assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1
    # 23 = 10 + 10 + 3: the last batch leaves a rank fewer than 2 images, so every rank skips it
    assert [n for _, n in per_rank[0]] == [10, 10]
    lens = [len(D.local_batches(perm, 10, rank_=r, world=world)[0][0]) for r in range(world)]
    assert sum(lens) == 10 and all(n == 10 // world or n == 10 // world + 1 for n in lens)
    assert [D.shard_range(5, r, world) for r in range(world)][0].start == 0


def test_collectives_under_torchrun(tmp_path):
    script = tmp_path / "collectives.py"
    script.write_text(textwrap.dedent("""
        import torch
        from wastenet.training import distributed as D

        assert D.setup(torch.device("cpu")) == torch.device("cpu")
        assert D.is_distributed() and D.world_size() == 2 and D.is_main() == (D.rank() == 0)
        r = D.rank()
        # uneven lengths (3 and 1 rows) come back in rank order, padding removed
        got = D.all_gather_tensor(torch.full((3 - 2 * r, 2), float(r)))
        assert got.tolist() == [[0.0, 0.0]] * 3 + [[1.0, 1.0]], got
        # a rank with nothing to contribute
        got = D.all_gather_tensor(torch.arange(4.0) if r == 0 else torch.zeros(0))
        assert got.tolist() == [0.0, 1.0, 2.0, 3.0], got
        assert D.all_reduce_sums([1.0, r, 0.5]) == [2.0, 1.0, 1.0]
        assert D.broadcast_object({"rank": r}) == {"rank": 0}
        m = torch.nn.Linear(3, 2)
        torch.nn.init.constant_(m.weight, float(r))
        D.broadcast_module(m)
        assert float(m.weight.detach().abs().sum()) == 0.0
        assert D.loss_weight(4, 8) == 1.0 and D.loss_weight(3, 5) == 1.2
        with D.main_first():
            pass
        D.barrier()
        D.teardown()
        assert not D.is_distributed()
        print(f"<ok{r}>", flush=True)
    """))
    proc = torchrun([], tmp_path, script=str(script))
    assert "<ok0>" in proc.stdout and "<ok1>" in proc.stdout


# ---------------------------------------------------------------- whole runs
def test_finetune_under_torchrun_matches_one_process(tmp_path, image_folder):
    args = ["--data", str(image_folder), *GN, "--recipe", "finetune", "--epochs", "2"]
    single_process([*args, "--out", str(tmp_path / "single")])
    proc = torchrun([*args, "--out", str(tmp_path / "ddp")], tmp_path)
    assert_written_once(tmp_path / "ddp", proc, n_epochs=2)
    assert_same_history(tmp_path / "ddp", tmp_path / "single", tol=REL_TOL)
    w_dist = checkpoint.load(tmp_path / "ddp" / "last.pt")["state_dict"]
    w_single = checkpoint.load(tmp_path / "single" / "last.pt")["state_dict"]
    assert max_rel_diff(w_dist, w_single) < REL_TOL


@pytest.fixture(scope="module")
def staged_single(tmp_path_factory, image_folder):
    """One process, wastenet recipe, with a copy of the run folder after every epoch (what an
    interrupted run would have left behind)."""
    from wastenet.training.loop import Trainer

    root = tmp_path_factory.mktemp("staged")
    out = root / "single"
    original = Trainer.save_last

    def save_and_snapshot(self, *a, **kw):
        original(self, *a, **kw)
        snap = root / f"after-epoch-{self.state.global_epoch}"
        shutil.rmtree(snap, ignore_errors=True)
        shutil.copytree(out, snap)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "save_last", save_and_snapshot)
        single_process(["--data", str(image_folder), *GN, *STAGED, "--out", str(out)])
    return root


def test_staged_unfreezing_under_torchrun_matches_one_process(tmp_path, image_folder, staged_single):
    """Head on gathered cached features, then a fresh DDP wrapper per unfreezing step."""
    proc = torchrun(["--data", str(image_folder), *GN, *STAGED, "--out", str(tmp_path / "ddp")], tmp_path)
    single = staged_single / "single"
    stages = [r["stage"] for r in history(single)]
    assert stages == ["head"] * 3 + ["unfreeze-1", "unfreeze-2", "unfreeze-2"]
    assert_written_once(tmp_path / "ddp", proc, n_epochs=len(stages))
    assert_same_history(tmp_path / "ddp", single, tol=REL_TOL)
    w_dist = checkpoint.load(tmp_path / "ddp" / "last.pt")["state_dict"]
    assert max_rel_diff(w_dist, checkpoint.load(single / "last.pt")["state_dict"]) < REL_TOL


def test_resume_under_torchrun_finishes_the_interrupted_run(tmp_path, image_folder, staged_single):
    """Interrupted after the first epoch of the last step (optimizer and one-cycle state saved
    mid-stage), resumed with 2 processes: same history and weights as the uninterrupted run."""
    run = tmp_path / "run"
    shutil.copytree(staged_single / "after-epoch-5", run)
    assert len(history(run)) == 5
    proc = torchrun(["--data", str(image_folder), *GN, *STAGED, "--out", str(run), "--resume"], tmp_path)
    assert proc.stderr.count("resuming at stage 2 (unfreeze-2), epoch 1 of that stage") == 1  # rank 0 logs
    assert proc.stdout.count("test accuracy") == 1
    single = staged_single / "single"
    assert [r["epoch"] for r in history(run)] == [str(e) for e in range(1, 7)]
    assert_same_history(run, single, tol=REL_TOL)
    w_dist = checkpoint.load(run / "last.pt")["state_dict"]
    assert max_rel_diff(w_dist, checkpoint.load(single / "last.pt")["state_dict"]) < REL_TOL


def test_batchnorm_network_with_augmentation_trains_under_torchrun(tmp_path, image_folder):
    """test_resnet has BatchNorm (statistics per rank, frozen groups' kept in eval mode) and
    augmentation is on (different draws per rank): the runs agree only statistically. The
    first epochs barely move the loss (~1.09 = ln 3), so the bound is loose: 0.05."""
    args = ["--data", str(image_folder), "--model", "test_resnet", "--weights", "none", "--img-size", "48",
            "--amp", "off", "--batch-size", "6", "--workers", "1", *STAGED]
    proc = torchrun([*args, "--out", str(tmp_path / "ddp")], tmp_path)
    single_process([*args, "--out", str(tmp_path / "single")])
    assert_written_once(tmp_path / "ddp", proc, n_epochs=6)
    assert_same_history(tmp_path / "ddp", tmp_path / "single", tol=0.05, keys=("val_loss",))


def test_lwf_under_torchrun_matches_one_process_up_to_summation_order(tmp_path, image_folder):
    """The default ``--lwf auto`` with weights that carry a 1000-class ImageNet head: each rank runs
    the frozen anchor on its own half batch, and the KL term is averaged like the label loss.

    The weights cannot be compared at REL_TOL here: the KL term starts at exactly 0 (the anchor is
    the student), so some small biases get gradients that are rounding noise, and AdamW turns
    noise into full-size steps. Measured: one process with 1 thread against 2 threads differs by
    ~0.1 on those tensors (without --lwf 1e-5). So the bound is that noise floor, measured here."""
    import timm
    from safetensors.torch import save_file

    weights = tmp_path / "gn-imagenet.safetensors"  # stands in for pretrained weights with their head
    torch.manual_seed(0)
    save_file(timm.create_model("test_efficientnet_gn", num_classes=1000).state_dict(), str(weights))
    gn = [a if a != "none" else str(weights) for a in GN]
    args = ["--data", str(image_folder), *gn, "--recipe", "finetune", "--epochs", "2"]
    for threads in ("1", "2"):
        single_process([*args, "--threads", threads, "--out", str(tmp_path / f"single-{threads}")])
    proc = torchrun([*args, "--out", str(tmp_path / "ddp")], tmp_path)
    assert proc.stderr.count("learning without forgetting (--lwf auto): weight 1") == 1
    assert_same_history(tmp_path / "ddp", tmp_path / "single-2", tol=REL_TOL)
    weights_of = {r: checkpoint.load(tmp_path / r / "last.pt")["state_dict"] for r in ("ddp", "single-1", "single-2")}
    noise_floor = max_rel_diff(weights_of["single-1"], weights_of["single-2"])
    assert max_rel_diff(weights_of["ddp"], weights_of["single-2"]) <= 2 * noise_floor + REL_TOL
    assert "imagenet" in checkpoint.load(tmp_path / "ddp" / "best.pt")["ood"]["method"]  # the kinds score is kept
