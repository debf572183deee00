"""The registry and feedback commands through a local Typer app (as main.py registers them)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import typer
from typer.testing import CliRunner

from medsight.cli import feedback_cmd, registry_cmd

app = typer.Typer()
app.add_typer(registry_cmd.app, name="registry")
app.add_typer(feedback_cmd.app, name="feedback")


def test_registry_commands(trained_run: Path, tmp_path: Path) -> None:
    runner, reg = CliRunner(), str(tmp_path / "reg")
    done = runner.invoke(app, ["registry", "register", str(trained_run / "model"), "--registry", reg])
    assert done.exit_code == 0 and "version 1 (candidate)" in done.output
    runner.invoke(app, ["registry", "register", str(trained_run / "model"), "--registry", reg, "--parent", "1"])
    assert "version 2" in runner.invoke(app, ["registry", "promote", "2", "--registry", reg]).output
    listed = runner.invoke(app, ["registry", "list", "--registry", reg]).output.splitlines()
    assert listed[0].split()[:2] == ["1", "candidate"] and listed[1].split()[:3] == ["2", "production", "parent=1"]
    assert "val_auc=" in listed[0]
    bad = runner.invoke(app, ["registry", "promote", "9", "--registry", reg])
    assert bad.exit_code == 2 and "version 9: is not in the registry" in bad.output
    nothing = runner.invoke(app, ["registry", "rollback", "--registry", reg])
    assert nothing.exit_code == 2 and "no earlier production version" in nothing.output


def test_feedback_commands(tmp_path: Path, small_phantoms: Path) -> None:
    from medsight.feedback import FeedbackStore

    store = FeedbackStore(tmp_path / "fb")
    path = sorted((small_phantoms / "nodule").iterdir())[0]
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    store.add(sha256=sha, input_data=data, input_kind="png", user_id="key-1", model_name="m",
              model_version="sha256:1", kind="agree", prediction={"label": "nodule"})
    runner = CliRunner()
    listed = runner.invoke(app, ["feedback", "list", "--db", str(tmp_path / "fb")])
    assert listed.exit_code == 0 and sha[:12] in listed.output and "1 verdict(s)" in listed.output
    done = runner.invoke(app, ["feedback", "export", "--db", str(tmp_path / "fb"), "--out", str(tmp_path / "ds")])
    assert done.exit_code == 0 and "1 classification cases" in done.output
    assert (tmp_path / "ds" / "nodule" / f"{sha}.png").is_file()
    empty = runner.invoke(app, ["feedback", "export", "--db", str(tmp_path / "none"), "--out", str(tmp_path / "x")])
    assert empty.exit_code == 2 and "holds no feedback" in empty.output
