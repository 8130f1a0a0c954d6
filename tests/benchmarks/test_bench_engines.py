"""``benchmarks/bench_engines.py``: interleaved timing, the network work it counts, the README table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.benchmarks import load_benchmark
from helpers.checkpoints import tiny_trained_checkpoint
from helpers.threads import one_thread
from torch.utils.flop_counter import FlopCounterMode

from brainseg_cli.checkpoint import build_model_from_checkpoint, load_checkpoint
from brainseg_cli.data.layout import load_dataset, read_case
from brainseg_cli.inference.predictor import Predictor
from brainseg_cli.inference.sliding_window import window_starts

REPO = Path(__file__).resolve().parents[2]

bench = load_benchmark("bench_engines")


def _row(engine: str, seconds: float, speedup: float, agreement: dict | None = None) -> dict:
    row = {"network": "3-D", "engine": engine, "window_batch": 2, "seconds": seconds, "cpu_seconds": 2 * seconds,
           "gflop": 100.0, "gflop_per_s": 100.0 / seconds, "speedup": speedup}
    if agreement is not None:
        row["agreement"] = agreement
    return row


def test_readme_block_and_its_regeneration(tmp_path):
    record = {"rows": [_row("torch fp32", 2.0, 1.0),
                       _row("openvino", 1.0, 2.0, {"equal_voxels": 0.99995, "dice": {"1": 0.9991, "2": 0.9999}})]}
    block = bench.readme_block(record)
    lines = block.splitlines()
    assert lines[0] == bench.BEGIN and lines[-1] == bench.END
    assert lines[3] == "| 3-D | torch fp32 | 2 | 2.00 | 50 | 1.00x |  |  |"
    assert lines[4] == "| 3-D | openvino | 2 | 1.00 | 100 | 2.00x | 99.995 % | 0.9991 |"
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{bench.BEGIN}\nold\n{bench.END}\nafter\n")
    assert bench.write_readme(readme, record) is True
    assert readme.read_text() == f"intro\n{block}\nafter\n"
    assert bench.write_readme(readme, record) is False  # regenerating changes nothing


def test_a_results_file_fills_its_own_block_and_says_which_cpu(tmp_path):
    record = {"threads": 2, "repeats": 5, "rows": [_row("torch fp32", 2.0, 1.0), _row("openvino", 1.0, 2.0)],
              "machine": {"cpu_count": 2, "processor": "x86_64", "cpu": "AMD EPYC", "native_bf16": False}}
    fp32 = tmp_path / "bench_engines_fp32.json"
    block = bench.readme_block(record, fp32)
    lines = block.splitlines()
    assert lines[0] == "<!-- bench_engines_fp32:begin -->" and lines[-1] == "<!-- bench_engines_fp32:end -->"
    assert lines[1] == ("AMD EPYC, 2 cores, 2 threads, best of 5 rounds; native bf16: no (torch bf16 not timed: "
                        "`predict --precision auto` keeps fp32 on this CPU).")
    readme = tmp_path / "README.md"
    readme.write_text(f"{bench.BEGIN}\nheadline\n{bench.END}\n<!-- bench_engines_fp32:begin -->\nold\n"
                      "<!-- bench_engines_fp32:end -->\n")
    assert bench.write_readme(readme, record, fp32) is True
    assert readme.read_text() == f"{bench.BEGIN}\nheadline\n{bench.END}\n{block}\n"  # the other block untouched
    with_bf16 = dict(record, rows=[*record["rows"], _row("torch bf16", 1.5, 1.33)])
    assert "not timed" not in bench.readme_block(with_bf16, fp32)


@pytest.mark.parametrize("results", sorted((REPO / "benchmarks" / "results").glob("bench_engines*.json")),
                         ids=lambda p: p.name)
def test_the_readme_table_is_the_one_generated_from_each_results_file(results):
    record = json.loads(results.read_text())
    assert bench.readme_block(record, results) in (REPO / "README.md").read_text()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    with one_thread():
        return tiny_trained_checkpoint(tmp_path_factory.mktemp("tiny"))


def test_interleaved_timing_and_the_network_work_of_a_case(tiny):
    info = load_dataset(tiny.parent.parent / "dataset")
    case = info.training_cases[0]
    image, _ = read_case(info, case)
    engines = [("torch fp32", "torch", "fp32"), ("onnxruntime", "onnxruntime", "fp32")]
    with one_thread():
        gflop, timed = bench.time_engines(tiny, image, case, engines, repeats=2)
        predictor = Predictor.from_checkpoints([tiny], device="cpu")
        prepared = predictor.prepare(image, case=case)
        reference = predictor.labels_from_probabilities(predictor.predict_prepared(prepared))
    assert len(timed) == 2
    for seconds, cpu, labels, window_batch in timed:
        assert seconds > 0 and cpu >= 0 and window_batch == 2
        assert (labels == reference).mean() > 0.999
    # the work: one window's FLOPs, counted here independently, times the case's windows
    ckpt = load_checkpoint(tiny)
    plan = ckpt["plan"]
    (_, data, _), = prepared.groups
    padded = [max(s, p) for s, p in zip(data.shape[1:], plan["patch_size"])]
    windows = 1
    for starts in window_starts(padded, plan["patch_size"], overlap=predictor.overlap):
        windows *= len(starts)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        build_model_from_checkpoint(ckpt).eval()(torch.zeros((1, data.shape[0], *plan["patch_size"])))
    assert windows > 1
    assert gflop == pytest.approx(counter.get_total_flops() * windows / 1e9)
