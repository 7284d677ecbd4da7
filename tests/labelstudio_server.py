"""A throwaway Label Studio server for tests (sqlite, temporary data dir, free port).

A fresh Label Studio database needs ~90 s of migrations on 2 cores, a
migrated one starts in ~10 s. So the first use migrates once into a template
(``~/.cache/npc_jax/label-studio-VERSION``: an admin and an annotator with
known API tokens), and every server starts from a copy of it.
``python tests/labelstudio_server.py`` builds the template ahead of time
(scripts/setup.sh does).

The server comes from ``.venv-labelstudio`` (scripts/setup.sh; it pins numpy
< 2.3, so it lives beside the main .venv, not in it), the executable named by
``NPC_JAX_LABEL_STUDIO``, or ``label-studio`` on PATH / in this venv.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ADMIN_EMAIL = "admin@example.com"
ANNOTATOR_EMAIL = "annotator2@example.com"
PASSWORD = "npc-jax-test-1"
ADMIN_TOKEN = "npcjaxadmintoken0000"
ANNOTATOR_TOKEN = "npcjaxannotatortoken"

_ADD_ANNOTATOR = f"""
import os, sys
import label_studio
sys.path.insert(0, os.path.dirname(label_studio.__file__))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "label_studio.core.settings.label_studio")
import django
django.setup()
from organizations.models import Organization
from rest_framework.authtoken.models import Token
from users.models import User
org = Organization.objects.first()
user = User.objects.create_user(email={ANNOTATOR_EMAIL!r}, username={ANNOTATOR_EMAIL!r},
                                password={PASSWORD!r})
org.add_user(user)
user.active_organization = org
user.save()
Token.objects.filter(user=user).delete()
Token.objects.create(user=user, key={ANNOTATOR_TOKEN!r})
"""


def executable() -> Path | None:
    """The ``label-studio`` command, or None when the extra is not installed."""
    for candidate in (os.environ.get("NPC_JAX_LABEL_STUDIO"),
                      ROOT / ".venv-labelstudio" / "bin" / "label-studio",
                      Path(sys.executable).parent / "label-studio",
                      shutil.which("label-studio")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def version(exe: Path) -> str:
    python = exe.parent / "python"
    return subprocess.run([str(python), "-c", "import label_studio; "
                           "print(label_studio.__version__)"], capture_output=True, text=True,
                          check=True, timeout=120).stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(data_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LABEL_STUDIO_", "DATABASE_", "DJANGO_"))}
    env.update(LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
               DATABASE_NAME=str(data_dir / "label_studio.sqlite3"),
               SENTRY_DSN="", FRONTEND_SENTRY_DSN="", COLLECT_ANALYTICS="false",
               LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true")
    return env


def _wait(url: str, process: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"label-studio exited ({process.returncode}):\n"
                               + log.read_text()[-3000:])
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"label-studio did not answer within {timeout:.0f} s:\n"
                       + log.read_text()[-3000:])


@contextlib.contextmanager
def _running(exe: Path, data_dir: Path, *, timeout: float):
    port = free_port()
    log = data_dir / "server.log"
    command = [str(exe), "start", "--no-browser", "--data-dir", str(data_dir),
               "-db", str(data_dir / "label_studio.sqlite3"), "--internal-host", "127.0.0.1",
               "-p", str(port), "--username", ADMIN_EMAIL, "--password", PASSWORD,
               "--user-token", ADMIN_TOKEN, "--enable-legacy-api-token"]
    with open(log, "ab") as out:
        process = subprocess.Popen(command, env=_env(data_dir), stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(url, process, timeout, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def template(exe: Path) -> Path:
    """The migrated template data dir of this Label Studio version (built on first use)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "npc_jax"
    path = cache / f"label-studio-{version(exe)}"
    if (path / "ready").exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix="ls-template-", dir=cache))
    with _running(exe, build, timeout=600):
        pass   # migrated, admin and its token created
    subprocess.run([str(exe.parent / "python"), "-c", _ADD_ANNOTATOR], env=_env(build),
                   check=True, capture_output=True, timeout=300)
    (build / "server.log").unlink(missing_ok=True)
    (build / "ready").write_text("migrated\n")
    try:
        build.rename(path)
    except OSError:   # another process built it meanwhile
        shutil.rmtree(build, ignore_errors=True)
    return path


@contextlib.contextmanager
def server(exe: Path, *, timeout: float = 120):
    """A running server on a copy of the template; yields its URL."""
    source = template(exe)
    with tempfile.TemporaryDirectory(prefix="label-studio-") as tmp:
        data_dir = Path(tmp) / "data"
        shutil.copytree(source, data_dir)
        with _running(exe, data_dir, timeout=timeout) as url:
            yield url


if __name__ == "__main__":
    found = executable()
    if found is None:
        sys.exit("label-studio not installed (scripts/setup.sh makes .venv-labelstudio)")
    start = time.monotonic()
    print(f"[setup] Label Studio template: {template(found)} "
          f"({time.monotonic() - start:.0f} s)")
