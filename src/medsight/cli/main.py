"""The ``medsight`` command line: one Typer app, a thin module per subcommand.

Each subcommand parses its options and calls one importable, keyword-only function.
Heavy imports (torch, MONAI) happen inside the commands so ``medsight --help`` is instant.
"""

from __future__ import annotations

import typer

from medsight.cli import (
    data_cmd,
    demo_cmd,
    dicom_cmd,
    eval_cmd,
    explain_cmd,
    export_cmd,
    feedback_cmd,
    gan_cmd,
    models_cmd,
    pacs_cmd,
    plan_cmd,
    predict_cmd,
    pretrain_cmd,
    registry_cmd,
    retrain_cmd,
    robustness_cmd,
    serve_cmd,
    train_cmd,
    triage_cmd,
)

app = typer.Typer(
    name="medsight",
    help="Deep learning on medical images: data -> trained model -> evaluation -> deployment.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("train")(train_cmd.train)
app.command("evaluate")(eval_cmd.evaluate)
app.command("predict")(predict_cmd.predict)
app.command("demo")(demo_cmd.demo)
app.command("plan")(plan_cmd.plan)
app.command("explain")(explain_cmd.explain)
app.command("export")(export_cmd.export)
app.command("robustness")(robustness_cmd.robustness)
app.command("serve")(serve_cmd.serve)
app.command("retrain")(retrain_cmd.retrain)
app.command("pretrain")(pretrain_cmd.pretrain)
app.add_typer(data_cmd.app, name="data")
app.add_typer(dicom_cmd.app, name="dicom")
app.add_typer(models_cmd.app, name="models")
app.add_typer(feedback_cmd.app, name="feedback")
app.add_typer(registry_cmd.app, name="registry")
app.add_typer(triage_cmd.app, name="triage")
app.add_typer(pacs_cmd.app, name="pacs")
app.add_typer(gan_cmd.app, name="gan")


if __name__ == "__main__":
    app()
