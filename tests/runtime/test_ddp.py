"""Data-parallel training (DDP on gloo, CPU): 2 processes reproduce 1 process, resume, 2 nodes;
classification and segmentation.

Tolerance: with the same seed and effective batch (each of W processes trains on batch_size/W
rows of the same global batch), the final weights of 1 and 2 processes differ by at most
``WEIGHT_TOL = 1e-4`` (max |dw|; gradients are averaged in a different float order) and the
validation loss/AUC per epoch by at most ``METRIC_TOL = 1e-4`` (relative above 1: the batch-norm
classifier's validation loss is ~90 after its 2 short epochs). The classifier has batch norm,
synchronised over the processes (:mod:`medsight.runtime.sync_norm`; without it each process would
normalise its own shard); its running means and variances agree within ``STATS_TOL = 1e-3``
(relative above 1; measured 1.2e-4: they average the statistics of activations that carry the float
differences of every layer below) and no dropout (each process draws its own masks, which changes the
numbers, not the method). A 2-process run stopped after epoch 1 and resumed is
the same computation as a straight run of the same world size, so they match to ``EXACT_TOL = 1e-6``.
The classifier trains with plain SGD (momentum): Adam divides by the gradient's own scale, so a unit
whose true gradient is ~0 takes lr-sized steps whose sign is float noise, and that noise depends on
the CPU's kernels (AdamW measured 5e-3 apart on one AMX machine, 3e-5 on another; SGD 1.5e-8).
Segmentation (a MONAI UNet: instance norm, per-patch Dice) shards each global batch of patches
the same way and is held to the same ``WEIGHT_TOL``.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import typer
from safetensors.torch import load_file
from typer.testing import CliRunner

from medsight.cli.train_cmd import torchrun_command, train
from medsight.config import TrainConfig
from medsight.errors import ConfigError
from medsight.runtime import distributed

# All DDP launches run in one pytest worker (``--dist loadgroup``), one at a time: two launches at
# once would put 4 training processes on the 2 cores and let the loopback port probe race.
pytestmark = pytest.mark.xdist_group("ddp")

WEIGHT_TOL = 1e-4
STATS_TOL = 1e-3
METRIC_TOL = 1e-4
EXACT_TOL = 1e-6
TIMEOUT = 300
MEDSIGHT = [sys.executable, "-m", "medsight.cli.main", "train"]
CONFIG = """\
name: ddp
task: classification
data: {class_names: [normal, nodule]}
preprocess: {size: [16, 16], channels: 1, normalize: zscore}
augment: {flip_h: 0.5, rotate_deg: 8}
model: {name: classic_cnn, kwargs: {batch_norm: true, dropout: 0.0}}
train: {epochs: 2, batch_size: 16, optimizer: sgd, lr: 0.3, schedule: cosine, num_threads: 1}
eval: {bootstrap: 0}
"""


def _env(tmpdir: Path | None = None) -> dict[str, str]:
    """The launches' environment; ``tmpdir``: their temp folder (``TMPDIR``)."""
    extra = {} if tmpdir is None else {"TMPDIR": str(tmpdir)}
    return {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", **extra}


def _killed_by_a_signal(result: subprocess.CompletedProcess) -> bool:
    """True when torchrun reports only ranks that died of a signal (no rank exited with a Python error).

    Gloo on a loaded machine can, rarely, abort a rank from a socket thread (SIGABRT); our code
    then never ran into an error of its own. Such a launch is run once more, with a warning.
    """
    codes = re.findall(r"exitcode\s*:\s*(-?\d+)", result.stderr)
    return result.returncode != 0 and bool(codes) and all(int(code) < 0 for code in codes)


def _launch(args: list[str], *, fresh: Path | None = None, tmpdir: Path | None = None) -> subprocess.CompletedProcess:
    """``medsight train ARGS``, run once more if a rank died of a signal (emptying ``fresh`` first, when
    given); ``tmpdir``: the launch's ``TMPDIR``."""
    def run() -> subprocess.CompletedProcess:
        return subprocess.run([*MEDSIGHT, *args], env=_env(tmpdir), capture_output=True, text=True,
                              timeout=TIMEOUT, check=False)

    result = run()
    if _killed_by_a_signal(result):
        warnings.warn(f"a DDP rank died of a signal; launching once more:\n{_failure(result.stderr)}", stacklevel=2)
        if fresh is not None:
            shutil.rmtree(fresh, ignore_errors=True)
        result = run()
    return result


def _failure(stderr: str) -> str:
    """What a failed launch printed: each rank's error lines (torchrun interleaves the ranks), then the end."""
    marks = ("Error", "error", "Traceback", "terminate", "Fatal", "Abort", "abort", "Signal")
    errors = [line for line in stderr.splitlines() if any(mark in line for mark in marks)]
    return "\n".join(errors[-60:]) + "\n...\n" + stderr[-3000:]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The last epoch's weights from the run's checkpoint."""
    state = load_file(run_dir / "checkpoints" / "last.safetensors")
    return {k: v for k, v in state.items() if k.startswith("model.")}


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def _split_running_stats(weights: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """(everything else, batch norm's running means and variances)."""
    stats = {k: v for k, v in weights.items() if ".running_" in k}
    return {k: v for k, v in weights.items() if k not in stats}, stats


def _history(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _data_and_config(tmp_path_factory: pytest.TempPathFactory, name: str, make_data, config: str) -> tuple[Path, Path]:
    """``make_data(folder)``'s data set and a config file holding ``config``, in a fresh temporary folder."""
    root = tmp_path_factory.mktemp(name)
    data = make_data(root / "data")
    (root / f"{name}.yaml").write_text(config)
    return Path(data), root / f"{name}.yaml"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """64 phantom images of 16x16 px (32 per class) and the config that trains on them."""
    from medsight.data.phantoms import make_chest_phantoms

    return _data_and_config(tmp_path_factory, "ddp", lambda folder: make_chest_phantoms(
        folder, n_per_class=32, size=16, seed=1), CONFIG)


def _one_process(setup: tuple[Path, Path], out: Path) -> Path:
    """A plain one-process run of the set-up's config and data into ``out``."""
    from medsight.config import load_config
    from medsight.workflows.train import run_training

    data, config = setup
    run_training(load_config(config, overrides={"data.path": str(data)}), out=out, progress=False)
    return out


def _stopped_and_resumed(setup: tuple[Path, Path], out: Path) -> tuple[str, str]:
    """``--nproc 2`` on one node, stopped after epoch 1 of 2 (time limit), then resumed to epoch 2.

    Returns the two launches' standard output.
    """
    data, config = setup
    args = [str(config), "--data", str(data), "--out", str(out), "--nproc", "2", "--no-progress"]
    tmpdir = out.parent / f"{out.name}_tmp"
    tmpdir.mkdir()
    first = _launch([*args, "--set", "train.time_limit_min=0.000001"], fresh=out, tmpdir=tmpdir)
    assert first.returncode == 0, _failure(first.stderr)
    assert [row["epoch"] for row in _history(out)] == ["1"]
    second = _launch([*args, "--resume"], tmpdir=tmpdir)
    assert second.returncode == 0, _failure(second.stderr)
    return first.stdout, second.stdout


@pytest.fixture(scope="module")
def one_process(setup: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _one_process(setup, tmp_path_factory.mktemp("one"))


@pytest.fixture(scope="module")
def resumed(setup: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Classification, 2 processes, stopped after epoch 1 and resumed (:func:`_stopped_and_resumed`)."""
    out = tmp_path_factory.mktemp("resumed")
    first, _ = _stopped_and_resumed(setup, out)
    assert first.count("bundle:") == 1  # only rank 0 reports
    return out


NODES_TIMEOUT = 120  # a 2-node run takes ~10 s; a rank lost at teardown leaves node 0's torchrun waiting 300 s


def _two_node_launch(setup: tuple[Path, Path], root: Path) -> tuple[list[int | None], list[tuple[str, str]]]:
    """Two ``--nnodes 2`` launches (node ranks 0 and 1) meeting on a free loopback port, into
    ``root/node0`` and ``root/node1``. Returns their exit codes (None: killed after NODES_TIMEOUT)
    and their (stdout, stderr)."""
    data, config = setup
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launches = [
        subprocess.Popen(
            [*MEDSIGHT, str(config), "--data", str(data), "--out", str(root / f"node{rank}"), "--no-progress",
             "--nproc", "1", "--nnodes", "2", "--node-rank", str(rank), "--master-addr", "127.0.0.1",
             "--master-port", str(port)],
            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for rank in (0, 1)
    ]
    codes, outputs = [], []
    for launch in launches:
        try:
            outputs.append(launch.communicate(timeout=NODES_TIMEOUT))
            codes.append(launch.returncode)
        except subprocess.TimeoutExpired:
            launch.kill()
            outputs.append(launch.communicate())
            codes.append(None)
    return codes, outputs


@pytest.fixture(scope="module")
def two_nodes(setup: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, str]]:
    """A straight 2-epoch run as 2 nodes x 1 process: two launches meeting on a loopback port.

    A pair that hangs or dies of a signal without a Python error in either node (the rare gloo
    teardown failure, see :func:`_killed_by_a_signal`) is launched once more, with a warning.
    Returns each node's run folder and standard output.
    """
    root = tmp_path_factory.mktemp("nodes")
    codes, outputs = _two_node_launch(setup, root)
    if codes != [0, 0] and not any("Traceback (most recent call last)" in err for _, err in outputs):
        report = "\n".join(f"node {rank}: exit {code}\n{_failure(err)}" for rank, (code, (_, err))
                           in enumerate(zip(codes, outputs, strict=True)))
        warnings.warn(f"the 2-node launch failed without a Python error; launching once more:\n{report}",
                      stacklevel=2)
        shutil.rmtree(root)
        codes, outputs = _two_node_launch(setup, root)
    for code, (_, err) in zip(codes, outputs, strict=True):
        assert code == 0, f"exit {code} (None: hung for {NODES_TIMEOUT} s)\n{_failure(err)}"
    return [(root / f"node{rank}", stdout) for rank, (stdout, _) in enumerate(outputs)]


@pytest.mark.parametrize("run", ["resumed", "two_nodes"])
def test_two_processes_match_one_process(run: str, one_process: Path, request: pytest.FixtureRequest) -> None:
    ddp = request.getfixturevalue(run)
    ddp = ddp[0][0] if run == "two_nodes" else ddp
    (one_w, one_stats), (ddp_w, ddp_stats) = (_split_running_stats(_weights(run)) for run in (one_process, ddp))
    assert _max_diff(one_w, ddp_w) < WEIGHT_TOL
    assert one_stats and all(
        float(((one_stats[k] - ddp_stats[k]).abs() / one_stats[k].abs().clamp(min=1)).max()) < STATS_TOL
        for k in one_stats
    )
    one, two = _history(one_process), _history(ddp)
    assert [row["epoch"] for row in two] == ["1", "2"]  # one writer: no duplicated rows
    for a, b in zip(one, two, strict=True):
        for key in ("train_loss", "val_loss", "auc", "accuracy"):
            assert abs(float(a[key]) - float(b[key])) < METRIC_TOL * max(1.0, abs(float(a[key]))), (key, a[key], b[key])
    assert (ddp / "model" / "weights.safetensors").is_file()
    assert (ddp / "report.html").is_file()


def test_resume_under_ddp_matches_straight_run(resumed: Path, two_nodes: list[tuple[Path, str]]) -> None:
    assert _max_diff(_weights(resumed), _weights(two_nodes[0][0])) < EXACT_TOL  # the same world of 2


def test_two_node_run_is_written_by_node_zero_only(two_nodes: list[tuple[Path, str]]) -> None:
    (node0, out0), (node1, out1) = two_nodes
    assert (node0 / "model" / "weights.safetensors").is_file()
    assert "bundle:" in out0 and "bundle:" not in out1
    for written_by_rank0 in ("model", "metrics.csv", "checkpoints", "report.html", "tensorboard"):
        assert not (node1 / written_by_rank0).exists(), written_by_rank0


def test_torchrun_keeps_its_rank_folders_in_the_run_folder(resumed: Path) -> None:
    """Both launches of the resumed run wrote torchrun's per-rank folders under RUN_DIR/torchrun/ and
    left nothing in their temp folder (torchrun's default is a new torchelastic_* folder there)."""
    launches = sorted((resumed / "torchrun").iterdir())
    assert len(launches) >= 2  # one per launch (a launch repeated after a killed rank adds one)
    assert all(sorted(p.name for p in (launch / "attempt_0").iterdir()) == ["0", "1"] for launch in launches)
    assert list((resumed.parent / f"{resumed.name}_tmp").glob("torchelastic_*")) == []


def test_torchrun_command_single_and_multi_node() -> None:
    single = torchrun_command(["cfg.yaml"], nproc=2)
    assert single[1:] == ["-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
                          "-m", "medsight.cli.main", "train", "cfg.yaml"]
    multi = torchrun_command(["cfg.yaml"], nproc=1, nnodes=2, node_rank=1, master_addr="10.0.0.5", master_port=29600)
    assert multi[3:13] == ["--nproc-per-node", "1", "--nnodes", "2", "--node-rank", "1",
                           "--master-addr", "10.0.0.5", "--master-port", "29600"]
    logged = torchrun_command(["cfg.yaml"], nproc=2, log_dir=Path("/runs/a/torchrun"))
    assert logged[3:7] == ["--nproc-per-node", "2", "--log-dir", "/runs/a/torchrun"]


def test_outside_torchrun_is_one_process_of_rank_zero() -> None:
    images, labels = torch.arange(8.0).reshape(8, 1), torch.arange(8)
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    assert distributed.shard(images, labels)[1].tolist() == list(range(8))
    assert distributed.mean_over_ranks(torch.tensor(6.0), 4) == pytest.approx(1.5)
    assert distributed.broadcast({"a": 1}) == {"a": 1}


def test_batch_that_does_not_split_evenly_is_a_config_error() -> None:
    distributed.check_config(TrainConfig(batch_size=16), 2)
    distributed.check_config(TrainConfig(batch_size=15), 1)
    with pytest.raises(ConfigError, match="does not split evenly over 2 processes.*multiple of 2"):
        distributed.check_config(TrainConfig(batch_size=15), 2)


def test_gradual_unfreezing_under_ddp_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unfreeze_every=2: gradual unfreezing is not supported with DDP"):
        distributed.check_config(TrainConfig(batch_size=16, unfreeze_every=2), 2)


def test_more_processes_than_cores_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="CPU core"):
        distributed.check_processes(os.cpu_count() + 1, torch.device("cpu"))


def _cli(args: list[str]):
    app = typer.Typer()
    app.command()(train)
    return CliRunner().invoke(app, args)


@pytest.mark.parametrize(("launched", "world", "exits"), [(True, 2, True), (True, 1, False), (False, 1, False)])
def test_a_finished_ddp_process_ends_without_interpreter_teardown(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, launched: bool, world: int, exits: bool
) -> None:
    """Gloo can abort a process in the interpreter's teardown after a finished run; a DDP process
    therefore ends with ``os._exit(0)`` once its summary is printed. One process exits normally."""
    import contextlib

    import medsight.workflows.train as pipeline

    exit_codes: list[int] = []

    def fake_exit(code: int) -> None:
        exit_codes.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(distributed, "under_torchrun", lambda: launched)
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    monkeypatch.setattr(distributed, "session", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(pipeline, "run_training", lambda cfg, **kwargs: "trained")
    monkeypatch.setattr(os, "_exit", fake_exit)
    result = _cli(["--recipe", "demo", "--data", str(tmp_path), "--out", str(tmp_path / "run")])
    assert "trained" in result.output
    assert exit_codes == ([0] if exits else [])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "15", "--nproc", "2"], "does not split evenly"),
        (["--nproc", "4096"], "CPU core"),
        (["--nnodes", "2", "--node-rank", "2"], "outside 0..1"),
    ],
)
def test_cli_rejects_bad_launch_before_starting_processes(
    setup: tuple[Path, Path], args: list[str], message: str
) -> None:
    data, config = setup
    result = _cli([str(config), "--data", str(data), *args])
    assert result.exit_code == 2
    assert message in result.output


SEG_CONFIG = """\
name: ddp-seg
task: segmentation
data: {val_fraction: 0.25}
augment: {flip_h: 0.5, flip_v: 0.5}
model: {name: unet, kwargs: {base_features: 8, depth: 3, num_res_units: 1}}
train: {epochs: 2, optimizer: adamw, lr: 0.003, schedule: cosine, num_threads: 1}
segment: {patch_size: [32, 32], batch_size: 8, steps_per_epoch: 4}
eval: {bootstrap: 0}
"""


@pytest.fixture(scope="module")
def seg_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """12 lung phantoms of 32x32 px with their masks, and a segmentation config (UNet with instance norm)."""
    from medsight.data.phantoms import make_lung_phantoms

    return _data_and_config(tmp_path_factory, "ddp_seg", lambda folder: make_lung_phantoms(
        folder, n=12, size=32, seed=1), SEG_CONFIG)


@pytest.fixture(scope="module")
def seg_one_process(seg_setup: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _one_process(seg_setup, tmp_path_factory.mktemp("seg_one"))


@pytest.fixture(scope="module")
def seg_resumed(seg_setup: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """Segmentation, 2 processes, stopped after epoch 1 and resumed: the run folder and both launches' output."""
    out = tmp_path_factory.mktemp("seg_resumed")
    return (out, *_stopped_and_resumed(seg_setup, out))


def test_segmentation_two_processes_resumed_match_one_process(
    seg_one_process: Path, seg_resumed: tuple[Path, str, str]
) -> None:
    ddp, first, second = seg_resumed
    one_w, ddp_w = _weights(seg_one_process), _weights(ddp)
    # A convolution's bias just before an instance norm is cancelled by the norm: its exact
    # gradient is 0 and it never changes the output, so its float-noise gradient (which Adam
    # scales up to lr-sized steps) is left out of the weight comparison; the outputs below are not.
    cancelled = {k for k in one_w if k.endswith(".conv.bias") and k.replace(".conv.bias", ".adn.A.weight") in one_w}
    assert cancelled and all(k.endswith("bias") for k in cancelled)
    assert _max_diff(*({k: v for k, v in w.items() if k not in cancelled} for w in (one_w, ddp_w))) < WEIGHT_TOL
    assert _max_outputs_diff(one_w, ddp_w) < WEIGHT_TOL
    one, two = _history(seg_one_process), _history(ddp)
    assert [row["epoch"] for row in two] == ["1", "2"]  # rank 0 alone writes metrics.csv
    for a, b in zip(one, two, strict=True):
        for key in ("train_loss", "val_dice"):
            assert abs(float(a[key]) - float(b[key])) < METRIC_TOL, (key, a[key], b[key])
    assert first.count("bundle:") == 1 and second.count("bundle:") == 1  # only rank 0 reports
    metrics = json.loads((ddp / "metrics.json").read_text())
    assert metrics["n"] == 3 and 0.0 <= metrics["dice"] <= 1.0
    assert (ddp / "model" / "weights.safetensors").is_file()


def _max_outputs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Max |difference| of the two weight sets' UNet outputs on one fixed random batch."""
    from medsight.models import create_model

    outputs = []
    for weights in (a, b):
        net = create_model("unet", in_channels=1, num_outputs=2, spatial_dims=2, base_features=8, depth=3,
                           num_res_units=1)
        net.load_state_dict({k.removeprefix("model."): v for k, v in weights.items()})
        with torch.no_grad():
            outputs.append(net.eval()(torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))))
    return float((outputs[0] - outputs[1]).abs().max())


def test_segmentation_batch_that_does_not_split_is_refused_before_launch(seg_setup: tuple[Path, Path]) -> None:
    data, config = seg_setup
    result = _cli([str(config), "--data", str(data), "--nproc", "2", "--set", "segment.batch_size=7"])
    assert result.exit_code == 2
    assert "segment.batch_size=7: does not split evenly over 2 processes" in result.output


KILL_EPOCHS = 6


def test_a_ddp_run_killed_with_sigkill_resumes_to_bit_identical_weights(setup: tuple[Path, Path],
                                                                         tmp_path: Path) -> None:
    """``--nproc 2``: torchrun and both ranks killed with SIGKILL after an epoch's checkpoint, then
    ``--resume``: the final weights equal those of an unbroken ``--nproc 2`` run, bit for bit (the same
    world size, the same arithmetic in the same order, so no tolerance)."""
    data, config = setup
    common = [str(config), "--data", str(data), "--nproc", "2", "--no-progress", "--epochs", str(KILL_EPOCHS)]
    straight = _launch([*common, "--out", str(tmp_path / "straight")], fresh=tmp_path / "straight")
    assert straight.returncode == 0, _failure(straight.stderr)

    killed = tmp_path / "killed"
    proc = subprocess.Popen([*MEDSIGHT, *common, "--out", str(killed)], env=_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + TIMEOUT
    while not (killed / "metrics.csv").is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its two ranks, at once
    proc.wait()
    interrupted_at = len(_history(killed)) if (killed / "metrics.csv").is_file() else 0
    assert 1 <= interrupted_at < KILL_EPOCHS, "the run should have been killed mid-way"
    assert not (killed / "model").exists()
    before = _history(killed)

    resumed = _launch([*common, "--out", str(killed), "--resume"])
    assert resumed.returncode == 0, _failure(resumed.stderr)
    after = _history(killed)
    assert [row["epoch"] for row in after] == [str(e) for e in range(1, KILL_EPOCHS + 1)]
    assert after[:interrupted_at] == before  # the epochs it had trained were kept (timings too), not trained again
    a, b = _weights(tmp_path / "straight"), _weights(killed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), _max_diff(a, b)
