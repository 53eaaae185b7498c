"""A fresh install, as a newcomer and a deployer meet it. Fails (exit 1) on the first problem.

1. Build the wheel; every file of the package in the source tree (templates, static
   files, Lua scripts, py.typed) must be in it.
2. Install it, without extras, in a new virtual environment; from an empty directory:
   import every module, ``tokenstile --version``, ``tokenstile demo``; then
   ``tokenstile serve`` on a free port (JSON logs, Redis counters and a PostgreSQL ledger
   when those servers answer on this machine, asked for OpenTelemetry traces it has no SDK
   for) against the package's own fake upstream, checked through ``/healthz``,
   ``/readyz``, the dashboard's login page and stylesheet, one ``openai`` SDK call and its
   access log line, and a clean stop.
3. Run the README's first command, literally, in a fresh clone, in a fresh venv.

Standard library only: it runs before anything is installed. ``python .ci/smoke.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
REDIS = ("127.0.0.1", 6379)
POSTGRES = ("127.0.0.1", 5432)
STARTED = time.monotonic()


class SmokeFailed(Exception):
    pass


def say(text: str) -> None:
    print(f"smoke [{time.monotonic() - STARTED:5.1f}s] {text}", flush=True)


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    began = time.monotonic()
    say(f"{name} …")
    yield
    say(f"{name}: ok ({time.monotonic() - began:.1f}s)")


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without anything that would point a child at the source tree or
    configure tokenstile or OpenTelemetry behind the test's back."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
           and not k.startswith(("TOKENSTILE_", "OTEL_"))}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return {**env, **(extra or {})}


def run(cmd: list[str], cwd: Path, timeout: float = 300, env: dict[str, str] | None = None,
        what: str | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, cwd=cwd, env=env or clean_env(), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise SmokeFailed(f"{what or shlex.join(cmd)} exited {done.returncode}\n"
                          f"--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}")
    return done


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise SmokeFailed(message)


def reachable(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=0.5):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


# -- 1. the wheel ----------------------------------------------------------------------------


def source_files() -> list[str]:
    """The project's files as git sees them (tracked, or new and not ignored): what a
    clone of this work would hold, without build leftovers."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=ROOT, capture_output=True, text=True)
    expect(listed.returncode == 0, f"git ls-files: {listed.stderr}")
    return [name for name in listed.stdout.split("\0") if name and (ROOT / name).is_file()]


def build_wheel(work: Path) -> Path:
    with step("build the wheel"):
        # From a copy: an in-tree build reuses build/ and *.egg-info from earlier builds,
        # which can put a file in the wheel that the packaging config no longer names.
        tree = work / "tree"
        files = source_files()
        for name in files:
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tree / name)
        run([PY, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work / "dist"), "."],
            cwd=tree)
        (wheel,) = (work / "dist").glob("tokenstile-*.whl")
        inside = set(zipfile.ZipFile(wheel).namelist())
        package = {n.removeprefix("src/") for n in files if n.startswith("src/tokenstile/")}
        missing = sorted(package - inside)
        expect(not missing, f"files of the package missing from the wheel: {missing}")
        for kind in (".lua", ".html", ".css", ".js"):
            expect(any(n.endswith(kind) for n in inside), f"no {kind} file in the wheel")
        say(f"  {wheel.name}: {len(inside)} files, none missing")
    return wheel


# -- 2. the wheel, installed without extras ---------------------------------------------------


def install(work: Path, wheel: Path) -> Path:
    venv = work / "venv"
    with step("install the wheel without extras in a new venv"):
        run([PY, "-m", "venv", "--without-pip", str(venv)], cwd=work)
        python = venv / "bin" / "python"
        run([PY, "-m", "pip", "--python", str(python), "install", "-q", str(wheel)], cwd=work)
    return venv


IMPORT_ALL = """
import importlib, pkgutil, sys, tokenstile
assert tokenstile.__file__.startswith(sys.prefix), tokenstile.__file__
failed, count = [], 0
for info in pkgutil.walk_packages(tokenstile.__path__, "tokenstile."):
    if info.name.endswith(".__main__"):
        continue
    count += 1
    try:
        importlib.import_module(info.name)
    except BaseException as exc:
        failed.append(f"{info.name}: {type(exc).__name__}: {exc}")
print(count)
if failed:
    sys.exit("modules that do not import without extras:\\n  " + "\\n  ".join(failed))
"""


def check_install(venv: Path, empty: Path) -> None:
    python = str(venv / "bin" / "python")
    with step("no test or optional packages in the venv"):
        for module in ("openai", "anthropic", "pytest", "opentelemetry.sdk"):
            done = subprocess.run([python, "-c", f"import {module}"], cwd=empty,
                                  env=clean_env(), capture_output=True)
            expect(done.returncode != 0, f"{module} is installed: the venv is not bare")
    with step("import every module of the package"):
        count = run([python, "-c", IMPORT_ALL], cwd=empty).stdout.strip()
        say(f"  {count} modules imported")
    with step("tokenstile --version and demo --help"):
        version = run([str(venv / "bin" / "tokenstile"), "--version"], cwd=empty).stdout
        expect(re.fullmatch(r"tokenstile \d+\.\d+\.\d+\S*\n", version) is not None, version)
        run([str(venv / "bin" / "tokenstile"), "demo", "--help"], cwd=empty)
    with step("tokenstile demo, from an empty directory"):
        out = run([str(venv / "bin" / "tokenstile"), "demo"], cwd=empty, timeout=180).stdout
        expect("usage recorded in the ledger" in out, f"the demo printed no usage:\n{out}")
        left = sorted(p.name for p in empty.iterdir())
        expect(not left, f"the demo left files behind: {left}")


# -- 2b. tokenstile serve --------------------------------------------------------------------


class Stores:
    """Redis and PostgreSQL when they answer here (CI starts both), else SQLite; each
    with a name of its own, removed afterwards."""

    def __init__(self, work: Path) -> None:
        tag = "smoke" + secrets.token_hex(4)
        self.redis = reachable(REDIS)
        self.postgres = reachable(POSTGRES)
        sqlite = f"sqlite:///{work / 'smoke.db'}"
        self.counters = f"redis://127.0.0.1:6379/15?prefix={tag}" if self.redis else sqlite
        self.database = (f"postgresql://postgres@127.0.0.1:5432/test?schema={tag}"
                         if self.postgres else sqlite)
        self.tag = tag

    def describe(self) -> str:
        return f"counters {self.counters.split(':')[0]}, ledger {self.database.split(':')[0]}"

    def clean(self, python: str, cwd: Path) -> None:
        code = ["import asyncio"]
        if self.redis:
            code.append(
                "import redis\n"
                "r = redis.Redis(host='127.0.0.1', port=6379, db=15)\n"
                f"keys = list(r.scan_iter(match='{{{self.tag}}}*'))\n"
                "r.delete(*keys) if keys else None")
        if self.postgres:
            code.append(
                "import asyncpg\n"
                "async def drop():\n"
                "    c = await asyncpg.connect('postgresql://postgres@127.0.0.1:5432/test')\n"
                f"    await c.execute('DROP SCHEMA IF EXISTS \"{self.tag}\" CASCADE')\n"
                "    await c.close()\n"
                "asyncio.run(drop())")
        subprocess.run([python, "-c", "\n".join(code)], cwd=cwd, env=clean_env(),
                       capture_output=True, timeout=30)


class Process:
    def __init__(self, cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 (open while the process runs)
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                     stderr=self._log, stdin=subprocess.DEVNULL)

    def first_line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        deadline, buffer = time.monotonic() + timeout, b""
        while b"\n" not in buffer:
            expect(self.proc.poll() is None, f"exited at start: {self.log_path.read_text()}")
            expect(time.monotonic() < deadline, "no output in time")
            buffer += self.proc.stdout.read() or b""
            time.sleep(0.05)
        return buffer.decode().splitlines()[0]

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise SmokeFailed(f"{self.proc.args!r} did not stop on SIGTERM") from None
        self._log.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def check_dashboard(base: str, key: str) -> None:
    """Log in with a project key (the login form and its CSRF cookie), then render the
    overview and the request page, and fetch the static files they link."""
    import http.cookiejar
    import urllib.parse

    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def fetch(path: str, form: dict[str, str] | None = None) -> str:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        try:
            with opener.open(base + path, data=data, timeout=10) as resp:
                return str(resp.read().decode())
        except urllib.error.HTTPError as err:
            raise SmokeFailed(f"GET {path}: {err.code} {err.read()[:500]!r}") from None

    login = fetch("/dashboard/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', login)
    expect(csrf is not None, f"no login form:\n{login[:2000]}")
    assert csrf is not None
    overview = fetch("/dashboard/login", {"csrf": csrf.group(1), "next": "/dashboard/",
                                           "key": key})
    expect("smoke" in overview and "Log in" not in overview,
           f"the overview after logging in:\n{overview[:2000]}")
    assets = sorted(set(re.findall(r'(/dashboard/static/[\w.-]+)', overview + login)))
    pages = sorted(set(re.findall(r'href="(/dashboard/[a-z]+)"', overview)))[:8]
    expect(len(assets) >= 2 and len(pages) >= 2, f"links: {assets} {pages}")
    for asset in assets:
        expect(len(fetch(asset)) > 50, f"{asset} is empty")
    for page in pages:
        fetch(page)
    say(f"  overview, {len(pages)} pages, {len(assets)} static files")


SDK_CALL = """
import sys, openai
base, key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base, api_key=key, max_retries=0)
raw = client.chat.completions.with_raw_response.create(
    model="gpt-4o-mini", max_tokens=8, messages=[{"role": "user", "content": "smoke"}])
reply = raw.parse()
assert reply.usage.completion_tokens == 8, reply.usage
chunks = list(client.chat.completions.create(
    model="gpt-4o-mini", max_tokens=5, stream=True, stream_options={"include_usage": True},
    messages=[{"role": "user", "content": "smoke, streamed"}]))
assert [c for c in chunks if c.usage and c.usage.completion_tokens == 5], chunks[-1]
print(raw.headers["x-tokenstile-request-id"])
"""


def sdk_python(venv: Path, work: Path) -> str:
    """An interpreter with the ``openai`` SDK: this one if it has it, else the smoke venv
    after installing it there (the bare-install checks are done by then)."""
    if subprocess.run([PY, "-c", "import openai"], env=clean_env(),
                      capture_output=True).returncode == 0:
        return PY
    python = str(venv / "bin" / "python")
    run([PY, "-m", "pip", "--python", python, "install", "-q", "openai"], cwd=work)
    return python


def check_serve(venv: Path, work: Path, empty: Path) -> None:
    python, cli = str(venv / "bin" / "python"), str(venv / "bin" / "tokenstile")
    stores = Stores(work)
    fake = Process([python, "-m", "tokenstile.testing.fake_upstream", "--port", "0"],
                   empty, clean_env(), work / "fake.log")
    gateway: Process | None = None
    try:
        with step(f"tokenstile serve ({stores.describe()})"):
            upstream = fake.first_line(30).removeprefix("listening on ")
            expect(upstream.startswith("http://"), upstream)
            config = work / "smoke.yaml"
            config.write_text(json.dumps({
                "upstreams": {"openai": {"kind": "openai", "base_url": upstream + "/v1",
                                         "api_key": "sk-smoke-upstream-not-real"}},
                "storage": {"counters": stores.counters, "database": stores.database},
                "projects": {"smoke": {"daily_limit": 1_000_000}},
            }))
            key = run([cli, "keys", "create", "-c", str(config), "-p", "smoke", "-u", "ci"],
                      cwd=empty).stdout.strip()
            expect(key.startswith("ts-"), "keys create printed no key")
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            env = clean_env({"TOKENSTILE_SPOOL_DIR": str(work / "spool"),
                             "TOKENSTILE_ADMIN_KEY": "adm-" + secrets.token_hex(16),
                             "OTEL_TRACES_EXPORTER": "otlp",
                             "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
            gateway = Process([cli, "serve", "-c", str(config), "--port", str(port),
                               "--log-format", "json"], empty, env, work / "serve.log")
            deadline = time.monotonic() + 60
            while True:
                expect(gateway.proc.poll() is None,
                       f"serve exited:\n{gateway.log_path.read_text()[-4000:]}")
                with contextlib.suppress(OSError):
                    status, body = get(base + "/healthz", timeout=2)
                    if status == 200:
                        break
                expect(time.monotonic() < deadline, "/healthz never answered")
                time.sleep(0.1)
            expect(json.loads(body)["status"] == "ok", body.decode())
            status, body = get(base + "/readyz")
            ready = json.loads(body)
            expect(status == 200 and ready["status"] == "ready", body.decode())
        with step("an openai SDK call through the gateway"):
            request_id = run([sdk_python(venv, work), "-c", SDK_CALL, base + "/v1", key],
                             cwd=empty, what="the openai SDK call").stdout.strip()
            say(f"  request {request_id}")
        with step("the dashboard: log in with the key, its pages and static files"):
            check_dashboard(base, key)
        with step("stop the gateway; read its log and ledger"):
            code = gateway.stop()
            expect(code in (0, -signal.SIGTERM), f"serve exited {code} on SIGTERM")
            text = gateway.log_path.read_text()
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
            access = [r for r in records if r.get("event") == "request"]
            expect([a["status"] for a in access] == [200, 200], f"access lines: {access}")
            expect(access[0]["request_id"] == request_id and access[0]["output_tokens"] == 8
                   and access[0]["cost_usd"] > 0, f"access line: {access[0]}")
            expect(any("tokenstile[otel]" in r.get("message", "") for r in records),
                   "no warning that the OpenTelemetry SDK is missing")
            bad = [r for r in records if r["level"] in ("error", "critical") or "exception" in r]
            expect(not bad, f"errors logged: {bad}")
            expect(key not in text and key[7:19] not in text, "the key is in the log")
            usage = json.loads(run([cli, "usage", "-c", str(config), "--json"],
                                   cwd=empty).stdout)
            expect(sum(row["requests"] for row in usage) == 2, f"ledger: {usage}")
    finally:
        if gateway is not None and gateway.proc.poll() is None:
            gateway.proc.kill()
        fake.stop()
        stores.clean(python, empty)


# -- 3. the README's first command, in a fresh clone ------------------------------------------


def readme_first_command() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"```(?:bash|sh|console)?\n(.+?)\n", text)
    expect(match is not None, "no code block in the README")
    assert match is not None
    return match.group(1).strip()


def check_fresh_clone(work: Path) -> None:
    command = readme_first_command()
    with step(f"in a fresh clone and venv: {command}"):
        expect("tokenstile demo" in command, f"the README starts with {command!r}")
        clone = work / "clone"
        run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(clone)], cwd=work)
        run([PY, "-m", "venv", str(work / "clone-venv")], cwd=work)
        script = f"source {shlex.quote(str(work / 'clone-venv/bin/activate'))} && {command}"
        out = run(["bash", "-c", script], cwd=clone, timeout=400,
                  what=f"bash -c {command!r}").stdout
        expect("usage recorded in the ledger" in out, f"the demo printed no usage:\n{out}")


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="tokenstile-smoke-"))
    try:
        wheel = build_wheel(work)
        venv = install(work, wheel)
        empty = work / "empty"
        empty.mkdir()
        check_install(venv, empty)
        check_serve(venv, work, empty)
        check_fresh_clone(work)
    except (SmokeFailed, subprocess.TimeoutExpired) as exc:
        say(f"FAILED: {exc}")
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say("all good")
    return 0


if __name__ == "__main__":
    sys.exit(main())
