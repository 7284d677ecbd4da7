"""Running a self-supervised pretraining once, and finding it again: the cache.

A pretraining is identified by what determines its weights: the dataset's
content fingerprint, the model (name, input shape, classes, options) and the
`PretrainConfig`, plus the seed. Their hash is the cache key; the result lives
in ``cache_dir/<key>/``:

    meta.json           written last: its presence means "complete"
    encoder.msgpack     the network's variables after pretraining
    progress.msgpack    the full training state, every `checkpoint_every` steps
                        (removed when complete); a killed run resumes from it
    history.jsonl       loss and throughput per chunk of steps

`pretrain(...)` returns the cached variables when the key is complete (a
hit), else trains (resuming from ``progress.msgpack`` if present) and stores
them (a miss); it says which. `load_pretrained(path, model, dataset)` reads
a finished entry and refuses one made for other data or another network.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path

import flax.serialization
import jax
import numpy as np

from npc_jax import storage
from npc_jax.data import DataError, Dataset
from npc_jax.models import Model
from npc_jax.ssl import pretrain as ssl_pretrain

__all__ = ["PretrainResult", "cache_key", "config_from_dict", "evaluate_quality", "load_pretrained",
           "pretrain", "quality_markdown", "run_from_config"]

_META, _WEIGHTS, _PROGRESS, _HISTORY = ("meta.json", "encoder.msgpack", "progress.msgpack",
                                        "history.jsonl")


@dataclasses.dataclass(frozen=True)
class PretrainResult:
    """A finished pretraining: its variables, where it is cached, and how it went."""

    variables: dict
    path: Path
    meta: dict
    hit: bool


def _model_identity(model: Model) -> dict:
    module = {f.name: getattr(model.module, f.name) for f in dataclasses.fields(model.module)
              if f.name not in ("parent", "name")}
    return {"name": model.name, "input_shape": list(model.input_shape),
            "num_classes": model.num_classes,
            "module": json.loads(json.dumps(module, default=str))}


# Recipe fields added after pretrainings were cached: at these values they stay out of
# the key, so those entries (the L2 pretraining) are still hits.
_KEY_NEUTRAL_DEFAULTS = {"randaugment_ops": 0, "randaugment_probability": 0.5}


def cache_key(dataset_fingerprint: str, model: Model, config: ssl_pretrain.PretrainConfig,
              seed: int) -> str:
    """16 hex digits from everything that determines the pretrained weights, and
    nothing else (not the cache path, the progress bar or `checkpoint_every`)."""
    recipe = {k: v for k, v in dataclasses.asdict(config).items()
              if not (k in _KEY_NEUTRAL_DEFAULTS and v == _KEY_NEUTRAL_DEFAULTS[k])}
    identity = {"dataset_fingerprint": dataset_fingerprint, "model": _model_identity(model),
                "config": recipe, "seed": int(seed)}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _template(model: Model, config: ssl_pretrain.PretrainConfig):
    return jax.device_get(ssl_pretrain.init_state(model, config, jax.random.PRNGKey(0)))


def load_pretrained(path: str | os.PathLike, model: Model, dataset: Dataset) -> PretrainResult:
    """A finished cache entry, checked against the network and data it will serve.

    Raises:
      DataError: no finished pretraining at `path`; one made on other data, for
        another model, input shape or class count; a damaged file.
    """
    path = Path(path)
    meta_path = path / _META
    if not meta_path.exists():
        raise DataError(f"{path} holds no finished pretraining ({_META} is missing); run "
                        "experiments/pretrain.py, or name the pretraining in the config so "
                        "that the run makes it.")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{meta_path} is damaged ({error}); delete {path} to pretrain "
                        "again.") from None
    wanted = {"dataset_fingerprint": dataset.fingerprint(), **_model_identity(model)}
    found = {"dataset_fingerprint": meta.get("dataset_fingerprint"), **meta.get("model", {})}
    differences = [f"{k}: {found.get(k)!r} (pretrained) vs {wanted[k]!r} (this run)"
                   for k in wanted if found.get(k) != wanted[k]]
    if differences:
        raise DataError(f"The pretraining at {path} was made for another network or data: "
                        f"{'; '.join(differences)}. Pretrain for this dataset and model "
                        "(experiments/pretrain.py) or name the matching one.")
    template = jax.device_get(model.init(jax.random.PRNGKey(0)))
    variables = storage.read_flax(path / _WEIGHTS, template,
                                  fix=f"delete {path} to pretrain again.")
    return PretrainResult(variables, path, meta, hit=True)


def pretrain(model: Model, config: ssl_pretrain.PretrainConfig, dataset: Dataset,
             cache_dir: str | os.PathLike, *, seed: int = 0, checkpoint_every: int = 200,
             chunk_steps: int = 20, progress: bool = False,
             log=print) -> PretrainResult:
    """The pretraining of `model` on `dataset`'s pool (its labels unused), cached.

    Args:
      model: the network that will fine-tune.
      config: the recipe.
      dataset: its ``x_train`` is the unlabeled pool.
      cache_dir: the cache's root (created if needed; must be writable on a miss).
      seed: the key of the initialisation, the draws and the views.
      checkpoint_every: steps between resumable checkpoints.
      chunk_steps: steps between metric reads (progress and history).
      progress: a tqdm bar with the loss and images per second.
      log: where the hit / miss line goes.

    Returns:
      A `PretrainResult`; ``hit`` says whether it came from the cache.
    """
    key = cache_key(dataset.fingerprint(), model, config, seed)
    path = Path(cache_dir) / key
    if (path / _META).exists():
        result = load_pretrained(path, model, dataset)
        log(f"pretraining cache hit: {path}")
        return result
    storage.check_writable_dir(path, what="the pretraining cache directory")
    log(f"pretraining cache miss: {path} (training {config.method}, {config.steps} steps)")
    # Waits for a process training the same entry (grid workers of one seed set
    # start together), then loads what it wrote.
    with storage.WorkdirLock(path, wait=True):
        if (path / _META).exists():   # another process finished it meanwhile
            return load_pretrained(path, model, dataset)
        return _train(model, config, dataset, path, seed=seed, checkpoint_every=checkpoint_every,
                      chunk_steps=chunk_steps, progress=progress)


def _train(model, config, dataset, path: Path, *, seed, checkpoint_every, chunk_steps,
           progress) -> PretrainResult:
    """Trains (or resumes) into `path`; writes the weights, then meta.json last."""
    init_key, steps_key = jax.random.split(jax.random.PRNGKey(seed))
    if (path / _PROGRESS).exists():
        state = storage.read_flax(path / _PROGRESS, _template(model, config),
                                  fix=f"delete {path} to pretrain again.")
        state = jax.tree_util.tree_map(jax.numpy.asarray, state)
    else:
        state = ssl_pretrain.init_state(model, config, init_key)
    images = jax.device_put(dataset.x_train)
    history = storage.JsonlLog(path / _HISTORY)
    bar = None
    start_step = int(state.step)
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=config.steps, initial=start_step, desc=f"pretrain {config.method}",
                   unit="step")
    started = time.perf_counter()
    step = start_step
    while step < config.steps:
        chunk_end = min(config.steps, step + chunk_steps,
                        (step // checkpoint_every + 1) * checkpoint_every)
        chunk_start_time = time.perf_counter()
        metrics = []
        for _ in range(step, chunk_end):
            state, step_metrics = ssl_pretrain.jitted_step(state, images, steps_key,
                                                           model=model, config=config)
            metrics.append(step_metrics)
        metrics = {k: float(np.mean([m[k] for m in jax.device_get(metrics)]))
                   for k in metrics[0]}
        if not np.isfinite(metrics["loss"]):
            raise FloatingPointError(f"Pretraining diverged at step {chunk_end}: loss = "
                                     f"{metrics['loss']}; lower PretrainConfig.lr.")
        throughput = (chunk_end - step) * config.batch_size * 2 / (
            time.perf_counter() - chunk_start_time)
        history.append({"step": chunk_end, **metrics, "views_per_second": throughput})
        if bar is not None:
            bar.update(chunk_end - step)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", views_per_s=f"{throughput:.0f}")
        step = chunk_end
        if step % checkpoint_every == 0 and step < config.steps:
            storage.write_atomically(path / _PROGRESS,
                                     flax.serialization.to_bytes(jax.device_get(state)))
    if bar is not None:
        bar.close()
    variables = jax.device_get(state.encoder_variables)
    storage.write_atomically(path / _WEIGHTS, flax.serialization.to_bytes(variables))
    meta = {"dataset": dataset.name, "dataset_fingerprint": dataset.fingerprint(),
            "model": _model_identity(model), "config": dataclasses.asdict(config),
            "seed": int(seed), "steps": config.steps,
            "seconds_this_process": time.perf_counter() - started,
            "resumed_from_step": start_step}
    storage.write_atomically(path / _META, json.dumps(meta, indent=1).encode())
    (path / _PROGRESS).unlink(missing_ok=True)
    return PretrainResult(variables, path, meta, hit=False)


# -- from a config file, and the quality report ----------------------------------------


def config_from_dict(fields) -> ssl_pretrain.PretrainConfig:
    """A `PretrainConfig` from a config's ``pretrain`` section (unknown fields refused)."""
    fields = dict(fields.to_dict() if hasattr(fields, "to_dict") else fields)
    known = {f.name for f in dataclasses.fields(ssl_pretrain.PretrainConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"config.pretrain has unknown field(s) {unknown}; known: "
                         f"{sorted(known)}.")
    if "crop_scale" in fields:
        fields["crop_scale"] = tuple(fields["crop_scale"])
    return ssl_pretrain.PretrainConfig(**fields)


def run_from_config(config, cache_dir, *, progress: bool = False, evaluate: bool = True):
    """`pretrain` for an experiments/configs/pretrain_*.py config, then (optionally)
    `evaluate_quality`, written to ``<entry>/quality.json``. Returns (result, quality)."""
    from npc_jax.data import load_dataset
    from npc_jax.models import get_model

    recipe = config_from_dict(config.pretrain)
    dataset = load_dataset(config.dataset, data_dir=config.get("data_dir") or None)
    model = get_model(config.model, dataset.num_classes, dataset.image_shape)
    result = pretrain(model, recipe, dataset, cache_dir, seed=int(config.seed),
                      checkpoint_every=int(config.checkpoint_every), progress=progress)
    if not evaluate:
        return result, None
    evaluation = config.evaluation
    random_init = jax.device_get(model.init(jax.random.PRNGKey(int(config.seed))))
    quality = evaluate_quality(
        model, {"pretrained": result.variables, "random init": random_init}, dataset,
        per_class=tuple(evaluation.per_class), draws=int(evaluation.draws),
        validation_size=int(evaluation.validation_size))
    quality["pretraining"] = {"key": result.path.name, "method": recipe.method,
                              "steps": recipe.steps, "hit": result.hit,
                              "seconds": result.meta.get("seconds_this_process")}
    storage.write_atomically(result.path / "quality.json",
                             json.dumps(quality, indent=1).encode())
    return result, quality


def embed_pool(config, result: PretrainResult) -> np.ndarray:
    """(N, d) float32: the pretrained network's features of the config's whole training
    split (a run's pool when it carves no validation split), e.g. for
    `report.acquired_typicality`."""
    from npc_jax import representation as rep
    from npc_jax.data import load_dataset
    from npc_jax.models import get_model

    dataset = load_dataset(config.dataset, data_dir=config.get("data_dir") or None)
    model = get_model(config.model, dataset.num_classes, dataset.image_shape)
    return np.asarray(rep.embed(model, result.variables, dataset.x_train), np.float32)


def evaluate_quality(model: Model, variables: dict, dataset: Dataset, *,
                     per_class=(1, 5, 10), draws: int = 5,
                     validation_size: int = 5000) -> dict:
    """kNN and linear-probe accuracy of each representation, and the raw-pixel
    PCA centroid baseline, with L labeled pool examples per class (and all).

    The validation split (carved from the pool, stratified) is for choosing
    methods; the test split is reported for the record. Each L > 0 is averaged
    over `draws` seeded draws of the labeled examples.

    Returns:
      {"rows": [{"representation", "labels_per_class", "split", and "knn",
                 "linear" (networks) or "centroid" (pixels), each with "<name>_std"}],
       "validation_size", "draws"} (percent).
    """
    from npc_jax import representation as rep
    from npc_jax.data import carve_validation

    pool, x_val, y_val = carve_validation(dataset, validation_size)
    splits = {"validation": (x_val, y_val), "test": (dataset.x_test, dataset.y_test)}
    embedded = {}
    for name, v in variables.items():
        embedded[name] = {"pool": rep.embed(model, v, pool.x_train),
                          **{s: rep.embed(model, v, x) for s, (x, _) in splits.items()}}
    # The raw-pixel baseline's PCA is label-free: fitted once, for every draw.
    project = rep.pca_projection(rep.pixels(pool.x_train))
    projected = {"pool": project(rep.pixels(pool.x_train)),
                 **{s: project(rep.pixels(x)) for s, (x, _) in splits.items()}}
    rows = []
    for count in (*per_class, None):
        labeled_draws = [rep.draw_labeled(pool.y_train, count, seed) for seed in
                         range(draws if count else 1)]
        for split, (_, y_split) in splits.items():
            for name, features in embedded.items():
                mean, std = features["pool"].mean(0), features["pool"].std(0)
                knn, linear = [], []
                for index in labeled_draws:
                    args = (features["pool"][index], pool.y_train[index], features[split],
                            y_split)
                    chunk = max(1, 2 ** 24 // len(index))
                    knn.append(rep.knn_accuracy(*args, chunk=chunk))
                    linear.append(rep.linear_probe_accuracy(*args, mean=mean, std=std))
                rows.append(_row(name, count, split, knn=knn, linear=linear))
            centroid = [rep.nearest_centroid_accuracy(projected["pool"][index],
                                                      pool.y_train[index], projected[split],
                                                      y_split)
                        for index in labeled_draws]
            rows.append(_row("raw pixels, 50-d PCA", count, split, centroid=centroid))
    return {"rows": rows, "validation_size": int(len(y_val)), "draws": int(draws)}


def _row(name, count, split, **accuracies):
    """One result row: for each named list of accuracies, its mean and sample std in %."""
    row = {"representation": name, "labels_per_class": count or "all", "split": split}
    for measure, values in accuracies.items():
        row[measure] = 100 * float(np.mean(values))
        row[f"{measure}_std"] = (100 * float(np.std(values, ddof=1)) if len(values) > 1
                                 else float("nan"))
    return row


def quality_markdown(quality: dict) -> str:
    """The quality rows as a markdown table (accuracy %, mean ± std over draws)."""
    def cell(row, measure):
        if measure not in row:
            return "—"
        mean, std = row[measure], row[f"{measure}_std"]
        return f"{mean:.1f}" + ("" if np.isnan(std) else f" ± {std:.1f}")

    lines = ["| split | representation | labels/class | kNN | linear probe | nearest centroid |",
             "|---|---|---:|---:|---:|---:|"]
    for r in quality["rows"]:
        lines.append(f"| {r['split']} | {r['representation']} | {r['labels_per_class']} | "
                     f"{cell(r, 'knn')} | {cell(r, 'linear')} | {cell(r, 'centroid')} |")
    return "\n".join(lines)
