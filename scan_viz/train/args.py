"""``scan-viz train`` arguments, under the official train.py's names (dashes for underscores).

Model hyperparameters map one-to-one onto :class:`~scan_viz.model.config.ScanConfig` fields, the head's settings are
generated from the heads' declarations (:mod:`scan_viz.heads`: every head's, under the same flags as ``scan-viz
score``); everything else goes to :class:`~scan_viz.train.options.TrainOptions`. No torch or nltk import here: the CLI builds this parser for
every command.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from scan_viz.heads import all_head_params, head_names, head_settings, heads_declaring
from scan_viz.model.config import PRECOMP_ENC_TYPES, ScanConfig
from scan_viz.train.options import TrainOptions

_DEFAULTS = ScanConfig()


def add_train_args(p: argparse.ArgumentParser) -> None:
    """Add every training argument to ``p`` (the ``train`` subparser)."""
    d = _DEFAULTS
    data = p.add_argument_group("data")
    data.add_argument("--data", required=True,
                      help="precomputed layout folder with {split}_ims.npy and {split}_caps.txt (e.g. data/f30k_precomp)")
    data.add_argument("--train-split", default="train")
    data.add_argument("--dev-split", default="dev")
    data.add_argument("--vocab", help="official vocab JSON; default: build one from the training captions")
    data.add_argument("--vocab-threshold", type=int, default=4,
                      help="when building the vocab, keep words seen at least this often (official: 4)")
    data.add_argument("--max-dev-captions", type=int, default=5000,
                      help="validate on the first N dev captions, as the official code does (0: all)")
    data.add_argument("--out", required=True, help="run folder: checkpoints, best/ model, log.jsonl, last.pt")

    model = p.add_argument_group("model (official names)")
    model.add_argument("--img-dim", type=int, help="region feature size (default: read from the .npy)")
    model.add_argument("--embed-size", type=int, default=d.embed_size)
    model.add_argument("--word-dim", type=int, default=d.word_dim)
    model.add_argument("--num-layers", type=int, default=d.num_layers)
    model.add_argument("--bi-gru", action="store_true", help="bidirectional GRU, directions averaged (paper)")
    model.add_argument("--no-imgnorm", action="store_true")
    model.add_argument("--no-txtnorm", action="store_true")
    model.add_argument("--precomp-enc-type", choices=PRECOMP_ENC_TYPES, default=d.precomp_enc_type)
    model.add_argument("--head", default=d.head,
                       help=f"matching head to train ({', '.join(head_names())}); the settings it does not get "
                            "below take their declared defaults")
    settings = p.add_argument_group("head settings (generated from the heads' declarations)")
    for param in all_head_params():
        kind = dict(choices=param.choices) if param.choices else dict(type=float, metavar="X")
        settings.add_argument(*param.flags, dest=param.name, **kind,
                              help=f"{param.help} (default {param.default}); heads: "
                                   f"{', '.join(heads_declaring(param.name))}")

    optim = p.add_argument_group("optimisation (official names)")
    optim.add_argument("--margin", type=float, default=d.margin)
    optim.add_argument("--max-violation", action="store_true", help="hardest negative only (VSE++; paper)")
    optim.add_argument("--max-violation-warmup", type=int, default=d.max_violation_warmup, metavar="EPOCHS",
                       help="with --max-violation: sum over all negatives for the first EPOCHS epochs (not official)")
    optim.add_argument("--learning-rate", type=float, default=d.learning_rate)
    optim.add_argument("--lr-update", type=int, default=d.lr_update, help="divide the lr by 10 every N epochs")
    optim.add_argument("--num-epochs", type=int, default=d.num_epochs)
    optim.add_argument("--batch-size", type=int, default=d.batch_size)
    optim.add_argument("--grad-clip", type=float, default=d.grad_clip, help="max gradient norm (<= 0: off)")

    run = p.add_argument_group("run")
    run.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (0: load in-process)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", default="cpu", help="cpu or cuda")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    run.add_argument("--init-from", metavar="MODEL",
                     help="start a new run from this model's encoder weights and vocabulary (a model directory or a "
                          "bundled name), e.g. to train a CHAN or CAAN head on a trained SCAN model")
    run.add_argument("--train-products", choices=("float32", "bfloat16"), default=None,
                     help="dtype of the training step's region-word products (bfloat16: faster on CPUs with AMX or "
                          "AVX512-BF16, emulated and far slower without AVX-512; dev scoring stays float64)")
    run.add_argument("--log-every", type=int, default=10, help="iterations between progress lines")
    run.add_argument("--no-progress", action="store_true", help="no per-iteration output, epoch lines only")


def config_from_args(args: argparse.Namespace, img_dim: int) -> ScanConfig:
    """The ScanConfig the arguments describe; ``img_dim`` is used when ``--img-dim`` was not given."""
    values = {name: getattr(args, name) for name in ScanConfig.field_names() if getattr(args, name, None) is not None}
    values["img_dim"] = args.img_dim if args.img_dim is not None else img_dim
    # the head's settings, every one written into the config (the given ones, else the declared defaults)
    given = {p.name: getattr(args, p.name) for p in all_head_params() if getattr(args, p.name, None) is not None}
    values["head_params"] = head_settings(args.head, ScanConfig(), given)
    # the official data_name ("f30k_precomp", "coco_precomp") is the data folder's name
    name = Path(args.data).resolve().name
    if name.endswith("_precomp"):
        values["data_name"] = name
    return ScanConfig.from_dict(values)


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    """The TrainOptions the arguments describe."""
    return TrainOptions(
        train_split=args.train_split, dev_split=args.dev_split, vocab=args.vocab,
        vocab_threshold=args.vocab_threshold, workers=args.workers, seed=args.seed, device=args.device,
        max_dev_captions=args.max_dev_captions or None, resume=args.resume, init_from=args.init_from,
        log_every=args.log_every,
        progress=not args.no_progress, product_dtype=getattr(args, "train_products", None),
    )
