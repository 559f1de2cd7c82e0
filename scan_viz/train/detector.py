"""Train the scene detector from scratch on a world's train split, resumably, within a time budget.

``out_dir`` after each epoch::

    detector.safetensors, detector.json   the latest weights, loadable with load_detector(out_dir)
    train_state/                          everything a resume needs (weights, AdamW moments, progress), also
                                          saved every 10 min within an epoch; swapped in atomically, so a crash
                                          leaves the previous checkpoint

The learning rate warms up linearly, then follows a cosine to zero over the run's *progress*: the larger of
the fraction of steps done and, with ``max_minutes``, the fraction of the time budget used. A run cut short by
its budget therefore still ends annealed, with a usable detector.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from scan_viz.detect.data import DetectionDataset, collate, load_split
from scan_viz.detect.evaluate import evaluate_detector
from scan_viz.detect.model import (DetectorConfig, SceneDetector, build_detector, default_config, load_detector,
                                   save_detector)
from scan_viz.errors import ScanVizError
from scan_viz.io import atomic_path, write_dir_atomic

STATE_DIR = "train_state"
WARMUP_STEPS = 300
WEIGHT_DECAY = 1e-4
GRAD_CLIP = 10.0
LOG_EVERY_S = 30.0
CHECKPOINT_EVERY_S = 600.0  # within an epoch too: a 20,000-image epoch takes ~20 min on 2 cores
# arguments a resumed run must share with the run it continues (epochs and the budget may change)
FIXED_ARGS = ("batch_size", "lr", "seed")


def learning_rate(base_lr: float, step: int, progress: float, warmup_steps: int) -> float:
    """Linear warmup over ``warmup_steps``, then cosine from ``base_lr`` to 0 as ``progress`` goes 0 -> 1."""
    warm = min(1.0, (step + 1) / max(warmup_steps, 1))
    return base_lr * warm * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def _save_state(out_dir: Path, model: SceneDetector, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Write the resume state (weights, optimizer moments, progress JSON) as one atomic folder swap."""
    def write(tmp: Path) -> None:
        save_detector(model, tmp)
        tensors: dict[str, torch.Tensor] = {}
        steps: dict[str, float] = {}
        names = {id(p): n for n, p in model.named_parameters()}
        for group in optimizer.param_groups:
            for p in group["params"]:
                moments = optimizer.state.get(p)
                if moments:
                    tensors[f"{names[id(p)]}.exp_avg"] = moments["exp_avg"].contiguous()
                    tensors[f"{names[id(p)]}.exp_avg_sq"] = moments["exp_avg_sq"].contiguous()
                    steps[names[id(p)]] = float(moments["step"])
        with atomic_path(tmp / "optimizer.safetensors") as path:
            save_file(tensors, str(path))
        (tmp / "state.json").write_text(json.dumps({**state, "optimizer_steps": steps}, indent=1) + "\n",
                                        encoding="utf-8")

    write_dir_atomic(out_dir / STATE_DIR, write)


def _load_state(out_dir: Path, optimizer_for: Callable[[SceneDetector], torch.optim.Optimizer]
                ) -> tuple[SceneDetector, torch.optim.Optimizer, dict[str, Any]] | None:
    """The model, optimizer and progress saved in ``out_dir/train_state``, or None when there is none."""
    state_dir = out_dir / STATE_DIR
    if not (state_dir / "state.json").is_file():
        return None
    try:
        state = json.loads((state_dir / "state.json").read_text(encoding="utf-8"))
        moments = load_file(str(state_dir / "optimizer.safetensors"))
    except (OSError, ValueError, SafetensorError) as exc:
        raise ScanVizError(f"cannot resume from {state_dir} ({exc}); delete that folder to start over") from None
    model = load_detector(state_dir).train()
    optimizer = optimizer_for(model)
    params = dict(model.named_parameters())
    for name, step in state.pop("optimizer_steps", {}).items():
        optimizer.state[params[name]] = {"step": torch.tensor(step), "exp_avg": moments[f"{name}.exp_avg"],
                                         "exp_avg_sq": moments[f"{name}.exp_avg_sq"]}
    return model, optimizer, state


def _adamw(lr: float) -> Callable[[SceneDetector], torch.optim.Optimizer]:
    """AdamW without weight decay on norms and biases (decaying BN scales only fights the normalisation)."""
    def make(model: SceneDetector) -> torch.optim.Optimizer:
        decay = [p for n, p in model.named_parameters() if p.ndim > 1]
        no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
        return torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    return make


def train_detector(world_dir: str | Path, out_dir: str | Path, epochs: int = 3, batch_size: int = 8,
                   lr: float = 1e-3, seed: int = 0, workers: int = 1, max_minutes: float | None = None,
                   log: Callable[[str], None] = print, config: DetectorConfig | None = None,
                   eval_images: int = 200, max_train_images: int | None = None) -> dict[str, Any]:
    """Train a detector on ``world_dir``'s train split and save it to ``out_dir``; resumes a run found there.

    ``workers`` DataLoader processes decode and flip the images; ``max_minutes`` bounds the training time (the
    schedule anneals to fit, see the module docstring); after each epoch the first ``eval_images`` dev images
    are scored (mAP@0.5) when the world has a dev split (0 turns it off). ``config`` overrides the default
    architecture of a new run. Returns the summary saved under ``"training"`` in ``detector.json``:
    epochs done, steps, minutes, per-epoch mean losses and dev mAP.
    """
    world_dir, out_dir = Path(world_dir), Path(out_dir)
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ScanVizError(f"{name} must be a positive integer, got {value!r}")
    if not lr > 0 or (max_minutes is not None and not max_minutes > 0) or workers < 0:
        raise ScanVizError(f"lr and max_minutes must be positive and workers >= 0; got lr={lr}, "
                           f"max_minutes={max_minutes}, workers={workers}")
    torch.set_flush_denormal(True)  # AdamW's second moments underflow into denormals, which are ~100x slower
    args = {"batch_size": batch_size, "lr": lr, "seed": seed}
    resumed = _load_state(out_dir, _adamw(lr))
    if resumed is not None:
        model, optimizer, state = resumed
        changed = [f"{k}={state['args'].get(k)}" for k in FIXED_ARGS if state["args"].get(k) != args[k]]
        if changed:
            raise ScanVizError(f"{out_dir} holds a run with {', '.join(changed)}; resume with the same values or "
                               "choose a new --out")
        log(f"resuming {out_dir} ({model.config.backbone}): {state['epochs_done']} epoch(s) and "
            f"{state['epoch_step']} step(s) done, {state['seconds'] / 60:.1f} min trained")
    else:
        torch.manual_seed(seed)
        model = build_detector(config or default_config()).train()
        optimizer = _adamw(lr)(model)
        state = {"args": args, "epochs_done": 0, "epoch_step": 0, "epoch_sums": {}, "step": 0, "seconds": 0.0,
                 "history": []}
    images = load_split(world_dir, "train", model.config)[:max_train_images]
    has_dev = (world_dir / "dev_annotations.json").is_file() and eval_images > 0
    steps_per_epoch = len(images) // batch_size
    if steps_per_epoch == 0:
        raise ScanVizError(f"the train split has {len(images)} images, fewer than one batch of {batch_size}; "
                           "generate more images or lower --batch-size")
    total_steps = epochs * steps_per_epoch
    warmup_steps = min(WARMUP_STEPS, max(1, total_steps // 10))
    budget_s = None if max_minutes is None else 60.0 * max_minutes
    n_params = sum(p.numel() for p in model.parameters())
    log(f"detector {model.config.backbone}: {n_params / 1e6:.2f}M parameters, img_dim {model.config.img_dim}; "
        f"{len(images)} train images, {steps_per_epoch} steps/epoch x {epochs} epochs, batch {batch_size}, "
        f"lr {lr:g}" + (f", budget {max_minutes:g} min" if budget_s else ""))

    def progress() -> float:
        done = state["step"] / total_steps
        return max(done, state["seconds"] / budget_s) if budget_s else done

    dataset = DetectionDataset(images, flip=True)
    model.train()
    while state["epochs_done"] < epochs and progress() < 1.0:
        epoch, first = state["epochs_done"], state["epoch_step"]
        # the epoch's batches come from its own seed, so a resume mid-epoch skips exactly the batches done
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed + epoch))
        batches = order[:steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size).tolist()
        torch.manual_seed(seed + 1000 * (epoch + 1) + first)  # RoI and anchor sampling
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches[first:], collate_fn=collate,
                                             num_workers=workers, generator=torch.Generator().manual_seed(seed + epoch))
        sums: dict[str, float] = state["epoch_sums"]
        last_log = last_save = tick = time.perf_counter()
        window_images = 0
        for images_u8, targets in loader:
            current_lr = learning_rate(lr, state["step"], progress(), warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = current_lr
            losses = model([im.float().div_(255.0) for im in images_u8], targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise ScanVizError(f"the training loss became {loss.item()} at step {state['step']}; lower --lr "
                                   "(e.g. by 2x) and start again in a new --out")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            optimizer.step()
            now = time.perf_counter()
            state["seconds"] += now - tick
            tick = now
            state["step"] += 1
            state["epoch_step"] += 1
            n_steps = state["epoch_step"]
            window_images += len(images_u8)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v.item()
            sums["loss"] = sums.get("loss", 0.0) + loss.item()
            if now - last_log >= LOG_EVERY_S or n_steps == steps_per_epoch:
                speed = window_images / (now - last_log)
                left = (total_steps - state["step"]) * batch_size / max(speed, 1e-9)
                if budget_s:
                    left = min(left, budget_s - state["seconds"])
                parts = " ".join(f"{k.removeprefix('loss_')} {v / n_steps:.3f}" for k, v in sums.items() if k != "loss")
                log(f"epoch {epoch + 1}/{epochs} step {n_steps}/{steps_per_epoch} loss {sums['loss'] / n_steps:.3f} "
                    f"({parts}) lr {current_lr:.2e} {speed:.1f} images/s, {max(left, 0) / 60:.1f} min left")
                last_log, window_images = now, 0
            if budget_s and state["seconds"] >= budget_s:
                log(f"time budget of {max_minutes:g} min reached at step {n_steps} of epoch {epoch + 1}; this "
                    "epoch counts as done")
                break
            if now - last_save >= CHECKPOINT_EVERY_S and n_steps < steps_per_epoch:
                _save_state(out_dir, model, optimizer, state)
                log(f"checkpoint at step {n_steps} of epoch {epoch + 1}")
                last_save = time.perf_counter()
                tick += last_save - now  # saving is not training time
        n_steps = max(state["epoch_step"], 1)
        record: dict[str, Any] = {"epoch": epoch + 1, "steps": state["epoch_step"],
                                  **{k: round(v / n_steps, 4) for k, v in sums.items()}}
        if has_dev:
            result = evaluate_detector(model, world_dir, "dev", max_images=eval_images)
            record["dev_map50"] = round(result["map50"], 4)
            log(f"epoch {epoch + 1}: dev mAP@0.5 {result['map50']:.3f} (objects {result['map50_objects']:.3f}, "
                f"stuff {result['map50_stuff']:.3f}) on {result['n_images']} images")
            model.train()
        state["history"].append(record)
        state.update(epochs_done=epoch + 1, epoch_step=0, epoch_sums={})
        _save_state(out_dir, model, optimizer, state)
        save_detector(model, out_dir, extra=_summary(state))
        log(f"saved epoch {epoch + 1} to {out_dir}")
    if state["epochs_done"] == 0 or not (out_dir / "detector.json").is_file():
        save_detector(model, out_dir, extra=_summary(state))
    return _summary(state)


def _summary(state: dict[str, Any]) -> dict[str, Any]:
    """The JSON-ready training summary stored in ``detector.json``."""
    return {"epochs_done": state["epochs_done"], "steps": state["step"], "minutes": round(state["seconds"] / 60, 2),
            "args": state["args"], "history": state["history"]}
