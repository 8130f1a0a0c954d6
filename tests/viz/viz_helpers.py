"""Helpers for the visualisation tests: synthetic inputs in the project's file formats, and a
headless-Chromium driver.

Chromium is driven through the DevTools protocol over ``--remote-debugging-pipe`` (file
descriptors 3 and 4, NUL-terminated JSON), with the standard library only. That gives every
console message, uncaught exception and network request of the page, a way to run JavaScript in
it, and a full-page screenshot.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brainseg_cli.io import Image, write_image

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)
# Guards against a browser that never answers (so a broken install fails instead of hanging CI);
# not a performance limit: a page here loads in about a second.
_HANG_GUARD_S = 300.0


# ---------------------------------------------------------------------------------------- synthetic
def write_flat_case(root: Path, case: str, *, image: np.ndarray, spacing=(1.0, 1.0, 1.0), direction=None,
                    pred: np.ndarray | None = None, ref: np.ndarray | None = None) -> dict[str, Path]:
    """Write ``root/images/<case>_0000.nii.gz`` and optional ``root/pred|ref/<case>.nii.gz``."""
    out = {"images": root / "images", "pred": root / "pred", "ref": root / "ref"}
    write_image(Image(image.astype(np.float32), spacing, direction=direction), out["images"] / f"{case}_0000.nii.gz")
    for key, arr in (("pred", pred), ("ref", ref)):
        if arr is not None:
            write_image(Image(arr.astype(np.uint8), spacing, direction=direction), out[key] / f"{case}.nii.gz")
    return out


def noise_image(shape, seed: int = 0) -> np.ndarray:
    """Grey noise (no pure colour can occur in a grey panel)."""
    return np.random.default_rng(seed).normal(100.0, 20.0, shape).astype(np.float32)


def write_tiny_dataset(root: Path, *, n_cases: int = 3, shape=(24, 28, 10), seed: int = 0) -> dict[str, Path]:
    """A dataset in nnU-Net v2 layout (channels T1, FLAIR; labels edema 1, core 2) plus a prediction folder.

    Each case has a box of edema around a box of core; the prediction moves the boxes by one voxel.
    """
    from brainseg_cli.data.layout import write_dataset_json

    rng = np.random.default_rng(seed)
    pred_dir = root.parent / f"{root.name}_pred"
    for i in range(n_cases):
        case = f"case_{i:03d}"
        label = np.zeros(shape, np.uint8)
        x0 = 4 + i
        label[x0:x0 + 10, 6:18, 2:8] = 1
        label[x0 + 3:x0 + 7, 9:14, 3:6] = 2
        for c in range(2):
            img = rng.normal(50.0 + 30 * c, 5.0, shape) + 20.0 * label
            write_image(Image(img.astype(np.float32), (1.0, 1.0, 2.0)), root / "imagesTr" / f"{case}_{c:04d}.nii.gz")
        write_image(Image(label, (1.0, 1.0, 2.0)), root / "labelsTr" / f"{case}.nii.gz")
        write_image(Image(np.roll(label, 1, axis=1), (1.0, 1.0, 2.0)), pred_dir / f"{case}.nii.gz")
    write_dataset_json(root, channels=["T1", "FLAIR"], labels={"background": 0, "edema": 1, "core": 2},
                       num_training=n_cases, brainseg={"regions": {"WT": [1, 2], "TC": [2]}})
    return {"images": root, "pred": pred_dir, "ref": root}


def results_json(path: Path, rows: list[dict[str, Any]], *, summary: dict | None = None) -> Path:
    """Write a results.json in the docs/DEFINITIONS.md §5 format."""
    data = {"format_version": 1, "tool_version": "test", "definitions": {"hd95": "max", "surface": "cross"},
            "empty_policy": "brats", "cases": rows, "summary": summary or {}, "missing": [], "extra": []}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def metrics_csv(run_dir: Path, *, epochs: int = 6, labels=("edema", "core"), val_every: int = 2) -> Path:
    """Write a metrics.csv in the docs/DEFINITIONS.md §5 format with known values (loss 1/epoch, Dice 1 - 1/epoch)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    header = ["epoch", "train_loss", "val_loss", *[f"val_dice_{n}" for n in labels], "val_dice_mean", "lr",
              "seconds", "data_seconds"]
    lines = [",".join(header)]
    for e in range(1, epochs + 1):
        val = e % val_every == 0
        dice = [(1 - 1 / e) * (1 - 0.1 * k) for k in range(len(labels))]
        cells = [str(e), f"{1 / e:.6g}", f"{2 / e:.6g}" if val else "",
                 *[f"{d:.6g}" if val else "" for d in dice], f"{np.mean(dice):.6g}" if val else "",
                 f"{0.01 * 0.5 ** e:.6g}", "1.5", "0.25"]
        lines.append(",".join(cells))
    path = run_dir / "metrics.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------- chromium
@dataclass
class PageReport:
    """What headless Chromium saw while loading a page.

    Attributes:
        url: the page loaded.
        exceptions: uncaught JavaScript exceptions (texts).
        console_errors: console.error / console.assert messages and browser log entries of level error.
        requests: URLs of every network request (the page itself and data: URIs included).
        values: results of the expressions evaluated after load, by expression.
        screenshot: full-page PNG bytes.
    """

    url: str
    exceptions: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    screenshot: bytes = b""

    @property
    def foreign_requests(self) -> list[str]:
        """Requests other than the page itself and ``data:`` URIs."""
        return [u for u in self.requests if u != self.url and not u.startswith("data:")]


class _Pipe:
    """Minimal DevTools-protocol client over Chromium's remote-debugging pipe."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd, self.write_fd = read_fd, write_fd
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            ready, _, _ = select.select([self.read_fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise RuntimeError("chromium stopped answering on the DevTools pipe")
            chunk = os.read(self.read_fd, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + _HANG_GUARD_S  # for the reply, however many events come first
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> None:
        deadline = time.monotonic() + _HANG_GUARD_S
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._receive(deadline))


def _spawn_chromium(args: list[str], commands_fd: int, replies_fd: int) -> int:
    """Start Chromium in a new session with ``commands_fd`` as its fd 3 and ``replies_fd`` as its fd 4.

    ``posix_spawn`` places the pipe ends without running Python in the child. A forked child of this
    multi-threaded process (torch's and pytest-xdist's threads) that runs a ``preexec_fn`` can deadlock
    before ``exec``, and ``subprocess.Popen`` then waits for it for ever: a CI run hung there.

    Returns:
        The process id (its process group id too).
    """
    # Copies above fd 10, so neither end already sits on 3 or 4 (dup2 onto itself would keep close-on-exec).
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (commands_fd, replies_fd)]
    try:
        return os.posix_spawn(args[0], args, dict(os.environ), setsid=True, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_DUP2, 1, 2),
            (os.POSIX_SPAWN_DUP2, high[0], 3),
            (os.POSIX_SPAWN_DUP2, high[1], 4),
        ])
    finally:
        for fd in high:
            os.close(fd)


def _reap(pid: int, grace_s: float = 30.0) -> None:
    """Wait up to ``grace_s`` for ``pid`` to exit, then kill its process group and wait for it."""
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return
        time.sleep(0.05)
    os.killpg(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def load_page(chromium: str, html_path: Path, user_data_dir: Path, *, expressions: tuple[str, ...] = (),
              width: int = 1280, height: int = 1600) -> PageReport:
    """Load ``html_path`` in headless Chromium; collect errors, requests, values and a screenshot."""
    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()
    args = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}", "--remote-debugging-pipe",
            f"--window-size={width},{height}", "about:blank"]
    try:
        pid = _spawn_chromium(args, to_chrome_r, from_chrome_w)
    finally:
        os.close(to_chrome_r)
        os.close(from_chrome_w)
    url = html_path.resolve().as_uri()
    report = PageReport(url=url)
    pipe = _Pipe(from_chrome_r, to_chrome_w)
    try:
        target = pipe.call("Target.createTarget", {"url": "about:blank"})
        session = pipe.call("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            pipe.call(f"{domain}.enable", session=session)
        pipe.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
        pipe.call("Page.navigate", {"url": url}, session=session)
        pipe.wait_for("Page.loadEventFired")
        for expression in expressions:
            result = pipe.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                    "awaitPromise": True}, session=session)
            if "exceptionDetails" in result:
                report.exceptions.append(f"{expression}: {result['exceptionDetails'].get('text')}")
            report.values[expression] = result.get("result", {}).get("value")
        metrics = pipe.call("Page.getLayoutMetrics", session=session)
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        shot = pipe.call("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}}, session=session)
        report.screenshot = base64.b64decode(shot["data"])
        try:
            pipe.call("Browser.close")
        except RuntimeError:
            pass
    finally:
        os.close(to_chrome_w)
        os.close(from_chrome_r)
        _reap(pid)
    for event in pipe.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            report.exceptions.append(str(details.get("exception", {}).get("description") or details.get("text")))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            report.console_errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            report.console_errors.append(params["entry"].get("text", ""))
        elif method == "Network.requestWillBeSent":
            report.requests.append(params["request"]["url"])
    return report
