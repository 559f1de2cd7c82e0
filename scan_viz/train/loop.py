"""SCAN's training loop, the official recipe, for any matching head (``config.head``: SCAN, CHAN, CAAN-style):
hinge triplet loss on the batch's score matrix, Adam, step decay.

Per epoch: ``lr = learning_rate * 0.1 ** (epoch // lr_update)``; for each batch of (image, caption) pairs the
encoders embed both sides, the matching head scores every image of the batch against every caption, and
:func:`~scan_viz.train.loss.contrastive_loss` (margin, ``max_violation``, which ``max_violation_warmup`` can hold off
for the first epochs) is minimised with Adam over both encoders' parameters (no weight decay), gradients clipped to norm ``grad_clip``. Then the dev split is scored with the
scoring engine and the model with the best rsum is kept.

A run folder holds:

* ``model_best.pth.tar`` / ``checkpoint.pth.tar``: the official checkpoint format (best / last epoch);
* ``best/``: the project's model folder (config.json, model.safetensors, vocab.json) of the best epoch;
* ``vocab.json``: the vocabulary the run trains with;
* ``log.jsonl``: one JSON record per epoch (loss, lr, dev recalls, rsum);
* ``last.pt``: the resumable state (weights, optimizer, counters, RNG), plain tensors only.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from scan_viz.errors import ScanVizError
from scan_viz.evaluation.metrics import RetrievalResult, evaluate
from scan_viz.heads import MatchingHead, create_head
from scan_viz.heads.engine import score_matrix
from scan_viz.model.checkpoint import VOCAB_FILE
from scan_viz.model.config import ScanConfig
from scan_viz.model.encoders import ImageEncoder, TextEncoder, build_encoders
from scan_viz.regions.store import PrecompSplit, load_precomp
from scan_viz.text import Vocabulary
from scan_viz.train.dataset import CaptionImagePairs, EncodedCaptionIds, EpochShuffle, collate_pairs
from scan_viz.train.loss import contrastive_loss
from scan_viz.train.options import TrainOptions
from scan_viz.train.progress import EpochProgress, scoring_progress
from scan_viz.train.state import (LAST_STATE, append_jsonl, atomic_path, load_last, read_log, rng_state, save_last,
                                  set_rng_state, truncate_log, write_dir_atomic)

BEST_CHECKPOINT = "model_best.pth.tar"
LAST_CHECKPOINT = "checkpoint.pth.tar"
BEST_MODEL_DIR = "best"
LOG_FILE = "log.jsonl"
#: config fields a resumed run may change: more (or fewer) epochs, and when the lr drops (the schedule of the
#: epochs still to come; log.jsonl records each epoch's lr)
RESUMABLE_CHANGES = ("num_epochs", "lr_update")
#: above this share of unknown training words the vocabulary most likely belongs to another dataset
UNKNOWN_WARNING = 0.2


@dataclasses.dataclass
class TrainResult:
    """Where a run's outputs are and how it went. ``history``: the log.jsonl records, one per epoch."""

    out_dir: Path
    epochs: int
    best_epoch: int
    best_rsum: float
    history: list[dict]

    @property
    def model_dir(self) -> Path:
        """The project's model folder of the best epoch (load it with ``scan_viz.load_model``)."""
        return self.out_dir / BEST_MODEL_DIR


@dataclasses.dataclass
class _Run:
    """The mutable state of a run between epochs: what ``last.pt`` stores."""

    epoch: int = 0          # epochs completed
    eiters: int = 0         # optimisation steps taken (the official Eiters)
    best_rsum: float = -math.inf
    best_epoch: int = 0


def learning_rate(config: ScanConfig, epoch: int) -> float:
    """The official step decay: ``learning_rate * 0.1 ** (epoch // lr_update)``, epoch 0-based."""
    return config.learning_rate * 0.1 ** (epoch // config.lr_update)


def train(config: ScanConfig, data_dir: str | Path, out_dir: str | Path,
          options: TrainOptions | None = None) -> TrainResult:
    """Train SCAN on a precomputed split and write the run folder ``out_dir`` (see the module docstring).

    ``config`` carries the model and optimisation hyperparameters (``img_dim`` must match the features;
    ``vocab_size`` is set from the vocabulary). With ``options.resume`` the run in ``out_dir`` continues from its
    ``last.pt`` at the next epoch; with ``workers=0`` the result is bit-identical to an uninterrupted run.
    """
    options = options or TrainOptions()
    options.validate()
    _check_training_config(config)
    head = create_head(None, config)  # an unknown head or setting is refused before any data is read
    # the head's own settings travel with the model (SCAN's are config fields already)
    config = config.replace(head_params={k: v for k, v in head.settings.items() if k not in config.field_names()})
    device = _device(options.device)
    log = options.log
    data_dir = _check_data_dir(data_dir)
    out = _prepare_out_dir(Path(out_dir))

    saved = load_last(out / LAST_STATE) if options.resume else None
    if saved is None and (out / LAST_STATE).exists():
        raise ScanVizError(f"{out} already holds a training run ({LAST_STATE}); pass --resume to continue it "
                           "or choose another --out")

    train_split, dev_split = _load_splits(data_dir, options, config.img_dim)
    init = _init_model(options, config) if options.init_from is not None and saved is None else None
    if init is not None:
        # same encoders, same input features: the model's detector and domain note carry over
        config = config.replace(extra={**init.config.extra, **config.extra})
        if options.vocab is None:
            options = dataclasses.replace(options, vocab=init.vocab)
    vocab = _resolve_vocab(options, out, train_split, resuming=saved is not None)
    if config.vocab_size and config.vocab_size != len(vocab):
        raise ScanVizError(f"the vocabulary has {len(vocab)} words but config.vocab_size is {config.vocab_size}: "
                           "pass the vocab file the config was made for")
    config = config.replace(vocab_size=len(vocab))
    if saved is not None:
        _check_resume_config(saved, config, options.seed, out)

    log(f"tokenising {len(train_split.captions)} training and {len(dev_split.captions)} dev captions")
    train_caps = EncodedCaptionIds(train_split.captions, vocab, f"{data_dir}/{options.train_split}_caps.txt")
    dev_caps = EncodedCaptionIds(dev_split.captions, vocab, f"{data_dir}/{options.dev_split}_caps.txt")
    if train_caps.unknown_rate > UNKNOWN_WARNING:
        log(f"warning: {100 * train_caps.unknown_rate:.0f}% of the training words are not in the vocabulary; "
            "is it the vocab of this dataset?")

    torch.manual_seed(options.seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(options.seed)
    image_encoder, text_encoder = build_encoders(config)
    image_encoder.to(device)
    text_encoder.to(device)
    # official: the text encoder's parameters, then the image encoder's fc (its only layer)
    params = list(text_encoder.parameters()) + list(image_encoder.parameters())
    optimizer = torch.optim.Adam(params, lr=config.learning_rate)

    run = _Run()
    if init is not None:
        if init.vocab.word2idx != vocab.word2idx:
            raise ScanVizError(f"--vocab differs from the vocabulary of --init-from {options.init_from}: leave "
                               "--vocab out to train with the model's own")
        image_encoder.load_state_dict(init.image_encoder.state_dict())
        text_encoder.load_state_dict(init.text_encoder.state_dict())
        log(f"starting from the encoder weights of {options.init_from}")
    if saved is not None:
        image_encoder.load_state_dict(saved["image_state"])
        text_encoder.load_state_dict(saved["text_state"])
        optimizer.load_state_dict(saved["optimizer"])
        run = _Run(int(saved["epoch"]), int(saved["eiters"]), float(saved["best_rsum"]), int(saved["best_epoch"]))
        set_rng_state(saved["rng"])
        log(f"resuming {out} after epoch {run.epoch} (best rsum {run.best_rsum:.2f} at epoch {run.best_epoch})")
    truncate_log(out / LOG_FILE, run.epoch)

    features_path = data_dir / f"{options.train_split}_ims.npy"
    sampler = EpochShuffle(len(train_caps), options.seed)
    loader = DataLoader(
        CaptionImagePairs(features_path, train_split.im_div, train_caps), batch_size=config.batch_size,
        sampler=sampler, num_workers=options.workers, collate_fn=collate_pairs, pin_memory=device.type == "cuda",
        persistent_workers=options.workers > 0, generator=torch.Generator().manual_seed(options.seed))

    # the training step's head: its region-word products in --train-products; validation scores with ``head``
    train_head = head.with_product_dtype(options.product_dtype) if options.product_dtype else head
    if run.epoch >= config.num_epochs:
        log(f"nothing to do: the run already has {run.epoch} of {config.num_epochs} epochs")
    else:
        log(f"training {head.describe()}: {len(train_caps)} pairs, batch {config.batch_size}, "
            f"{len(loader)} iterations per epoch, vocabulary {len(vocab)} words, device {device}")
    for epoch in range(run.epoch, config.num_epochs):
        started = time.perf_counter()
        lr = learning_rate(config, epoch)
        max_violation = config.max_violation and epoch >= config.max_violation_warmup
        for group in optimizer.param_groups:
            group["lr"] = lr
        sampler.set_epoch(epoch)
        image_encoder.train()
        text_encoder.train()
        progress = EpochProgress(epoch, len(loader), options.progress, options.log_every, log)
        try:
            for step, batch in enumerate(loader, 1):
                loss = _train_step(batch, image_encoder, text_encoder, train_head, optimizer, params, config, device,
                                   max_violation)
                run.eiters += 1
                if not math.isfinite(loss):
                    raise ScanVizError(f"the loss became {loss} at epoch {epoch + 1}, iteration {step}: training "
                                       "diverged; lower --learning-rate or keep --grad-clip on")
                progress.update(step, loss, lr)
        finally:
            progress.close()

        metrics = validate(image_encoder, text_encoder, head, dev_split, dev_caps, device, config.batch_size,
                           options.progress)
        run.epoch = epoch + 1
        is_best = metrics.rsum > run.best_rsum
        if is_best:
            run.best_rsum, run.best_epoch = metrics.rsum, run.epoch
        record = {"epoch": run.epoch, "lr": lr, "max_violation": max_violation, "loss": progress.mean_loss,
                  "i2t": metrics.i2t.to_dict(), "t2i": metrics.t2i.to_dict(), "rsum": metrics.rsum, "best_rsum": run.best_rsum, "is_best": is_best,
                  "eiters": run.eiters, "seconds": round(time.perf_counter() - started, 3)}
        _save_epoch(out, config, vocab, image_encoder, text_encoder, optimizer, run, is_best, record, options)
        log(_epoch_line(record, config.num_epochs))

    return TrainResult(out, run.epoch, run.best_epoch, run.best_rsum, read_log(out / LOG_FILE))


#: Bytes of one (images x regions x captions x words) intermediate of a training block: small enough to stay in
#: the CPU's cache, so the head's element-wise passes (and their gradients) do not stream through main memory.
TRAIN_BLOCK_BYTES = 4 * 1024**2


#: captions of a training batch are scored in this many groups of similar length (``batch_scores``)
LENGTH_GROUPS = 4


def batch_scores(head: MatchingHead, regions: torch.Tensor, words: torch.Tensor, lengths: torch.Tensor,
                 block_bytes: int = TRAIN_BLOCK_BYTES, fused: bool = True,
                 length_groups: int = LENGTH_GROUPS) -> torch.Tensor:
    """The (n_images, n_captions) score matrix of a training batch, differentiable.

    regions (n_images, n_regions, d), words (n_captions, max_words, d). Every pair is independent, so how the
    pairs are grouped changes no score:

    * the captions are sorted by length and scored in ``length_groups`` groups, each padded only to its own
      longest caption (the scoring engine's rule; padded words are about a quarter of a batch's words otherwise);
    * a head with a backward of its own (``fused``; :meth:`~scan_viz.heads.MatchingHead.training_scores`: SCAN's
      per-pair kernel, on a CPU) goes through it; other heads (or ``fused=False``) run autograd through
      ``head.scores``, a few images at a time on a CPU so the intermediates stay in cache; on a GPU one block.

    Speeds: benchmarks/bench_training.py.
    """
    if fused and not regions.is_cuda:
        own = head.packed_training_scores(regions, words, lengths)
        if own is not None:
            return own
    n_cap = words.shape[0]
    if length_groups > 1 and n_cap > 1 and not regions.is_cuda:
        order = torch.argsort(lengths.cpu(), stable=True)
        parts = []
        for idx in torch.tensor_split(order, min(length_groups, n_cap)):
            longest = int(lengths[idx].max())
            parts.append(batch_scores(head, regions, words[idx, :longest], lengths[idx], block_bytes, fused, 1))
        return torch.cat(parts, dim=1)[:, torch.argsort(order)]
    own = head.training_scores(regions, words, lengths) if fused else None
    if own is not None:
        return own
    if regions.is_cuda:
        return head.scores(regions, words, lengths).scores
    per_image = regions.shape[1] * words.shape[0] * words.shape[1] * regions.element_size()
    step = max(1, block_bytes // max(per_image, 1))
    return torch.cat([head.scores(regions[s:s + step], words, lengths).scores
                      for s in range(0, regions.shape[0], step)])


def _train_step(batch: dict[str, torch.Tensor], image_encoder: ImageEncoder, text_encoder: TextEncoder,
                head: MatchingHead, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter],
                config: ScanConfig, device: torch.device, max_violation: bool) -> float:
    """One official ``train_emb`` step on a batch; returns the batch loss."""
    images = batch["images"].to(device, non_blocking=True)
    ids = batch["ids"].to(device, non_blocking=True)
    lengths = batch["lengths"]
    regions = image_encoder(images)                       # (b, n_regions, embed_size)
    words = text_encoder(ids, lengths)                    # (b, max_len, embed_size)
    scores = batch_scores(head, regions, words, lengths.to(device))  # (b images, b captions), positives on the diagonal
    loss = contrastive_loss(scores, config.margin, max_violation)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
    optimizer.step()
    return float(loss.detach())


def validate(image_encoder: ImageEncoder, text_encoder: TextEncoder, head: MatchingHead, split: PrecompSplit,
             captions: EncodedCaptionIds, device: torch.device, batch_size: int = 128,
             progress: bool = False) -> RetrievalResult:
    """Dev retrieval metrics (:func:`scan_viz.evaluation.metrics.evaluate`) of the encoders as they are now.

    As in the official validation, embeddings are computed in float32 and scored in float64.
    """
    image_encoder.eval()
    text_encoder.eval()
    features = split.regions.features
    with torch.no_grad():
        regions = torch.cat([
            image_encoder(torch.from_numpy(np.array(features[s:s + batch_size], dtype=np.float32)).to(device))
            for s in range(0, features.shape[0], batch_size)]).double()
        ids, lengths = captions.padded()
        words = torch.cat([
            text_encoder(ids[s:s + batch_size].to(device), lengths[s:s + batch_size])
            for s in range(0, len(captions), batch_size)]).double()
    report, close = scoring_progress(progress)
    try:
        sims = score_matrix(head, regions, words, lengths.to(device), progress=report)
    finally:
        close()
    return evaluate(sims, split.caption_image)


def _save_epoch(out: Path, config: ScanConfig, vocab: Vocabulary, image_encoder: ImageEncoder,
                text_encoder: TextEncoder, optimizer: torch.optim.Optimizer, run: _Run, is_best: bool,
                record: dict, options: TrainOptions) -> None:
    """Write the epoch's files. ``last.pt`` goes last: until it is written, a resume redoes this epoch."""
    from scan_viz.model.checkpoint import write_official_checkpoint

    image_state = {k: v.detach().cpu() for k, v in image_encoder.state_dict().items()}
    text_state = {k: v.detach().cpu() for k, v in text_encoder.state_dict().items()}
    # official train.py stores epoch + 1 (epochs completed) and the best rsum so far; written atomically
    write_official_checkpoint(out / LAST_CHECKPOINT, config, image_state, text_state, epoch=run.epoch,
                              best_rsum=run.best_rsum, eiters=run.eiters, legacy=True)
    if is_best:
        with atomic_path(out / BEST_CHECKPOINT) as tmp:
            shutil.copyfile(out / LAST_CHECKPOINT, tmp)
        write_dir_atomic(out / BEST_MODEL_DIR, lambda d: _save_model_dir(d, config, vocab, image_state, text_state))
    append_jsonl(out / LOG_FILE, record)
    save_last(out / LAST_STATE, {
        "epoch": run.epoch, "eiters": run.eiters, "best_rsum": run.best_rsum, "best_epoch": run.best_epoch,
        "seed": options.seed, "config": config.to_dict(), "vocab_size": len(vocab),
        "image_state": image_state, "text_state": text_state, "optimizer": optimizer.state_dict(),
        "rng": rng_state(options.device),
    })


def _save_model_dir(directory: Path, config: ScanConfig, vocab: Vocabulary, image_state: dict,
                    text_state: dict) -> None:
    from scan_viz.model import ScanModel

    ScanModel(config, vocab, image_state, text_state).save(directory)


def _epoch_line(record: dict, num_epochs: int) -> str:
    i2t, t2i = record["i2t"], record["t2i"]
    return (f"epoch {record['epoch']}/{num_epochs}  loss {record['loss']:.4f}  lr {record['lr']:.1e}  "
            f"i2t R@1/5/10 {i2t['r1']:.1f} {i2t['r5']:.1f} {i2t['r10']:.1f}  "
            f"t2i R@1/5/10 {t2i['r1']:.1f} {t2i['r5']:.1f} {t2i['r10']:.1f}  rsum {record['rsum']:.1f}"
            f"{'  (best)' if record['is_best'] else ''}  {record['seconds']:.1f}s")


# --------------------------------------------------------------------------------------------- checks and set-up
def _check_training_config(config: ScanConfig) -> None:
    for name in ("batch_size", "num_epochs", "lr_update"):
        if int(getattr(config, name)) < 1:
            raise ScanVizError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    if not config.learning_rate > 0:
        raise ScanVizError(f"--learning-rate must be positive, got {config.learning_rate}")


def _device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ScanVizError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return torch.device(name)


def _check_data_dir(data_dir: str | Path) -> Path:
    path = Path(data_dir)
    if not path.is_dir():
        raise ScanVizError(f"data folder {path} does not exist; pass the folder holding train_ims.npy, "
                           "train_caps.txt, dev_ims.npy and dev_caps.txt (e.g. data/f30k_precomp)")
    return path


def _load_splits(data_dir: Path, options: TrainOptions, img_dim: int) -> tuple[PrecompSplit, PrecompSplit]:
    """The training split and the (officially truncated) dev split, checked against the config's img_dim."""
    train_split = load_precomp(data_dir, options.train_split)
    dev_split = load_precomp(data_dir, options.dev_split, max_captions=options.max_dev_captions or None)
    for name, split in ((options.train_split, train_split), (options.dev_split, dev_split)):
        found = split.regions.features.shape[2]
        if found != img_dim:
            raise ScanVizError(f"{data_dir}/{name}_ims.npy has {found}-d region features but the config says "
                               f"img_dim={img_dim}; drop --img-dim or set it to {found}")
    return train_split, dev_split


def _prepare_out_dir(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ScanVizError(f"cannot write to the run folder {out} ({exc.strerror or exc}); choose a writable --out") \
            from None
    return out


#: the config fields that shape the encoders' weights: an --init-from model must agree on all of them
ENCODER_SHAPE_FIELDS = ("img_dim", "embed_size", "word_dim", "num_layers", "bi_gru", "precomp_enc_type")


def _init_model(options: TrainOptions, config: ScanConfig):
    """The model a new run starts from (``--init-from``), checked against the run's encoder sizes."""
    from scan_viz.model import load_model

    init = load_model(options.init_from)
    differ = [f"{name} {getattr(init.config, name)} vs {getattr(config, name)}" for name in ENCODER_SHAPE_FIELDS
              if getattr(init.config, name) != getattr(config, name)]
    if differ:
        raise ScanVizError(f"--init-from {options.init_from} has other encoder sizes than this run ("
                           + ", ".join(differ) + "): pass the same sizes as that model")
    return init


def _resolve_vocab(options: TrainOptions, out: Path, train_split: PrecompSplit, resuming: bool) -> Vocabulary:
    """The run's vocabulary: the one given, the run's own when resuming, else built from the training captions."""
    run_vocab = out / VOCAB_FILE
    if options.vocab is not None:
        vocab = options.vocab if isinstance(options.vocab, Vocabulary) else Vocabulary.load(options.vocab)
        if resuming and run_vocab.is_file() and Vocabulary.load(run_vocab).word2idx != vocab.word2idx:
            raise ScanVizError(f"the vocabulary {options.vocab} differs from the one the run in {out} was trained "
                               f"with ({run_vocab}); resume without --vocab or with that file")
    elif resuming and run_vocab.is_file():
        vocab = Vocabulary.load(run_vocab)
    else:
        if resuming:
            raise ScanVizError(f"cannot resume: {run_vocab} is missing; pass the run's vocabulary with --vocab")
        vocab = Vocabulary.build(train_split.captions, options.vocab_threshold)
        options.log(f"built a vocabulary of {len(vocab)} words (seen at least {options.vocab_threshold} times)")
    with atomic_path(run_vocab) as tmp:
        vocab.save(tmp)
    return vocab


def _check_resume_config(saved: dict[str, Any], config: ScanConfig, seed: int, out: Path) -> None:
    """A resumed run must continue the same experiment: same hyperparameters (more epochs allowed) and seed."""
    before = ScanConfig.from_dict(saved["config"]).to_dict()
    now = config.to_dict()
    changed = [f"{name}: {before.get(name)!r} -> {now[name]!r}" for name in ScanConfig.field_names()
               if name not in RESUMABLE_CHANGES and before.get(name) != now[name]]
    if int(saved["seed"]) != seed:
        changed.append(f"seed: {int(saved['seed'])} -> {seed}")
    if changed:
        raise ScanVizError(f"--resume needs the settings the run in {out} started with; changed: "
                           f"{'; '.join(changed)}")


# ----------------------------------------------------------------------------------------------------- command line
def run_training(args: argparse.Namespace) -> TrainResult:
    """``scan-viz train``: the arguments of :func:`scan_viz.train.args.add_train_args` -> :func:`train`."""
    from scan_viz.train.args import config_from_args, options_from_args

    options = options_from_args(args)
    if options.product_dtype == "bfloat16":
        from scan_viz.heads.similarity import bfloat16_emulated_note

        note = bfloat16_emulated_note(args.device)
        if note:
            options.log(note)
    img_dim = args.img_dim
    if img_dim is None:
        img_dim = int(load_precomp(_check_data_dir(args.data), options.train_split).regions.features.shape[2])
    result = train(config_from_args(args, img_dim), args.data, args.out, options)
    if result.best_epoch:
        options.log(f"best rsum {result.best_rsum:.2f} at epoch {result.best_epoch}: {result.out_dir / BEST_CHECKPOINT}"
                    f" and {result.model_dir}")
    return result
