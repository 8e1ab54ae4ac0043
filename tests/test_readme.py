"""Every shell command in README.md's fenced code blocks, run for real against a copy of the sample corpus.

A README command that nobody runs goes stale without anyone noticing (issue 15: `lookalike query --id 42
-k 5 --json` failed from the repository root with "no index at ."). So each line of a ```sh / ```bash /
```console block is a test here, and a line this module does not know how to run fails: it must be given
a runner below or be listed in EXCEPTIONS with the reason.

How each kind of command is run:

- `lookalike ...` (or `.venv/bin/lookalike ...`): in-process with Typer's CliRunner, cwd = a temp
  workspace laid out like the repository (`data/` is a copy of the sample corpus), in README order, so
  later commands see what earlier ones did, as a user typing them would. Placeholders the README uses as
  example values are substituted (PLACEHOLDERS, EXAMPLE_IDS); example files it names (`photo.jpg`) are
  made in the workspace. The index is built once per session with a tiny model, so the commands find it
  instead of training for minutes; commands that train anyway get options that shrink them (SHRINK).
- `lookalike serve` / `lookalike up` (which serves): a subprocess (`python -m search`) on a free port,
  checked with GET /healthz and /stats, then stopped.
- `curl ...`: run with curl against a `lookalike serve` of the same index, its URL pointed at that
  server's port.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REPO, train_tiny
from PIL import Image
from typer.testing import CliRunner, Result

README = REPO / "README.md"

#: Fence languages whose lines are shell commands. A ```console block's commands are its `$ ` lines.
SHELL_LANGUAGES = {"sh", "bash", "shell", "zsh", "console"}

#: README commands this test does not run, and why. A command here that leaves the README fails the test
#: too, so the list cannot silently outgrow what it excuses.
EXCEPTIONS: dict[str, str] = {
    "bash .ci/demo": "installs into .venv (a PyTorch download), trains on data/ for minutes and then serves "
    "until stopped; what it ends in, `lookalike up data`, is the path `lookalike up ~/Pictures` tests here",
    "bash .ci/test": "is the test suite itself (ruff, then pytest): running it from a test would recurse",
}

#: Example values the README writes where a user puts their own -> what they stand for in the workspace.
#: Each is a whole argument or the start of one (`~/Pictures/x`); a `~` left after substitution fails.
PLACEHOLDERS: dict[str, str] = {
    "~/Pictures": "data",  # the user's photo folder: the sample corpus
    "~/labelled": "data",  # a folder with a subfolder per label: the sample corpus is one (9 categories)
    "~/new-batch": "new-batch",  # a folder of new images: made by the `workspace` fixture
}

#: Example image ids in the README (`--id 42`, `--keeper 12 --members 15,40`) -> the sample image each
#: stands for. Ids are given out as the index is built, so the test looks up the image's id rather than
#: trusting that 42 exists; the four are distinct so that a keeper and its members are different images.
EXAMPLE_IDS: dict[int, str] = {
    42: "birds/adelaide-rosella.png",
    12: "chess/b_1_king.png",
    15: "chess/b_2_queen.png",
    40: "fish/bluegroper.png",
}
#: Options whose values are image ids (`--members` takes a comma-separated list).
ID_OPTIONS = {"--id", "--keeper", "--members"}

#: Options appended to commands that would otherwise train a full-size model for minutes. They only make
#: the work smaller: the command, its code path and its output are the README's.
SHRINK: dict[str, list[str]] = {
    "train": ["--epochs", "1", "--image-size", "32", "--latent-dim", "16"],
    # Without --model, evaluate trains the default conv model on the folder; a one-epoch 32 px one on a
    # seeded subset (5 images a label) still compares it with the pixel and PCA baselines.
    "evaluate": ["--model", "conv:image_size=32,channels=8/16,latent_dim=16,epochs=1", "--max-images", "45"]
    + ["--near-duplicates", "0"],
}

#: Commands that serve until stopped: run as a subprocess (`up --no-serve` does not serve).
SERVING = {"serve", "up"}

runner = CliRunner()


# ---------------------------------------------------------------- the README's commands


@dataclass(frozen=True)
class Command:
    line: int  # where it starts in README.md, 1-based
    argv: tuple[str, ...]  # as a shell would split it, the comment dropped

    @property
    def text(self) -> str:
        return " ".join(self.argv)


def readme_commands(markdown: str) -> list[Command]:
    """The commands in `markdown`'s shell-language fenced blocks, in order; `\\` continuations joined."""
    commands: list[Command] = []
    fence: str | None = None  # the open fence's marker, None outside a block
    shell = console = False
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(markdown.splitlines(), 1):
        stripped = raw.strip()
        if fence is None:
            m = re.match(r"(`{3,}|~{3,})\s*([\w+-]*)", stripped)
            if m:
                fence, lang = m.group(1), m.group(2).lower()
                shell, console = lang in SHELL_LANGUAGES, lang == "console"
            continue
        if stripped.startswith(fence) and not stripped.strip(fence[0]):
            fence = None
            continue
        if not shell:
            continue
        if not pending:
            if console:  # a console block shows output too: only its prompt lines are commands
                if not stripped.startswith("$ "):
                    continue
                stripped = stripped[2:]
            if not stripped or stripped.startswith("#"):
                continue
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        argv = shlex.split(" ".join([*pending, stripped]), comments=True)
        pending = []
        if argv:
            commands.append(Command(start, tuple(argv)))
    assert fence is None, "README.md: a fenced block is never closed"
    return commands


COMMANDS = readme_commands(README.read_text(encoding="utf-8"))


def kind(cmd: Command) -> str:
    """How `cmd` is run: 'exception', 'lookalike', 'serving' or 'curl'; '' when this test cannot run it."""
    if cmd.text in EXCEPTIONS:
        return "exception"
    program = cmd.argv[0]
    if program in ("lookalike", ".venv/bin/lookalike"):
        sub = cmd.argv[1] if len(cmd.argv) > 1 else ""
        if sub == "index" and "--watch" in cmd.argv:
            return "watching"
        return "serving" if sub in SERVING and "--no-serve" not in cmd.argv else "lookalike"
    if program == "curl":
        return "curl"
    return ""


def test_the_readme_has_commands_and_every_one_is_run_or_excused() -> None:
    assert len(COMMANDS) >= 10, f"found only {len(COMMANDS)} commands in README.md: is the parser broken?"
    unrunnable = [f"README.md:{c.line}: {c.text}" for c in COMMANDS if not kind(c)]
    assert not unrunnable, (
        "README commands this test neither runs nor lists in EXCEPTIONS (give them a runner in "
        "tests/test_readme.py, or an exception with the reason):\n" + "\n".join(unrunnable)
    )
    stale = set(EXCEPTIONS) - {c.text for c in COMMANDS}
    assert not stale, f"EXCEPTIONS names commands the README no longer has: {sorted(stale)}"


def test_the_parser_reads_blocks_as_a_shell_would() -> None:
    md = "\n".join(
        [
            "```sh",
            "lookalike query a.jpg  # a comment",
            "lookalike report \\",
            "  --out 'x y.html'",
            "```",
            "```",
            "pixels -> encoder/",
            "```",
            "```console",
            "$ lookalike models",
            "* conv",
            "```",
            "```python",
            "lookalike not-a-command",
            "```",
        ]
    )
    assert readme_commands(md) == [
        Command(2, ("lookalike", "query", "a.jpg")),
        Command(3, ("lookalike", "report", "--out", "x y.html")),
        Command(10, ("lookalike", "models")),
    ]
    assert kind(Command(1, (".venv/bin/lookalike", "serve"))) == "serving"
    assert kind(Command(1, ("lookalike", "up", "data", "--no-serve"))) == "lookalike"
    assert kind(Command(1, ("lookalike", "index", "data", "--watch"))) == "watching"
    assert kind(Command(1, ("pip", "install", "lookalike"))) == ""  # unknown: fails the first test


# ---------------------------------------------------------------- the workspace


@dataclass
class Workspace:
    root: Path  # the cwd of every command: laid out like the repository
    ids: dict[str, int] = field(default_factory=dict)  # catalog path -> id, of the session's index

    def argv(self, cmd: Command) -> list[str]:
        """`cmd`'s arguments after `lookalike` (or curl's), placeholders substituted."""
        out: list[str] = []
        option = ""
        for arg in cmd.argv[1:]:
            for example, real in PLACEHOLDERS.items():
                if arg == example or arg.startswith(example + "/"):
                    arg = real + arg[len(example) :]
            if option in ID_OPTIONS:
                arg = ",".join(str(self.id_for(int(i))) for i in arg.split(","))
            assert not arg.startswith("~"), f"README.md:{cmd.line}: add {arg!r} to PLACEHOLDERS"
            out.append(arg)
            option = arg
        return out

    def id_for(self, example: int) -> int:
        assert example in EXAMPLE_IDS, f"README id {example} is not in EXAMPLE_IDS: say which image it stands for"
        return self.ids[EXAMPLE_IDS[example]]


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A copy of data/ indexed once with a tiny model, the example files the README names, and a new batch."""
    from indexer import build_index
    from search.engine import Engine

    root = tmp_path_factory.mktemp("readme")
    data = root / "data"
    # A developer's own index of data/ (from the quick start) is not part of the corpus.
    shutil.copytree(REPO / "data", data, ignore=shutil.ignore_patterns(".lookalike"))
    # `query photo.jpg`: a photo that is not in the index (a JPEG of an indexed PNG, smaller).
    with Image.open(data / "birds" / "blackbird.png") as im:
        im.convert("RGB").resize((im.width // 2, im.height // 2)).save(root / "photo.jpg", quality=85)
    # `report --queries ~/new-batch`: a few new images, not in the index.
    batch = root / "new-batch"
    batch.mkdir()
    for src in sorted((data / "flowers").glob("*.png"))[:3]:
        with Image.open(src) as im:
            im.convert("RGB").save(batch / f"{src.stem}.jpg", quality=80)
    # The index the commands find in data/.lookalike, with a model that trains in a second instead of the
    # minutes `lookalike index data` would spend training the default one.
    build_index(data, model_dir=train_tiny(tmp_path_factory, "readme-model"), progress=False, workers=1)
    engine = Engine(data / ".lookalike", device="cpu")
    try:
        with engine.catalog.engine.connect() as c:
            ids = dict(c.exec_driver_sql("SELECT path, id FROM images WHERE status = 'ok'").all())
    finally:
        engine.close()
    missing = set(EXAMPLE_IDS.values()) - set(ids)
    assert not missing, f"EXAMPLE_IDS names images the sample corpus lacks: {missing}"
    return Workspace(root, ids)


# ---------------------------------------------------------------- serving


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass
class Served:
    url: str
    process: subprocess.Popen
    log: Path


def stop(server: Served) -> int:
    """Stop `server` as Ctrl+C would (SIGTERM to uvicorn), killing it if it hangs; its exit status."""
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(15)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(15)
    return server.process.returncode


@contextlib.contextmanager
def serving(root: Path, args: list[str], startup_s: float = 120) -> Iterator[Served]:
    """`lookalike ARGS --port N` run from `root` in a subprocess; yields once GET /healthz answers 200."""
    port = free_port()  # a port race with another process only fails the run, and says so in the log
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
    # One thread: the CPU is shared; the CPU device, like the in-process commands.
    env.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", LOOKALIKE_DEVICE="cpu")
    log = root / f"serve-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "search", *args, "--port", str(port)],
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Served(f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + startup_s
        while True:
            with contextlib.suppress(OSError):
                if get(server.url + "/healthz", timeout=2)[0] == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"`lookalike {' '.join(args)}` did not come up:\n{log.read_text(errors='replace')}")
            time.sleep(0.2)
        yield server
    finally:
        stop(server)


def check_serving(server: Served, ws: Workspace) -> None:
    status, body = get(server.url + "/stats")
    assert status == 200, body
    stats = json.loads(body)
    assert stats, "GET /stats answered nothing"
    status, body = get(f"{server.url}/images/{ws.id_for(42)}/similar?k=3")
    assert status == 200 and json.loads(body)["results"], body


@pytest.fixture(scope="session")
def api(workspace: Workspace) -> Iterator[Served]:
    """`lookalike serve --index data`, for the README's curl lines; started only if there are any."""
    with serving(workspace.root, ["serve", "--index", "data"]) as server:
        yield server


# ---------------------------------------------------------------- running a command


def check_output(args: list[str], result: Result, root: Path) -> None:
    """What each command should have printed or written, beyond exiting 0."""
    sub, out = args[0], result.stdout
    assert out.strip(), f"`lookalike {sub}` printed nothing"
    if "--json" in args:
        json.loads(out)  # stdout is pure JSON: logs and notes go to stderr
    written = args[args.index("--out") + 1] if "--out" in args else None
    if sub == "query":
        if "--json" in args:
            assert json.loads(out)["results"], out
        else:
            assert re.search(r"^\s+1\s+-?\d\.\d{4}\s+top <?[\d.]+%\s+\d+\s+\S", out, re.M), (
                out
            )  # the first row of the table
        if "--grid" in args:
            with Image.open(root / args[args.index("--grid") + 1]) as grid:
                assert grid.width > 0
    elif sub == "index":
        assert re.search(r"total indexed\s+[1-9]", out), out
    elif sub == "train":
        assert "trained " in out and (root / written / "model.safetensors").exists(), out
    elif sub == "report":
        path = root / out.strip().splitlines()[-1].removeprefix("report: ")
        assert path.stat().st_size > 0, out
        if path.suffix == ".json":
            assert json.loads(path.read_text())["schema"].startswith("lookalike.report/"), path
    elif sub == "evaluate":
        assert "precision" in out.lower() or "p@1" in out.lower(), out
    elif sub == "models":
        assert "* the default" in out, out


def run_lookalike(cmd: Command, ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    from search.cli import app

    args = ws.argv(cmd)
    args += SHRINK.get(args[0], [])
    monkeypatch.chdir(ws.root)
    # LOOKALIKE_* settings of the developer's shell would change what the commands do.
    for name in [n for n in os.environ if n.startswith("LOOKALIKE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("LOOKALIKE_DEVICE", "cpu")
    result = runner.invoke(app, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, (
        f"README.md:{cmd.line}: `{cmd.text}` (run as `lookalike {' '.join(args)}` in {ws.root}) "
        f"exited {result.exit_code}:\n{result.output}"
    )
    check_output(args, result, ws.root)


def run_serving(cmd: Command, ws: Workspace) -> None:
    # The README's port is the default 8000, which may be taken on a shared machine: a free one is added.
    with serving(ws.root, ws.argv(cmd)) as server:
        check_serving(server, ws)
    assert server.process.returncode in (0, -15), server.log.read_text(errors="replace")


def run_watching(cmd: Command, ws: Workspace) -> None:
    """`index --watch` runs until Ctrl+C: in a subprocess, an image added to the folder must be indexed
    and its removal noticed (leaving the session's index as it was), then Ctrl+C ends it with status 0."""
    args = ws.argv(cmd)
    folder = ws.root / args[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
    env.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", LOOKALIKE_DEVICE="cpu")
    log = ws.root / "watch.log"
    with open(log, "wb") as out:
        # SIGINT as a terminal delivers it, even where this runner was started in the background
        # (which makes its children ignore SIGINT, and Python then installs no Ctrl+C handler)
        proc = subprocess.Popen(
            [sys.executable, "-m", "search", *args],
            cwd=ws.root,
            env=env,
            stdout=out,
            stderr=out,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )

    def wait_for(text: str) -> None:
        deadline = time.monotonic() + 120
        while text not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"README.md:{cmd.line}: no {text!r} from `{cmd.text}`:\n{log.read_text(errors='replace')}")
            time.sleep(0.2)

    new = folder / "readme-watch.jpg"
    try:
        wait_for("watching")
        with Image.open(folder / "birds" / "blackbird.png") as im:
            im.convert("RGB").save(new, quality=80)
        wait_for("1 added")
        new.unlink()
        wait_for("1 removed")
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    finally:
        new.unlink(missing_ok=True)
        if proc.poll() is None:
            proc.kill()
            proc.wait(15)
    assert proc.returncode == 0, log.read_text(errors="replace")


def run_curl(cmd: Command, ws: Workspace, api: Served) -> None:
    assert shutil.which("curl"), "curl is not installed, and the README uses it"
    args = [re.sub(r"https?://(127\.0\.0\.1|localhost)(:\d+)?", api.url, a) for a in ws.argv(cmd)]
    # --fail: an HTTP error is a failed command, as it would be to a reader; -sS: errors only.
    proc = subprocess.run(["curl", "--fail", "-sS", *args], cwd=ws.root, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"README.md:{cmd.line}: `{cmd.text}` exited {proc.returncode}:\n{proc.stderr}"
    assert proc.stdout.strip(), f"README.md:{cmd.line}: `{cmd.text}` printed nothing"
    if proc.stdout.lstrip()[:1] in ("{", "["):
        json.loads(proc.stdout)


@pytest.mark.parametrize("cmd", COMMANDS, ids=[f"L{c.line}:{c.text}" for c in COMMANDS])
def test_readme_command(cmd: Command, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    how = kind(cmd)
    if how == "exception":
        pytest.skip(f"listed in EXCEPTIONS: {EXCEPTIONS[cmd.text]}")
    assert how, f"README.md:{cmd.line}: `{cmd.text}` is neither run nor excused (see the first test)"
    ws: Workspace = request.getfixturevalue("workspace")
    runners: dict[str, Callable[[], None]] = {
        "lookalike": lambda: run_lookalike(cmd, ws, monkeypatch),
        "serving": lambda: run_serving(cmd, ws),
        "watching": lambda: run_watching(cmd, ws),
        "curl": lambda: run_curl(cmd, ws, request.getfixturevalue("api")),
    }
    runners[how]()


def test_a_curl_line_runs_against_the_server(workspace: Workspace, api: Served) -> None:
    """The README has no curl line today; this keeps the curl runner working for the first one."""
    run_curl(Command(0, ("curl", "http://127.0.0.1:8000/healthz")), workspace, api)
    with pytest.raises(AssertionError, match="exited 22"):  # --fail: an HTTP error fails the command
        run_curl(Command(0, ("curl", "http://localhost:8000/images/999999")), workspace, api)
