"""``brainseg models``: list, install, remove and describe named model bundles."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from brainseg_cli.cli import common

HELP = (
    "Named model bundles: a checkpoint or export with its model card (training data, channels in order, labels, "
    "spacing, metrics, licence, sha256), installed into $BRAINSEG_HOME/models (default ~/.cache/brainseg/models). "
    "`brainseg predict -m NAME` runs an installed bundle."
)


models_app = typer.Typer(help=HELP, no_args_is_help=True, add_completion=False,
                         context_settings={"help_option_names": ["-h", "--help"]})


def _card_json(bundle) -> dict:
    return {"name": bundle.name, "folder": str(bundle.folder), "model": str(bundle.model_path), "card": bundle.card}


@models_app.command("list", help="The installed bundles, one line each.")
def list_models(as_json: common.JsonOption = False) -> None:
    from brainseg_cli import bundles

    found = common.run(bundles.installed)
    if as_json:
        common.emit_json("models list", inputs={"home": bundles.home()},
                         result={"bundles": [_card_json(b) for b in found]})
        return
    if not found:
        common.stderr_console.print(f"no model bundle installed in {bundles.models_dir()}", markup=False)
        return
    from rich.table import Table

    table = Table(show_header=True, title=str(bundles.models_dir()), title_justify="left")
    for column in ("name", "model", "channels", "outputs", "trained on", "MB"):
        table.add_column(column, no_wrap=column in ("name", "MB"), justify="right" if column == "MB" else "left")
    for b in found:
        card, model = b.card, b.card["model"]
        outputs = card["regions"] if card.get("region_based") else {k: v for k, v in card["labels"].items() if v}
        table.add_row(b.name, f"{model.get('architecture')} {model.get('config') or ''}".strip(),
                      ",".join(card.get("channels") or []), ",".join(outputs),
                      str((card.get("trained_on") or {}).get("dataset")), f"{int(model.get('bytes') or 0) / 1e6:.1f}")
    common.stdout_console.print(table)


@models_app.command("install", help="Install a bundle from a .bundle.zip archive, a checkpoint or export file, or an "
                                    "http(s) URL of an archive (resumes an interrupted download; the model's sha256 "
                                    "is checked against its card, the archive's against --sha256).",
                    no_args_is_help=True)
def install_model(
    source: Annotated[str, typer.Argument(help="Archive, model file or URL.", show_default=False)],
    name: Annotated[Optional[str], typer.Option("--name", help="Install under this name [default: the card's, or "
                                                "the model file's stem].", show_default=False)] = None,
    sha256: Annotated[Optional[str], typer.Option("--sha256", help="Expected sha256 of the archive or file.",
                                                  show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an installed bundle of the same name.")] = False,
    licence: Annotated[Optional[str], typer.Option("--licence", help="Licence of the training data, for a card made "
                                                   "from a model file [default: the dataset's].",
                                                   show_default=False)] = None,
    as_json: common.JsonOption = False,
) -> None:
    from brainseg_cli import bundles

    with common.make_progress() as bar:
        task = bar.add_task("installing", total=None)

        def progress(description: str, done: int, total: int) -> None:
            bar.update(task, description=description, completed=done, total=total)

        result = common.run(bundles.install, source=source, name=name, sha256=sha256, force=force, licence=licence,
                            progress=progress)
    if as_json:
        common.emit_json("models install", inputs={"source": source, "name": name, "sha256": sha256, "force": force},
                         result={"installed": _card_json(result.bundle), "downloaded": result.downloaded,
                                 "replaced": result.replaced})
        return
    common.stderr_console.print(f"installed {result.bundle.name}{' (replaced)' if result.replaced else ''} from "
                                f"{result.source}", markup=False, soft_wrap=True)
    common.echo(str(result.bundle.folder))


@models_app.command("remove", help="Uninstall a bundle.", no_args_is_help=True)
def remove_model(name: Annotated[str, typer.Argument(help="Bundle name.", show_default=False)],
                 as_json: common.JsonOption = False) -> None:
    from brainseg_cli import bundles

    folder = common.run(bundles.remove, name=name)
    if as_json:
        common.emit_json("models remove", inputs={"name": name}, result={"removed": name, "folder": folder})
        return
    common.stderr_console.print(f"removed {name} ({folder})", markup=False, soft_wrap=True)


@models_app.command("info", help="A bundle's model card.", no_args_is_help=True)
def info_model(name: Annotated[str, typer.Argument(help="Bundle name.", show_default=False)],
               as_json: common.JsonOption = False) -> None:
    from brainseg_cli import bundles

    bundle = common.run(bundles.get, name=name)
    if as_json:
        common.emit_json("models info", inputs={"name": name}, result=_card_json(bundle))
        return
    from rich.table import Table

    table = Table(show_header=False, box=None)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value")
    for field, value in bundles.iter_card_lines(bundle.card):
        table.add_row(field, value)
    table.add_row("file", str(bundle.model_path))
    common.stdout_console.print(table)


@models_app.command("pack", help="Write a bundle archive (NAME.bundle.zip: the model file and its card) from a "
                                 "checkpoint or export, to share or install elsewhere.", no_args_is_help=True)
def pack_model(
    model: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Checkpoint or export.", show_default=False)],
    name: Annotated[str, typer.Option("--name", help="The bundle's name.", show_default=False)],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", dir_okay=False,
                                                   help="Archive to write [default: NAME.bundle.zip here].",
                                                   show_default=False)] = None,
    licence: Annotated[Optional[str], typer.Option("--licence", help="Licence of the training data [default: the "
                                                   "dataset's].", show_default=False)] = None,
    description: Annotated[Optional[str], typer.Option("--description", help="Free text for the card.",
                                                       show_default=False)] = None,
    as_json: common.JsonOption = False,
) -> None:
    from brainseg_cli import bundles

    target = output or Path(f"{name}{bundles.ARCHIVE_ENDING}")
    path = common.run(bundles.pack_bundle, model_file=model, output=target, name=name, licence=licence,
                      description=description)
    if as_json:
        common.emit_json("models pack", inputs={"model": model, "name": name}, result={"written": [path]})
        return
    common.echo(str(path))


def register(app: typer.Typer) -> None:
    """Add ``models`` to the root app."""
    app.add_typer(models_app, name="models", help=HELP)
