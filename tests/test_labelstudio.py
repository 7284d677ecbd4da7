"""The Label Studio bridge against a real Label Studio server (and one look in Chromium).

A session fixture starts label-studio on localhost (sqlite in a temporary data
dir, a free port; tests/labelstudio_server.py); annotations are posted through
the REST API with an annotator's token, as the labelling view does.
"""
import os
import shutil
import socket
from pathlib import Path

import pytest

import labelstudio_server as lss
from npc_jax import labelling, labelstudio, loop
from needs import fashion_mnist_dir
from test_labelling import CLASS_NAMES, _config, _strip, _write_dataset

ROOT = Path(__file__).resolve().parents[1]
EXE = lss.executable()
pytestmark = pytest.mark.skipif(
    EXE is None, reason="label-studio is not installed: scripts/setup.sh makes "
    ".venv-labelstudio (or pip install -e .[labelstudio]; or set NPC_JAX_LABEL_STUDIO)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# The README's screenshot; the test refreshes it only when asked
# (NPC_JAX_UPDATE_SCREENSHOT=1), so a test run never modifies the checkout.
SCREENSHOT = ROOT / "docs" / "labelstudio_query.png"


@pytest.fixture(scope="session")
def server():
    with lss.server(EXE) as url:
        yield url


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return _write_dataset(tmp_path_factory.mktemp("data") / "toy.npz")


def _admin(url, **kw):
    return labelstudio.Client(url, lss.ADMIN_TOKEN, **kw)


def _annotate(url, task_id, choice, token=lss.ANNOTATOR_TOKEN) -> dict:
    """Submits `choice` for a task, as the labelling view's Submit button does."""
    return labelstudio.Client(url, token).request(
        "POST", f"/api/tasks/{task_id}/annotations/", body={"result": [{
            "from_name": "label", "to_name": "image", "type": "choices",
            "value": {"choices": [choice]}}]})


def _query_tasks(client, binding, query):
    return [t for t in labelstudio.run_tasks(client, binding) if t["data"]["npc_query"] == query]


def _files_text(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


def test_two_rounds_in_label_studio_match_the_oracle(server, dataset, tmp_path):
    path, y = dataset
    config = _config(path, strategies="margin", initial_labels=0, rounds=2)
    oracle = loop.run(config, tmp_path / "oracle", progress=False)
    acquired = {r.round: r.acquired_indices for r in oracle}
    workdir, client, said = tmp_path / "ls", _admin(server), []
    report = labelstudio.sync(config, workdir, client, "new", echo=said.append)
    binding = report.binding
    assert report.query == 0 and len(report.created) == 4 and "Created 4 tasks" in said[-1]
    posted = []
    for query in (0, 1):
        tasks = _query_tasks(client, binding, query)
        # Created in acquisition order: task ids ascend with the strategy's ranks.
        assert [t["data"]["npc_id"] for t in tasks] == list(acquired[query])
        assert [t["data"]["npc_rank"] for t in tasks] == [1, 2, 3, 4]
        assert all(t["data"]["image"].startswith("data:image/png;base64,") for t in tasks)
        labels = [CLASS_NAMES[y[t["data"]["npc_id"]]] for t in tasks]
        for task, label in zip(tasks[:3], labels):
            _annotate(server, task["id"], label)
        waiting = labelstudio.sync(config, workdir, client, echo=said.append)
        assert [t["id"] for t in waiting.waiting] == [tasks[3]["id"]]
        assert waiting.imported is None and "3 of 4 tasks labelled" in said[-1]
        _annotate(server, tasks[3]["id"], labels[3])
        report = labelstudio.sync(config, workdir, client, echo=said.append)
        assert report.imported["query"] == query
        assert report.imported["labels"] == [CLASS_NAMES.index(n) for n in labels]
        posted += labels
    assert report.records is not None and "All rounds" in said[-1]
    store = labelling.read_store(workdir)
    assert [CLASS_NAMES[c] for e in store for c in e["labels"]] == posted
    assert _strip(report.records) == _strip(oracle)
    assert not report.edits
    assert lss.ADMIN_TOKEN.encode() not in _files_text(workdir)   # the key stays in memory


def _one_round_run(server, dataset, workdir):
    """A run whose query 0 (4 random ids) is in a new project; returns (config, client,
    binding, tasks of query 0)."""
    config = _config(dataset[0], initial_labels=4, rounds=1)
    client = _admin(server)
    report = labelstudio.sync(config, workdir, client, "new", echo=lambda _: None)
    return config, client, report.binding, _query_tasks(client, report.binding, 0)


def test_disagreement_needs_ground_truth_and_edits_are_reported(server, dataset, tmp_path):
    path, y = dataset
    config, client, binding, tasks = _one_round_run(server, dataset, tmp_path)
    truth = [CLASS_NAMES[y[t["data"]["npc_id"]]] for t in tasks]
    for task, label in zip(tasks, truth):
        _annotate(server, task["id"], label)
    wrong = CLASS_NAMES[(CLASS_NAMES.index(truth[1]) + 1) % 4]
    admin_vote = _annotate(server, tasks[1]["id"], wrong, token=lss.ADMIN_TOKEN)
    with pytest.raises(labelstudio.LabelStudioError, match="annotators disagree") as refusal:
        labelstudio.sync(config, tmp_path, client, echo=lambda _: None)
    assert f"task {tasks[1]['id']}" in str(refusal.value) and "nothing was stored" in str(
        refusal.value)
    assert labelling.read_store(tmp_path) == []
    # The rule: the annotation marked ground truth decides.
    client.request("PATCH", f"/api/annotations/{admin_vote['id']}/", body={"ground_truth": True})
    report = labelstudio.sync(config, tmp_path, client, echo=lambda _: None)
    expected = [CLASS_NAMES.index(n) for n in truth]
    expected[1] = CLASS_NAMES.index(wrong)
    assert report.imported["labels"] == expected and report.query == 1 and report.created
    # An imported annotation edited afterwards is reported, and the store keeps its label.
    annotation = tasks[0]["id"]
    first = labelstudio.run_tasks(client, binding)[0]["annotations"][0]
    edited = CLASS_NAMES[(CLASS_NAMES.index(truth[0]) + 2) % 4]
    labelstudio.Client(server, lss.ANNOTATOR_TOKEN).request(
        "PATCH", f"/api/annotations/{first['id']}/", body={"result": [{
            "from_name": "label", "to_name": "image", "type": "choices",
            "value": {"choices": [edited]}}]})
    said = []
    again = labelstudio.sync(config, tmp_path, client, echo=said.append)
    assert len(again.edits) == 1 and f"task {annotation}" in again.edits[0]
    assert f"imported {truth[0]!r}" in again.edits[0] and f"now {edited!r}" in again.edits[0]
    assert said[0].startswith("warning: 1 imported task(s) were changed")
    assert labelling.read_store(tmp_path)[0]["labels"] == expected


def test_a_project_with_other_classes_is_refused(server, dataset, tmp_path):
    client = _admin(server)
    project = labelstudio.create_project(client, "other classes",
                                         ["zero", "one", "two", "five"])
    config = _config(dataset[0], initial_labels=4, rounds=1)
    with pytest.raises(labelstudio.LabelConfigMismatch) as refusal:
        labelstudio.sync(config, tmp_path, client, project, echo=lambda _: None)
    message = str(refusal.value)
    assert "classes without a choice: ['three']" in message
    assert "choices that are no class of the dataset: ['five']" in message
    assert not (tmp_path / "queries").exists()   # refused before the loop ran


def test_server_down_or_slow_stores_nothing(server, dataset, tmp_path):
    config, client, binding, tasks = _one_round_run(server, dataset, tmp_path)
    for task in tasks:
        _annotate(server, task["id"], CLASS_NAMES[0])
    sleeps = []
    down = labelstudio.Client(f"http://127.0.0.1:{lss.free_port()}", lss.ADMIN_TOKEN,
                              retries=3, backoff=0.5, sleep=sleeps.append)
    with pytest.raises(labelstudio.LabelStudioUnavailable, match="Nothing was imported"):
        labelstudio.sync(config, tmp_path, down, echo=lambda _: None)
    assert sleeps == [0.5, 1.0, 2.0]   # exponential backoff
    with socket.socket() as silent:    # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        slow = labelstudio.Client(f"http://127.0.0.1:{silent.getsockname()[1]}",
                                  lss.ADMIN_TOKEN, timeout=0.3, retries=1, backoff=0.01)
        with pytest.raises(labelstudio.LabelStudioUnavailable, match="timed out"):
            labelstudio.sync(config, tmp_path, slow, echo=lambda _: None)
    assert labelling.read_store(tmp_path) == []
    assert lss.ADMIN_TOKEN not in repr(down)
    # Back up: the same call imports.
    assert labelstudio.sync(config, tmp_path, client, echo=lambda _: None).imported["query"] == 0


def test_label_config_round_trip_and_mismatches():
    names = ("T-shirt/top", 'quote"d', "x & y")
    config = labelstudio.check_label_config(labelstudio.label_config(names), names)
    assert config.choices_name == "label" and config.class_of == {n: i for i, n in
                                                                  enumerate(names)}
    with pytest.raises(labelstudio.LabelConfigMismatch, match=r"no <Image value=\"\$image\">"):
        labelstudio.check_label_config('<View><Image name="i" value="$img"/></View>', names)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (scripts/setup.sh)")
def test_tasks_render_their_images_in_the_labelling_view(server, dataset, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api",
                                     reason="needs playwright (pip install -e .[dev])")
    if (fashion_mnist_dir() / "train-images-idx3-ubyte.gz").exists():
        config = _config(dataset[0], dataset="fashion_mnist", initial_labels=10, rounds=1)
        names = labelling.FASHION_MNIST_CLASSES
    else:
        config, names = _config(dataset[0], initial_labels=4, rounds=1), CLASS_NAMES
    client = _admin(server)
    report = labelstudio.sync(config, tmp_path, client, "new", echo=lambda _: None)
    project, first = report.binding.project, report.created[0]
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 960})
        page.goto(f"{server}/user/login/")
        page.fill("input[name=email]", lss.ADMIN_EMAIL)
        page.fill("input[name=password]", lss.PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(lambda u: "/user/login" not in u, timeout=30_000)
        page.goto(f"{server}/projects/{project}/data?task={first}")
        image = page.locator('img[src^="data:image/png"]').first
        image.wait_for(state="visible", timeout=60_000)
        page.wait_for_function(
            "() => [...document.querySelectorAll('img[src^=\"data:image/png\"]')]"
            ".some(i => i.complete && i.naturalWidth > 0)", timeout=30_000)
        natural = image.evaluate("i => [i.naturalWidth, i.naturalHeight]")
        assert natural == [28, 28]
        update = os.environ.get("NPC_JAX_UPDATE_SCREENSHOT")
        target = SCREENSHOT if update else tmp_path / "query.png"
        target.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(target))
        assert target.stat().st_size > 0
        shown = page.locator("body").inner_text()
        assert [n for n in names if n not in shown] == []   # every class is a choice
        browser.close()
