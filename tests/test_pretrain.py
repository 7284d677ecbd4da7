"""Self-supervised pretraining: the losses by hand, a falling loss, the cache, resume."""
import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import toy_config
from npc_jax import config as config_lib
from npc_jax import pretraining, storage
from npc_jax.data import DataError, load_dataset
from npc_jax.models import get_model
from npc_jax.ssl import pretrain as ssl_pretrain

ROOT = Path(__file__).resolve().parents[1]


# -- the losses against numpy -------------------------------------------------------

def _numpy_nt_xent(z, tau):
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z)
    total = 0.0
    for i in range(n):
        j = (i + n // 2) % n
        others = [np.exp(z[i] @ z[k] / tau) for k in range(n) if k != i]
        total += -np.log(np.exp(z[i] @ z[j] / tau) / np.sum(others))
    return total / n


def test_nt_xent_matches_a_plain_numpy_loop():
    z = np.random.default_rng(0).normal(size=(8, 5))
    got = float(ssl_pretrain.nt_xent_loss(jnp.asarray(z, jnp.float32), 0.3))
    np.testing.assert_allclose(got, _numpy_nt_xent(z, 0.3), rtol=1e-5)
    # Identical views of well separated images: the loss approaches its floor.
    e = np.eye(4)
    assert float(ssl_pretrain.nt_xent_loss(jnp.asarray(np.concatenate([e, e])), 0.05)) < 1e-6


def test_simsiam_loss_matches_numpy_and_stops_the_gradient_at_z():
    rng = np.random.default_rng(1)
    z, p = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    cos = lambda a, b: a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    expected = -np.mean([cos(p[i], z[(i + 3) % 6]) for i in range(6)])
    got = ssl_pretrain.simsiam_loss(jnp.asarray(z), jnp.asarray(p))
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)
    grad_z, grad_p = jax.grad(ssl_pretrain.simsiam_loss, argnums=(0, 1))(jnp.asarray(z),
                                                                         jnp.asarray(p))
    assert not np.any(np.asarray(grad_z)) and np.any(np.asarray(grad_p))


# -- a tiny pretraining -------------------------------------------------------------

TINY = ssl_pretrain.PretrainConfig(steps=60, batch_size=32, lr=3e-3, warmup_steps=5,
                                   hidden_dim=32, projection_dim=16)


def _tiny_model(num_classes=4, side=28):
    return get_model("cnn", num_classes, (side, side, 1), widths=(8, 8, 8, 8), feature_dim=16)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    rng = np.random.default_rng(0)
    x, y = toy_config.bar_images(128, 4, rng)
    path = tmp_path_factory.mktemp("data") / "toy.npz"
    np.savez(path, x=x, y=y, x_test=x[:16], y_test=y[:16])
    return path, load_dataset(f"npz:{path}")


@pytest.mark.parametrize("method", ["simclr", "simsiam"])
def test_the_loss_of_a_tiny_pretraining_falls(toy, tmp_path, method):
    _, dataset = toy
    config = dataclasses.replace(TINY, method=method)
    result = pretraining.pretrain(_tiny_model(), config, dataset, tmp_path, chunk_steps=10,
                                  log=lambda _: None)
    history = storage.read_jsonl(result.path / "history.jsonl")
    assert [h["step"] for h in history] == list(range(10, 61, 10))
    assert history[-1]["loss"] < history[0]["loss"] - 0.03, history
    assert history[-1]["positive_similarity"] > history[0]["positive_similarity"]


def test_cache_hit_miss_and_the_stored_weights(toy, tmp_path):
    _, dataset = toy
    said = []
    first = pretraining.pretrain(_tiny_model(), TINY, dataset, tmp_path, log=said.append)
    second = pretraining.pretrain(_tiny_model(), TINY, dataset, tmp_path, log=said.append)
    assert not first.hit and second.hit and first.path == second.path
    assert said[0].startswith("pretraining cache miss") and said[1].startswith(
        "pretraining cache hit")
    for a, b in zip(jax.tree_util.tree_leaves(first.variables),
                    jax.tree_util.tree_leaves(second.variables)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert sorted(p.name for p in first.path.iterdir()) == [
        storage.LOCK_FILE, "encoder.msgpack", "history.jsonl", "meta.json"]


def test_the_cache_key_changes_with_each_field_that_matters_and_only_those(toy):
    _, dataset = toy
    fingerprint, model = dataset.fingerprint(), _tiny_model()
    base = pretraining.cache_key(fingerprint, model, TINY, 0)
    changes = {"method": "simsiam", "steps": 61, "batch_size": 16, "lr": 1e-3,
               "weight_decay": 0.0, "warmup_steps": 6, "temperature": 0.5,
               "projection_dim": 8, "hidden_dim": 64, "crop_scale": (0.3, 1.0), "flip": False,
               "jitter": 0.2, "randaugment_ops": 1, "randaugment_probability": 0.25}
    assert set(changes) == {f.name for f in dataclasses.fields(TINY)}
    keys = {base}
    for field, value in changes.items():
        keys.add(pretraining.cache_key(fingerprint, model, dataclasses.replace(
            TINY, **{field: value}), 0))
    keys.add(pretraining.cache_key(fingerprint, model, TINY, 1))                 # seed
    keys.add(pretraining.cache_key("0" * 16, model, TINY, 0))                    # data
    keys.add(pretraining.cache_key(fingerprint, _tiny_model(num_classes=5), TINY, 0))
    keys.add(pretraining.cache_key(fingerprint, _tiny_model(side=20), TINY, 0))
    keys.add(pretraining.cache_key(fingerprint, get_model("cnn", 4), TINY, 0))  # widths
    assert len(keys) == 1 + len(changes) + 5
    # Equal recipes written differently give the same key.
    same = dataclasses.replace(TINY, crop_scale=[0.2, 1])
    assert pretraining.cache_key(fingerprint, model, same, 0) == base
    # Fields added later leave the keys of recipes without them as they were.
    legacy = {k: v for k, v in dataclasses.asdict(TINY).items()
              if k not in ("randaugment_ops", "randaugment_probability")}
    assert base == hashlib.sha256(json.dumps(
        {"dataset_fingerprint": fingerprint, "model": pretraining._model_identity(model),
         "config": legacy, "seed": 0}, sort_keys=True).encode()).hexdigest()[:16]


def test_checkpoints_of_other_data_or_networks_are_refused(toy, tmp_path):
    path, dataset = toy
    result = pretraining.pretrain(_tiny_model(), TINY, dataset, tmp_path, log=lambda _: None)
    other_data = dataclasses.replace(dataset, x_train=dataset.x_train[::-1].copy())
    with pytest.raises(DataError, match=r"made for another network or data: "
                                        r"dataset_fingerprint"):
        pretraining.load_pretrained(result.path, _tiny_model(), other_data)
    for model, field in ((_tiny_model(num_classes=5), "num_classes"),
                         (_tiny_model(side=20), "input_shape"),
                         (get_model("cnn", 4), "module")):
        with pytest.raises(DataError, match=f"another network or data: .*{field}"):
            pretraining.load_pretrained(result.path, model, dataset)
    weights = result.path / "encoder.msgpack"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(DataError, match=r"encoder.msgpack is damaged or truncated .*delete"):
        pretraining.load_pretrained(result.path, _tiny_model(), dataset)
    with pytest.raises(DataError, match=r"holds no finished pretraining"):
        pretraining.load_pretrained(tmp_path / "nothing", _tiny_model(), dataset)


def test_an_unwritable_cache_is_refused_before_training(toy, tmp_path, monkeypatch):
    import errno
    import pathlib

    _, dataset = toy

    def refuse(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(pathlib.Path, "write_bytes", refuse)
    with pytest.raises(storage.RecordsError, match=r"pretraining cache directory .* not "
                                                   r"writable"):
        pretraining.pretrain(_tiny_model(), TINY, dataset, tmp_path, log=lambda _: None)


def test_sigkill_then_resume_ends_with_the_weights_of_an_uninterrupted_run(toy, tmp_path):
    path, dataset = toy
    steps = 300
    overrides = [f"--config.dataset=npz:{path}", f"--config.pretrain.steps={steps}",
                 "--config.pretrain.batch_size=16", "--config.pretrain.warmup_steps=5",
                 "--config.pretrain.hidden_dim=32", "--config.pretrain.projection_dim=16",
                 "--config.checkpoint_every=20", "--noevaluate"]
    command = [sys.executable, str(ROOT / "experiments" / "pretrain.py"),
               f"--config={ROOT / 'experiments' / 'configs' / 'pretrain_fmnist.py'}"]
    reference = subprocess.run(command + [f"--workdir={tmp_path / 'ref'}"] + overrides,
                               capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr[-2000:]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(command + [f"--workdir={killed}"] + overrides,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if list(killed.glob("*/progress.msgpack")):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before a checkpoint; use more steps"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    [entry] = list(killed.iterdir())
    assert not (entry / "meta.json").exists()                 # nothing half-finished
    resumed = subprocess.run(command + [f"--workdir={killed}"] + overrides,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    meta = json.loads((entry / "meta.json").read_text())
    assert 0 < meta["resumed_from_step"] < steps
    [reference_entry] = list((tmp_path / "ref").iterdir())
    assert reference_entry.name == entry.name
    assert (entry / "encoder.msgpack").read_bytes() == (
        reference_entry / "encoder.msgpack").read_bytes()


# -- fine-tuning from it ------------------------------------------------------------

def test_fine_tuning_starts_from_exactly_the_cached_weights_with_a_fresh_head(toy, tmp_path):
    from npc_jax import train
    from npc_jax.models import CLASSIFIER

    _, dataset = toy
    model = _tiny_model()
    cached = pretraining.pretrain(model, TINY, dataset, tmp_path, log=lambda _: None)
    reloaded = pretraining.load_pretrained(cached.path, model, dataset).variables
    config = train.TrainConfig(steps=2, batch_size=4, mu=1)
    key = jax.random.PRNGKey(5)
    state = train.init_state(model, config, key, len(dataset.x_train), init_variables=reloaded)
    fresh = model.init(key)
    for name, params in state.params.items():
        expected = fresh["params"][name] if name == CLASSIFIER else reloaded["params"][name]
        for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(expected)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree_util.tree_leaves(state.batch_stats),
                    jax.tree_util.tree_leaves(reloaded["batch_stats"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="do not fit this network"):
        train.init_state(get_model("cnn", 4), config, key, 8, init_variables=reloaded)


def _pretrained_run_config(data_path, cache):
    """The toy run, one round of passive, fine-tuned from a 10-step pretraining."""
    config = toy_config.get_config()
    config.update({"dataset": f"npz:{data_path}", "strategies": "passive", "rounds": 1,
                   "init": "pretrained", "pretrain_cache": str(cache),
                   "pretrain": {**dataclasses.asdict(dataclasses.replace(TINY, steps=10)),
                                "crop_scale": [0.2, 1.0]}})
    return config


def test_the_loop_fine_tunes_from_the_named_pretraining(toy, tmp_path):
    from npc_jax import loop

    path, _ = toy
    config = _pretrained_run_config(path, tmp_path / "cache")
    scratch = toy_config.get_config()
    scratch.update({"dataset": f"npz:{path}", "strategies": "passive", "rounds": 1})
    assert (config_lib.RunSettings.from_config(config).config_hash
            != config_lib.RunSettings.from_config(scratch).config_hash)
    moved = config.copy_and_resolve_references()
    moved.pretrain_cache = str(tmp_path / "elsewhere")          # a location, not a recipe
    assert (config_lib.RunSettings.from_config(moved).config_hash
            == config_lib.RunSettings.from_config(config).config_hash)
    got = loop.run(config, tmp_path / "run", progress=False)
    [entry] = list((tmp_path / "cache").iterdir())
    assert {r.pretraining.key for r in got} == {entry.name}
    from_scratch = loop.run(scratch, tmp_path / "scratch", progress=False)
    assert from_scratch[0].pretraining is None
    assert got[0].test_accuracy != from_scratch[0].test_accuracy or (
        got[0].train_metrics != from_scratch[0].train_metrics)


def test_representation_quality_rows_and_baselines(toy):
    _, dataset = toy
    model = _tiny_model()
    variables = {"random init": jax.device_get(model.init(jax.random.PRNGKey(0)))}
    quality = pretraining.evaluate_quality(model, variables, dataset, per_class=(1, 2),
                                           draws=2, validation_size=32)
    rows = {(r["representation"], r["labels_per_class"], r["split"]): r
            for r in quality["rows"]}
    assert len(rows) == 3 * 2 * 2                         # (1, 2, all) × reps × splits
    for (name, count, _), row in rows.items():
        measures = ("centroid",) if name.startswith("raw pixels") else ("knn", "linear")
        for m in measures:
            assert 0.0 <= row[m] <= 100.0
        assert np.isnan(row[f"{measures[0]}_std"]) == (count == "all")
    # Bars are told apart by their row: a PCA centroid on pixels gets them all.
    assert rows[("raw pixels, 50-d PCA", "all", "test")]["centroid"] == 100.0
    assert "| test | random init | 2 |" in pretraining.quality_markdown(quality)


def test_knn_and_linear_probe_on_separable_features():
    from npc_jax import representation as rep

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 5
    labels = np.repeat(np.arange(3), 20)
    features = centres[labels] + rng.normal(size=(60, 8))
    index = rep.draw_labeled(labels, 2, seed=0)
    assert len(index) == 6 and np.bincount(labels[index]).tolist() == [2, 2, 2]
    assert rep.knn_accuracy(features[index], labels[index], features, labels, chunk=7) == 1.0
    accuracy = rep.linear_probe_accuracy(features[index], labels[index], features, labels,
                                         mean=features.mean(0), std=features.std(0))
    assert accuracy == 1.0
    # Labels that contradict the features: the kNN follows its neighbours.
    assert rep.knn_accuracy(features[index], (labels[index] + 1) % 3, features, labels) == 0.0


def test_pca_projection_and_nearest_centroid_against_plain_references():
    from npc_jax import representation as rep

    rng = np.random.default_rng(2)
    pixels = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12))
    project = rep.pca_projection(pixels, dims=3, fit_samples=300)
    centred = pixels - pixels.mean(0)
    _, vectors = np.linalg.eigh(centred.T @ centred)
    reference = centred @ vectors[:, ::-1][:, :3]             # top 3 principal axes
    got = project(pixels)
    np.testing.assert_allclose(np.abs(got), np.abs(reference), rtol=1e-6, atol=1e-8)
    labels = (got[:, 0] > 0).astype(int)
    centroids = np.stack([got[labels == c].mean(0) for c in (0, 1)])
    nearest = ((got[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert rep.nearest_centroid_accuracy(got, labels, got, labels) == np.mean(nearest == labels)


@pytest.mark.parametrize("network", ["pretrained", "random"])
def test_a_cold_start_queries_from_the_named_network(toy, tmp_path, network):
    """initial_labels=0 in a pretrained run: the round-0 (zero-shot) network is the
    pretrained encoder with a fresh head, or the random initialisation with
    cold_start_network='random'; the training after it fine-tunes either way."""
    import flax.serialization

    from npc_jax import checkpoint, loop

    path, dataset = toy
    config = toy_config.get_config()
    recipe = {**dataclasses.asdict(dataclasses.replace(TINY, steps=10)), "crop_scale": [0.2, 1.0]}
    config.update({"dataset": f"npz:{path}", "strategies": "margin", "rounds": 1,
                   "initial_labels": 0, "query_size": 8, "init": "pretrained",
                   "pretrain_cache": str(tmp_path / "cache"), "pretrain": recipe,
                   "cold_start_network": network})
    got = sorted(loop.run(config, tmp_path / "run", progress=False), key=lambda r: r.round)
    assert [r.num_labels for r in got] == [0, 8]
    assert got[1].pretraining is not None
    settings = config_lib.RunSettings.from_config(config)
    model = get_model(settings.model, dataset.num_classes, dataset.image_shape)
    template = jax.device_get(model.init(jax.random.PRNGKey(0)))
    stem = checkpoint.round0_stem(tmp_path / "run", 0)
    round0 = flax.serialization.from_bytes(template, stem.with_suffix(".msgpack").read_bytes())
    [entry] = list((tmp_path / "cache").iterdir())
    pretrained = pretraining.load_pretrained(entry, model, dataset).variables
    same = [np.array_equal(a, b) for a, b in zip(
        jax.tree_util.tree_leaves(round0["params"]["conv0"]),
        jax.tree_util.tree_leaves(pretrained["params"]["conv0"]))]
    assert all(same) == (network == "pretrained")
    scratch = toy_config.get_config()
    scratch.update({"dataset": f"npz:{path}", "initial_labels": 0,
                    "cold_start_network": "random"})
    with pytest.raises(ValueError, match="cold_start_network='random' applies"):
        config_lib.RunSettings.from_config(scratch)


def test_the_loop_trains_on_labels_propagated_over_the_pretrained_embedding(toy, tmp_path):
    """pseudo_labels="propagated": the loop builds the pool's kNN graph from the
    pretraining once and every training reads its propagated labels; without a
    pretraining the config is refused with the fix."""
    from npc_jax import loop
    from npc_jax.ssl import propagation

    path, dataset = toy
    config = _pretrained_run_config(path, tmp_path / "cache")
    config.train.pseudo_labels = "propagated"
    config.train.propagation_neighbours = 5
    built = []
    real_graph = propagation.knn_graph

    def counting_graph(*args, **kwargs):
        built.append(args[0].shape)
        return real_graph(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(propagation, "knn_graph", counting_graph)
        got = loop.run(config, tmp_path / "run", progress=False)
    assert len(got) == 2 and all(np.isfinite(r.test_accuracy) for r in got)
    [shape] = built                                  # once per run,
    assert shape[0] == len(dataset.y_train)          # over the pool's embedding
    assert got[0].train_metrics["mask_rate"] > 0     # the certainty weights were used
    scratch = config.copy_and_resolve_references()
    scratch.init = "scratch"
    with pytest.raises(ValueError, match="init='pretrained'"):
        loop.run(scratch, tmp_path / "scratch", progress=False)
