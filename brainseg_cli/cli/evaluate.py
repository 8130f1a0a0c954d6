"""``brainseg evaluate``: score predicted label maps against references (docs/DEFINITIONS.md §3, §5)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperCommand

from brainseg_cli import choices
from brainseg_cli.cli import common

HD95Choice = common.choice_enum("HD95Choice", choices.HD95_MODES, "HD95 definitions (docs/DEFINITIONS.md §3).")

EmptyChoice = common.choice_enum("EmptyChoice", choices.EMPTY_POLICIES, "Empty-case policies (docs/DEFINITIONS.md §3).")

class RegionsChoice(str, Enum):
    """Region sets: the reference's dataset.json regions, or BraTS WT/TC/ET."""

    dataset = "dataset"
    brats = "brats"


#: Options that take several values after one flag (``--metrics dice hd95``).
_MULTI_VALUE = ("--metrics", "--labels", "--exclude-label")
#: Options whose value may be left out, and the value they then take.
_OPTIONAL_VALUE = {"--regions": "dataset"}


def expand_arguments(args: list[str]) -> list[str]:
    """Rewrite ``--metrics a b`` as ``--metrics a --metrics b`` and a bare ``--regions`` as ``--regions dataset``.

    Click options take one value per flag; ``evaluate`` has no positional arguments, so every
    bare word after a multi-value flag belongs to it.
    """
    out: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        if token == "--":
            out.extend(args[i:])
            break
        out.append(token)
        i += 1
        if token in _MULTI_VALUE:
            first = True
            while i < len(args) and not args[i].startswith("-"):
                if not first:
                    out.append(token)
                out.append(args[i])
                first = False
                i += 1
        elif token in _OPTIONAL_VALUE and (i >= len(args) or args[i].startswith("-")):
            out.append(_OPTIONAL_VALUE[token])
    return out


class _EvaluateCommand(TyperCommand):
    """The evaluate command, accepting several values after ``--metrics``, ``--labels``, ``--exclude-label``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, expand_arguments(list(args)))


HELP = (
    "Score predicted label maps against references: Dice, IoU, HD95, HD, ASSD, NSD, sensitivity, specificity, "
    "precision, volume; per case, per label and per region, with the definitions of docs/DEFINITIONS.md §3.\n\n"
    "REF and PRED are each a dataset folder (labelsTr/ + dataset.json), a labelsTr folder, a flat folder of label "
    "files (.nii.gz, .nii, .mha, .nrrd, ...; case id = file name without ending) or a Kaggle-LGG kaggle_3m folder "
    "(mask slices stacked per patient). Cases are paired by id; a reference without prediction is scored as an "
    "empty prediction (an error with --strict).\n\n"
    "Several values may follow --metrics, --labels and --exclude-label (e.g. --metrics dice hd95 nsd). "
    "--regions alone uses the regions of the reference's dataset.json; --regions brats uses WT/TC/ET."
)


def _split(values: Optional[list[str]]) -> list[str]:
    """Flatten repeated and comma-separated option values."""
    out: list[str] = []
    for value in values or []:
        out.extend(part for part in value.replace(",", " ").split() if part)
    return out


def evaluate(
    ref: Annotated[Path, typer.Option("--ref", exists=True, file_okay=False, dir_okay=True,
                                      help="Reference labels (dataset, labelsTr, flat folder or Kaggle-LGG).")],
    pred: Annotated[Path, typer.Option("--pred", exists=True, file_okay=False, dir_okay=True,
                                       help="Predicted labels, same kinds as --ref.")],
    metrics: Annotated[Optional[list[str]], typer.Option(
        "--metrics", metavar="NAME...",
        help="dice, iou, hd95, hd, assd, nsd, sensitivity, specificity, precision, volume (default: dice hd95).")] = None,
    labels: Annotated[Optional[list[str]], typer.Option(
        "--labels", metavar="LABEL...", help="Labels to score, names or values (default: every foreground label).")] = None,
    regions: Annotated[Optional[RegionsChoice], typer.Option(
        "--regions", help="Also score regions: no value = dataset.json's, brats = WT/TC/ET (canonical labels).")] = None,
    exclude_label: Annotated[Optional[list[str]], typer.Option(
        "--exclude-label", metavar="LABEL...", help="Labels left out of the foreground mean (still scored).")] = None,
    hd95: Annotated[HD95Choice, typer.Option(
        "--hd95", help="max: larger directed 95th percentile (MONAI); pooled: 95th percentile of both sets (medpy).")
    ] = HD95Choice.max,
    empty: Annotated[EmptyChoice, typer.Option(
        "--empty", help="Empty-mask policy: brats (1 / image diagonal) or nan (nnU-Net / MONAI).")] = EmptyChoice.brats,
    nsd_tolerance: Annotated[Optional[float], typer.Option(
        "--nsd-tolerance", metavar="MM", help="NSD tolerance in mm, with --metrics nsd (default: 1).")] = None,
    workers: Annotated[int, typer.Option("--workers", "-j", min=1, help="Cases scored in parallel.")] = 1,
    lesion_wise: Annotated[bool, typer.Option(
        "--lesion-wise", help="Add BraTS 2023 lesion-wise Dice and HD95 (and lesion counts).")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="A reference case without prediction is an error.")] = False,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", dir_okay=False,
                                                   help="Write results.json here.")] = None,
    csv_path: Annotated[Optional[Path], typer.Option("--csv", dir_okay=False,
                                                     help="Write one CSV row per case and label here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print results.json to stdout (no table).")] = False,
) -> None:
    from brainseg_cli.metrics.evaluation import DEFAULT_METRICS, EvaluateConfig, evaluate_folders

    metric_names = tuple(_split(metrics)) or DEFAULT_METRICS
    label_tokens = _split(labels)
    config = EvaluateConfig(
        ref=ref, pred=pred, metrics=metric_names, labels=tuple(label_tokens) if label_tokens else None,
        regions=regions.value if regions is not None else None, exclude_labels=tuple(_split(exclude_label)),
        hd95_mode=hd95.value, empty_policy=empty.value, nsd_tolerance=nsd_tolerance, workers=workers,
        lesion_wise=lesion_wise, strict=strict, output=output, csv=csv_path,
    )
    with common.make_progress() as bar:
        task = bar.add_task("Evaluating", total=None)

        def progress(description: str, done: int, total: int) -> None:
            bar.update(task, description=description, completed=done, total=total)

        result = common.run(evaluate_folders, config=config, progress=progress)
    if as_json:
        common.echo(result.to_json().rstrip("\n"))
        return
    _print_table(result)
    for path in (output, csv_path):
        if path is not None:
            common.echo(str(path))


def _fmt(value: Any, column: str) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if column.startswith(("hd", "assd", "lesion_hd")) or column.startswith("volume"):
        return f"{value:.2f}"
    if column in ("lesion_tp", "lesion_fn", "lesion_fp"):
        return f"{value:.1f}"
    return f"{value:.4f}"


def _header(column: str) -> str:
    if column.startswith("volume"):
        return column.removesuffix("_ml").replace("_", " ") + " mL"
    unit = " mm" if column.startswith(("hd", "assd", "lesion_hd")) else ""
    return column.replace("_", " ") + unit


#: Metric columns per table, so that tables fit an 80-column terminal.
_COLUMNS_PER_TABLE = 3


def _print_table(result) -> None:
    from rich.table import Table

    from brainseg_cli.metrics.evaluation import FOREGROUND_MEAN

    n_cases = len({row["case"] for row in result.rows})
    label_names = list(result.labels)
    order = label_names + ([FOREGROUND_MEAN] if FOREGROUND_MEAN in result.summary else []) + list(result.regions)
    groups = [result.columns[i:i + _COLUMNS_PER_TABLE] for i in range(0, len(result.columns), _COLUMNS_PER_TABLE)]
    for k, columns in enumerate(groups):
        title = (f"{n_cases} case(s), mean ± std; HD95 {result.definitions['hd95_mode']}, "
                 f"empty policy {result.empty_policy}") if k == 0 else None
        table = Table(title=title, title_justify="left", show_header=True)
        table.add_column("label", no_wrap=True)
        for column in columns:
            table.add_column(_header(column), justify="right", overflow="fold")
        table.add_column("n", justify="right", no_wrap=True)
        for name in order:
            stats = result.summary[name]
            cells = []
            n_nan = 0
            for column in columns:
                s = stats[column]
                n_nan = max(n_nan, int(s["n_nan"]))
                mean, std = _fmt(s["mean"], column), _fmt(s["std"], column)
                cells.append(mean if mean == "-" else f"{mean} ± {std}")
            n_text = str(max(int(stats[c]["n"]) + int(stats[c]["n_nan"]) for c in columns))
            if n_nan:
                n_text += f" ({n_nan} NaN)"
            shown = "foreground mean" if name == FOREGROUND_MEAN else name
            table.add_row(shown, *cells, n_text, end_section=(name == FOREGROUND_MEAN and bool(result.regions)))
        common.stdout_console.print(table)
    if result.missing:
        common.stdout_console.print(f"{len(result.missing)} missing prediction(s) scored as empty: "
                                    + ", ".join(result.missing[:10]) + (" ..." if len(result.missing) > 10 else ""))
    if result.extra:
        common.stdout_console.print(f"{len(result.extra)} prediction(s) without reference, not scored: "
                                    + ", ".join(result.extra[:10]) + (" ..." if len(result.extra) > 10 else ""))


def register(app: typer.Typer) -> None:
    """Add ``evaluate`` to the root app."""
    app.command("evaluate", cls=_EvaluateCommand, help=HELP, no_args_is_help=True)(evaluate)
