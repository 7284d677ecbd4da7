"""Labelling in Label Studio: a Label Studio project answers the human-mode loop's queries.

The CSV path of `npc_jax.labelling` asks a person to fill a file. This bridge
puts each query into a Label Studio project as tasks instead, and reads the
annotations back. One call of `sync` (what ``experiments/label.py
--backend=labelstudio`` runs):

1. checks that the project's labelling config offers exactly the dataset's
   classes (`check_label_config`; a mismatch is refused, listing the difference);
2. if a query is pending and every one of its tasks is annotated, imports the
   labels through the label store (`labelling.import_labels`: unknown classes,
   duplicates, ids the query did not ask for, missing labels; every problem
   listed, nothing stored on error);
3. runs the loop in human mode (trains and acquires exactly as the CSV path);
4. when the loop stops for the next query (`labelling.LabelsNeeded`), creates
   its tasks in the project, in acquisition order (rank 1 first, so that the
   project's sequential sampling serves the strategy's first pick first).

**Images: inlined in the task as PNG data URIs** (``data:image/png;base64,...``),
neither uploaded as files nor served from local-files storage. Why: the pools
are arrays (npz, Fashion-MNIST IDX, tfds), so every image needs encoding
anyway, and a data URI makes each task self-contained: the whole query is
created by one import request (one database transaction on the server), it
needs no server-side settings (local-files storage needs
``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED`` and the files on the *server's*
disk, so it breaks as soon as the server is another machine), no second
request per file (an upload followed by a task update can be interrupted
half-way), and no media URL that the browser must fetch with the right
session. The cost is database size: a 28×28 grey PNG is ~0.5-1 KB, a 32×32
colour one ~3 KB; a query of a few hundred such images is well under 1 MB.
For large photos (hundreds of KB each) cloud storage would be the better
choice; this library's pools are small images. (tests/test_labelstudio.py
checks in headless Chromium that the tasks render.)

**Rules for what annotators do:**

* A task counts as labelled when it has a submitted annotation that is not
  cancelled ("skipped"). The query is imported when all its tasks are
  labelled; until then nothing is stored and the call reports what is missing.
* Two annotators disagreeing on one task: the annotation marked *ground
  truth* in Label Studio decides (the star in the annotation's menu); without
  one, the import is refused, listing each such task with every annotator's
  choice. Agreeing annotations are one label.
* Annotations edited, added or deleted after their query was imported are
  reported by every later call (task, pool id, the imported and the current
  label). The run keeps the imported labels: they are what its records were
  trained on; to train on the edited ones, label into a new workdir.

**Server down or slow:** each request has a timeout; connection failures,
timeouts, 429 and 5xx answers are retried with exponential backoff; then
`LabelStudioUnavailable` says what failed and that nothing was imported.
Reads come before the one store append, so an interrupted call stores
nothing; the only write to the server, the task import, is retried only when
the connection was refused (the request never arrived), and each call first
looks for the query's tasks, so an answer lost after a successful import
never creates the tasks twice.

**Secrets:** the API key is read from the environment (`API_KEY_ENV`) by the
caller and held in the `Client` only; it is never written to the workdir,
records, messages or task data. The workdir keeps ``labelstudio.json`` (the
server URL, the project id and a random run id that tags this run's tasks),
and, per import, ``queries/query_KKK.labelstudio.csv`` (the rows imported,
with the task and annotation ids and their update times: the reference for
detecting later edits).

Needs no extra package: the client is the Python standard library speaking
Label Studio's REST API (checked against label-studio 1.23.2). The server in
the tests comes from the ``labelstudio`` extra (see README).
"""
from __future__ import annotations

import base64
import csv
import dataclasses
import io
import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Callable
from xml.sax.saxutils import quoteattr

import numpy as np

from npc_jax import labelling, loop, storage
from npc_jax.config import RunSettings
from npc_jax.data import DataError

__all__ = [
    "API_KEY_ENV",
    "BINDING_FILE",
    "Binding",
    "Client",
    "LabelConfig",
    "LabelConfigMismatch",
    "LabelStudioError",
    "LabelStudioUnavailable",
    "SyncReport",
    "bind",
    "check_label_config",
    "collect_query",
    "create_project",
    "create_query_tasks",
    "find_edits",
    "image_data_uri",
    "label_config",
    "run_tasks",
    "sync",
]

API_KEY_ENV = "LABEL_STUDIO_API_KEY"
BINDING_FILE = "labelstudio.json"
_CSV_SUFFIX = ".labelstudio.csv"
_RETRY_STATUS = (429, 500, 502, 503, 504)


class LabelStudioError(DataError):
    """A Label Studio call or answer the bridge cannot use; names the fix."""


class LabelStudioUnavailable(LabelStudioError):
    """The server did not answer (down, slow, or failing) after every retry."""


class LabelConfigMismatch(LabelStudioError):
    """The project's labelling config does not offer exactly the dataset's classes."""


# --------------------------------------------------------------------------- #
# The REST client
# --------------------------------------------------------------------------- #


class Client:
    """A small Label Studio REST client with timeouts and retries.

    Args:
      url: the server, e.g. ``http://localhost:8080``.
      api_key: a legacy token or a personal access token (a JWT refresh
        token, exchanged for short-lived access tokens). Held in memory only.
      timeout: seconds per request.
      retries: further tries after a failed one (connection refused or reset,
        timeout, 429, 5xx); the waits are ``backoff * 2**k`` seconds.
      sleep: the wait function (tests pass a fake).
    """

    def __init__(self, url: str, api_key: str, *, timeout: float = 30.0, retries: int = 4,
                 backoff: float = 1.0, sleep: Callable[[float], None] = time.sleep):
        if not api_key:
            raise LabelStudioError(f"No Label Studio API key: set {API_KEY_ENV} (Label Studio: "
                                   "Account & Settings -> Access token).")
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise LabelStudioError(f"--ls_url={url!r} is not an http(s) URL; give the server's "
                                   "address, e.g. http://localhost:8080.")
        self.url = url.rstrip("/")
        self._key = api_key
        self._is_jwt = api_key.count(".") == 2
        self._access = None
        self.timeout, self.retries, self.backoff, self._sleep = timeout, retries, backoff, sleep

    def __repr__(self) -> str:   # never shows the key
        return f"Client({self.url!r})"

    def _authorization(self) -> str:
        if not self._is_jwt:
            return f"Token {self._key}"
        if self._access is None:
            answer = self._send("POST", "/api/token/refresh/", body={"refresh": self._key},
                                auth=False)
            self._access = answer["access"]
        return f"Bearer {self._access}"

    def request(self, method: str, path: str, *, params: dict | None = None, body=None,
                idempotent: bool | None = None):
        """The decoded JSON answer of ``method path`` (None when empty).

        `idempotent` (default: not POST) allows retries after the request may
        have arrived (timeouts, 5xx); a non-idempotent request is retried only
        when the connection was refused.
        """
        if params:
            path = f"{path}?{urllib.parse.urlencode(params)}"
        idempotent = method != "POST" if idempotent is None else idempotent
        return self._send(method, path, body=body, idempotent=idempotent)

    def _send(self, method: str, path: str, *, body=None, auth: bool = True,
              idempotent: bool = True):
        data = None if body is None else json.dumps(body).encode()
        waited, failures = 0.0, []
        for attempt in range(self.retries + 1):
            headers = {"Content-Type": "application/json", "Accept": "application/json"}
            if auth:
                headers["Authorization"] = self._authorization()
            request = urllib.request.Request(self.url + path, data=data, headers=headers,
                                             method=method)
            retry = False
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                    text = answer.read()
                return json.loads(text) if text.strip() else None
            except urllib.error.HTTPError as error:
                detail = error.read()[:300].decode(errors="replace")
                if error.code == 401 and auth and self._is_jwt and self._access is not None:
                    self._access = None          # an expired access token: refresh once
                    retry = True
                elif error.code in (401, 403):
                    raise LabelStudioError(
                        f"Label Studio at {self.url} refused the API key ({error.code} on "
                        f"{method} {path.split('?')[0]}): check {API_KEY_ENV} (Account & "
                        "Settings -> Access token; a legacy token must be enabled for the "
                        "organization) and that the user may see the project.") from None
                elif error.code == 404:
                    raise LabelStudioError(f"Label Studio at {self.url}: {method} "
                                           f"{path.split('?')[0]} not found (404): check the "
                                           "project id and that the URL is Label Studio's.") \
                        from None
                elif error.code in _RETRY_STATUS:
                    retry = idempotent
                    failures.append(f"HTTP {error.code}")
                else:
                    raise LabelStudioError(f"Label Studio at {self.url} refused {method} "
                                           f"{path.split('?')[0]}: HTTP {error.code} "
                                           f"{detail}") from None
            except (urllib.error.URLError, TimeoutError, socket.timeout, ConnectionError,
                    OSError) as error:
                reason = getattr(error, "reason", error)
                refused = isinstance(reason, ConnectionRefusedError)
                retry = idempotent or refused
                failures.append("timed out" if isinstance(reason, (TimeoutError, socket.timeout))
                                else f"{type(reason).__name__}: {reason}")
            if not retry or attempt == self.retries:
                break
            pause = self.backoff * 2 ** attempt
            self._sleep(pause)
            waited += pause
        raise LabelStudioUnavailable(
            f"Label Studio at {self.url} did not answer {method} {path.split('?')[0]} "
            f"({len(failures)} tries over {waited:.0f} s of backoff, timeout "
            f"{self.timeout:g} s each; last: {failures[-1] if failures else 'no answer'}). "
            "Nothing was imported or created. Start the server (label-studio start) or check "
            "--ls_url, then run this command again.")


# --------------------------------------------------------------------------- #
# Project and labelling config
# --------------------------------------------------------------------------- #


def label_config(class_names) -> str:
    """The labelling config of a query: the image and one single choice per class.

    ``<Image name="image" value="$image">`` shows the task's data URI without
    smoothing (small images stay crisp when zoomed); ``<Choices name="label">``
    offers the class names in id order.
    """
    choices = "\n".join(f"    <Choice value={quoteattr(str(n))}/>" for n in class_names)
    return ('<View>\n  <Image name="image" value="$image" smoothing="false" zoom="true"/>\n'
            '  <Choices name="label" toName="image" choice="single-radio" required="true" '
            f'showInline="true">\n{choices}\n  </Choices>\n</View>\n')


@dataclasses.dataclass(frozen=True)
class LabelConfig:
    """What a project's config means to the bridge: control name and choice -> class id."""

    choices_name: str
    class_of: dict


def check_label_config(config_xml: str, class_names) -> LabelConfig:
    """Checks that `config_xml` labels ``$image`` with exactly `class_names`.

    Raises:
      LabelConfigMismatch: listing the classes without a choice, the choices
        that are no class, and a missing ``<Image value="$image">`` or
        ``<Choices>`` for it.
    """
    names = [str(n) for n in class_names]
    try:
        root = ElementTree.fromstring(config_xml or "")
    except ElementTree.ParseError as error:
        raise LabelConfigMismatch(f"The project's labelling config is not XML ({error}); "
                                  "replace it with the config the bridge prints.") from None
    images = [e.get("name") for e in root.iter() if e.tag == "Image"
              and (e.get("value") or "").strip() == "$image"]
    problems = []
    if not images:
        problems.append('no <Image value="$image"> (the tasks carry their picture in '
                        'data.image)')
    controls = [e for e in root.iter() if e.tag == "Choices" and e.get("toName") in images]
    if images and len(controls) != 1:
        problems.append(f"{len(controls)} <Choices> for the image; need exactly one")
    choices = ([c.get("alias") or c.get("value") for c in controls[0].iter("Choice")]
               if len(controls) == 1 else [])
    if len(controls) == 1:
        missing = [n for n in names if n not in choices]
        extra = [c for c in choices if c not in names]
        if missing:
            problems.append(f"classes without a choice: {missing}")
        if extra:
            problems.append(f"choices that are no class of the dataset: {extra}")
        if len(set(choices)) != len(choices):
            problems.append("a choice appears twice")
    if problems:
        raise LabelConfigMismatch(
            "The Label Studio project's labelling config does not match the dataset's classes "
            f"{names}:\n  - " + "\n  - ".join(problems) + "\nSet the project's config "
            "(Settings -> Labeling Interface -> Code) to:\n" + label_config(names))
    return LabelConfig(controls[0].get("name"), {c: names.index(c) for c in choices})


def create_project(client: Client, title: str, class_names) -> int:
    """Creates a project labelling `class_names`, served in task order; returns its id."""
    project = client.request("POST", "/api/projects/", body={
        "title": title, "label_config": label_config(class_names),
        "sampling": "Sequential sampling", "show_skip_button": True,
        "description": "Queries of an npc_jax active-learning run: label each image."})
    return int(project["id"])


# --------------------------------------------------------------------------- #
# The workdir's binding to a project
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class Binding:
    """The project of a workdir; `run` tags this run's tasks in the project."""

    url: str
    project: int
    run: str


def bind(workdir: str | os.PathLike, client: Client, project: int | str | None, *,
         class_names, title: str | None = None) -> Binding:
    """The workdir's `Binding`, made on first use (``project="new"`` creates one).

    A workdir stays with its project: another id is refused.
    """
    path = Path(workdir) / BINDING_FILE
    if path.exists():
        binding = Binding(**json.loads(path.read_text()))
        if project not in (None, "", binding.project, str(binding.project)):
            raise LabelStudioError(
                f"{workdir} labels in Label Studio project {binding.project} ({binding.url}), "
                f"not {project!r}; drop --ls_project (or pass {binding.project}), or use a new "
                "--workdir for another project.")
        return binding
    if project in (None, ""):
        raise LabelStudioError("Which Label Studio project? Pass --ls_project=ID, or "
                               "--ls_project=new to create one with the dataset's classes.")
    if str(project) == "new":
        project = create_project(client, title or f"npc_jax {Path(workdir).name}", class_names)
    elif not str(project).isdigit():
        raise LabelStudioError(f"--ls_project={project!r}: give a project id (an integer, in "
                               "the project's URL) or 'new'.")
    binding = Binding(client.url, int(project), uuid.uuid4().hex[:12])
    Path(workdir).mkdir(parents=True, exist_ok=True)
    storage.write_atomically(path, json.dumps(dataclasses.asdict(binding), indent=1).encode())
    return binding


# --------------------------------------------------------------------------- #
# Tasks
# --------------------------------------------------------------------------- #


def image_data_uri(image: np.ndarray) -> str:
    """A ``data:image/png;base64,...`` URI of ``(H, W, C)`` uint8 or float [0, 1] image."""
    from PIL import Image

    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    if image.ndim == 3 and image.shape[-1] not in (1, 3):
        image = image[..., :1]
    pixels = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def run_tasks(client: Client, binding: Binding) -> list[dict]:
    """Every task of `binding`'s run in its project, with annotations, by id."""
    tasks, page = [], 1
    while True:
        answer = client.request("GET", "/api/tasks/", params={
            "project": binding.project, "fields": "all", "page": page, "page_size": 100})
        batch = answer.get("tasks", []) if isinstance(answer, dict) else answer
        tasks += batch
        total = answer.get("total", len(tasks)) if isinstance(answer, dict) else len(tasks)
        if not batch or len(tasks) >= total:
            break
        page += 1
    mine = [t for t in tasks if (t.get("data") or {}).get("npc_run") == binding.run]
    return sorted(mine, key=lambda t: t["id"])


def create_query_tasks(client: Client, binding: Binding, export: labelling.Export,
                       images: np.ndarray, existing: list[dict], *,
                       ranks=None) -> list[int]:
    """Creates the tasks of `export` not in `existing`, in rank order; returns the new
    task ids (empty when all existed).

    Each task's data: ``image`` (PNG data URI), ``npc_run``, ``npc_query``,
    ``npc_rank`` (1 = picked first), ``npc_id`` (pool index).
    """
    ranks = list(ranks) if ranks is not None else list(range(1, len(export.indices) + 1))
    have = {t["data"].get("npc_id") for t in existing
            if t["data"].get("npc_query") == export.query}
    new = [{"data": {"image": image_data_uri(images[index]), "npc_run": binding.run,
                     "npc_query": export.query, "npc_rank": rank, "npc_id": index}}
           for rank, index in zip(ranks, export.indices) if index not in have]
    if not new:
        return []
    client.request("POST", f"/api/projects/{binding.project}/import", body=new)
    created = [t for t in run_tasks(client, binding)
               if t["data"].get("npc_query") == export.query
               and t["data"].get("npc_id") not in have]
    return [t["id"] for t in created]


# --------------------------------------------------------------------------- #
# Annotations -> labels
# --------------------------------------------------------------------------- #


def _choice_of(annotation: dict, choices_name: str) -> str:
    picked = [c for item in annotation.get("result") or []
              if item.get("from_name") == choices_name
              for c in (item.get("value") or {}).get("choices", [])]
    return "|".join(picked)


def _completed(task: dict) -> list[dict]:
    return [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]


def _resolve(task: dict, choices_name: str) -> tuple[str | None, str | None]:
    """(choice, problem) of a task by the rules of the module docstring."""
    done = _completed(task)
    if not done:
        return None, None
    by_choice = {}
    for a in done:
        by_choice.setdefault(_choice_of(a, choices_name), []).append(a)
    if "" in by_choice:
        return None, (f"annotation(s) {[a['id'] for a in by_choice['']]} choose no class")
    if len(by_choice) == 1:
        return next(iter(by_choice)), None
    truth = {c for c, group in by_choice.items() if any(a.get("ground_truth") for a in group)}
    if len(truth) == 1:
        return truth.pop(), None
    votes = "; ".join(f"{c!r} by user(s) {sorted({a.get('completed_by') for a in g})}"
                      for c, g in sorted(by_choice.items()))
    why = "ground truth marks several choices" if truth else "no annotation is ground truth"
    return None, f"annotators disagree ({votes}; {why})"


@dataclasses.dataclass
class Collected:
    """A pending query's state in the project: rows to import, or what is missing."""

    rows: list[dict]
    waiting: list[dict]      # tasks without a submitted annotation
    problems: list[str]


def collect_query(tasks: list[dict], pending: dict, config: LabelConfig,
                  class_names) -> Collected:
    """The import rows of `pending`'s tasks (columns of the store's CSV and the
    ids needed to detect later edits)."""
    rows, waiting, problems = [], [], []
    mine = [t for t in tasks if t["data"].get("npc_query") == pending["query"]]
    for task in sorted(mine, key=lambda t: (t["data"].get("npc_rank", 0), t["id"])):
        data = task["data"]
        choice, problem = _resolve(task, config.choices_name)
        where = f"task {task['id']} (rank {data.get('npc_rank')}, pool id {data.get('npc_id')})"
        if problem:
            problems.append(f"{where}: {problem}")
        elif choice is None:
            waiting.append(task)
        else:
            label = (class_names[config.class_of[choice]] if choice in config.class_of
                     else choice)
            done = _completed(task)
            rows.append({"query": pending["query"], "rank": data.get("npc_rank"),
                         "id": data.get("npc_id"), "label": label, "task": task["id"],
                         "annotations": " ".join(str(a["id"]) for a in done),
                         "updated_at": " ".join(str(a.get("updated_at")) for a in done)})
    return Collected(rows, waiting, problems)


def _write_rows(path: Path, rows: list[dict]) -> None:
    columns = ["query", "rank", "id", "label", "task", "annotations", "updated_at"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    storage.write_atomically(path, buffer.getvalue().encode())


def find_edits(workdir: str | os.PathLike, tasks: list[dict], config: LabelConfig,
               class_names) -> list[str]:
    """One line per imported task whose annotations changed after its import."""
    by_id = {t["id"]: t for t in tasks}
    lines = []
    for entry in labelling.read_store(workdir):
        path = Path(entry.get("csv", ""))
        if not path.name.endswith(_CSV_SUFFIX) or not path.exists():
            continue
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                where = (f"query {row['query']}, task {row['task']} (pool id {row['id']}, "
                         f"imported {row['label']!r})")
                task = by_id.get(int(row["task"]))
                if task is None:
                    lines.append(f"{where}: the task was deleted")
                    continue
                done = _completed(task)
                now_ids = " ".join(str(a["id"]) for a in done)
                now_times = " ".join(str(a.get("updated_at")) for a in done)
                if (now_ids, now_times) == (row["annotations"], row["updated_at"]):
                    continue
                choice, problem = _resolve(task, config.choices_name)
                now = (problem or "no submitted annotation" if choice is None else
                       repr(class_names[config.class_of[choice]]
                            if choice in config.class_of else choice))
                change = "label unchanged" if now == repr(row["label"]) else f"now {now}"
                lines.append(f"{where}: annotations edited after the import, {change}")
    return lines


# --------------------------------------------------------------------------- #
# One call
# --------------------------------------------------------------------------- #


@dataclasses.dataclass
class SyncReport:
    """What one `sync` did (`lines`: the same, for people)."""

    binding: Binding
    imported: dict | None = None        # the store entry, when a query was imported
    waiting: list[dict] = dataclasses.field(default_factory=list)
    created: list[int] = dataclasses.field(default_factory=list)   # task ids
    query: int | None = None            # the query whose tasks are (now) in the project
    edits: list[str] = dataclasses.field(default_factory=list)
    records: list | None = None         # all records, when every round is done
    lines: list[str] = dataclasses.field(default_factory=list)


def _ranked(pending: dict) -> labelling.Export:
    return labelling.Export(pending["query"], Path(pending["csv"]), Path(pending["png"]),
                            tuple(pending["indices"]), pending["num_classes"],
                            tuple(pending["class_names"] or ()) or None, pending["what"])


def sync(config, workdir: str | os.PathLike, client: Client, project: int | str | None = None,
         *, on_record=None, echo: Callable[[str], None] = print) -> SyncReport:
    """One labelling step against Label Studio: import, train and acquire, create tasks.

    Args:
      config: the run's config (as for `loop.run`).
      workdir: the human-mode run's directory.
      client: a `Client` of the server.
      project: a project id, or "new" (first call only); None once bound.
      on_record: passed to `loop.run`.
      echo: where the report's lines go as they happen.

    Raises:
      LabelConfigMismatch, LabelStudioError, LabelStudioUnavailable: nothing was
        stored; the message names the fix.
      DataError, ValueError: from the loop, as in the CSV path.
    """
    workdir = Path(workdir)
    settings = RunSettings.from_config(config, labels="human")
    dataset, names = labelling.load_for_labelling(settings.dataset, data_dir=settings.data_dir)
    names = tuple(names or (str(c) for c in range(dataset.num_classes)))
    binding = bind(workdir, client, project, class_names=names)
    report = SyncReport(binding)

    def say(line: str) -> None:
        report.lines.append(line)
        echo(line)

    where = f"Label Studio project {binding.project} at {binding.url}"
    answer = client.request("GET", f"/api/projects/{binding.project}/")
    ls_config = check_label_config(answer.get("label_config", ""), names)
    tasks = run_tasks(client, binding)
    report.edits = find_edits(workdir, tasks, ls_config, names)
    if report.edits:
        say(f"warning: {len(report.edits)} imported task(s) were changed in {where} after "
            "their import; the run keeps the labels it imported (its records trained on "
            "them); label into a new --workdir to use the edited ones:\n  - "
            + "\n  - ".join(report.edits))

    pending = labelling.read_pending(workdir)
    if pending is not None:
        report.query = pending["query"]
        have = {t["data"].get("npc_id") for t in tasks
                if t["data"].get("npc_query") == pending["query"]}
        if not set(pending["indices"]) <= have:   # never created, or cut short
            report.created = create_query_tasks(client, binding, _ranked(pending),
                                                dataset.x_train, tasks,
                                                ranks=pending["ranks"])
            say(f"Created {len(report.created)} tasks for query {pending['query']} "
                f"({pending['what']}) in {where}: label them at "
                f"{binding.url}/projects/{binding.project}/data")
            return report
        collected = collect_query(tasks, pending, ls_config, names)
        if collected.problems:
            raise LabelStudioError(
                f"Cannot import query {pending['query']} from {where}; nothing was stored. "
                "Fix these tasks in Label Studio (or mark one annotation ground truth), then "
                "run again:\n  - " + "\n  - ".join(collected.problems))
        if collected.waiting:
            report.waiting = collected.waiting
            ranks = [t["data"].get("npc_rank") for t in collected.waiting]
            say(f"Query {pending['query']}: {len(collected.rows)} of "
                f"{len(collected.rows) + len(collected.waiting)} tasks labelled in {where}; "
                f"waiting for rank(s) {ranks} "
                f"(task ids {[t['id'] for t in collected.waiting]}). Nothing imported; run "
                "again when they are done.")
            return report
        csv_path = Path(pending["csv"]).with_suffix("").with_name(
            Path(pending["csv"]).stem + _CSV_SUFFIX)
        _write_rows(csv_path, collected.rows)
        try:
            report.imported = labelling.import_labels(workdir, csv_path)
        except DataError as error:
            raise LabelStudioError(f"Annotations of query {pending['query']} in {where} "
                                   f"(written to {csv_path}):\n{error}") from None
        say(f"Imported {len(collected.rows)} labels of query {pending['query']} from {where} "
            f"(tasks {[r['task'] for r in collected.rows]}).")

    try:
        report.records = loop.run(config, workdir, labels="human", on_record=on_record)
    except labelling.LabelsNeeded as stop:
        pending = labelling.read_pending(workdir)
        report.query = stop.export.query
        report.created = create_query_tasks(client, binding, stop.export, dataset.x_train,
                                            run_tasks(client, binding),
                                            ranks=pending["ranks"] if pending else None)
        say(f"Created {len(report.created)} tasks for query {stop.export.query} "
            f"({stop.export.what}), in acquisition order, in {where}: label them at "
            f"{binding.url}/projects/{binding.project}/data, then run this command again.")
        return report
    say(f"All rounds are labelled and trained. records: {workdir}/results.jsonl")
    return report
