"""`wastenet train`: transfer-learn a waste classifier and evaluate it on the test split.

    wastenet train --data ../shared/data/trashnet --split-file ../shared/data/trashnet-split.csv \
        --model densenet121 --weights ../shared/weights/densenet121.safetensors --recipe wastenet

Data-parallel on N GPUs (or N CPU processes), same options (docs/distributed.md)::

    torchrun --standalone --nproc_per_node=N -m wastenet train ...
"""

from __future__ import annotations

import argparse

HELP = "Train a classifier (recipes: wastenet hybrid tuning, finetune, linear) and report test metrics."


def _bool(p: argparse.ArgumentParser, name: str, default: bool, help: str) -> None:
    p.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=default, help=help)


def _lwf_arg(value: str) -> float | str:
    """``--lwf auto`` or a number (its range is checked with the rest of the config)."""
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be auto or a number, not {value!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    from wastenet.data.augment_config import AUTO_AUGMENT_MODES, COMPOSITE_MODES
    from wastenet.training.config import AMP_MODES, DEFAULT_MODEL, FILL_MODES, FROZEN_BACKENDS, LOSSES, RECIPES, TrainConfig
    from wastenet.weight_packages import WEIGHT_PACKAGES

    d = TrainConfig()
    g = p.add_argument_group("data")
    g.add_argument("--data", default=d.data, help="class-folder dataset, or 'trashnet' / 'kaggle-household' (downloaded)")
    g.add_argument("--split-file", help="CSV path,label,split; default: a stratified seeded 50/25/25 split saved in the run")
    g.add_argument("--skip-missing", action="store_true",
                   help="leave out split rows whose file does not exist (default: refuse the split before training)")
    g.add_argument("--extra-data", action="append", default=[], metavar="DIR",
                   help="more class folders added to the training split (e.g. `wastenet review --export`)")
    g.add_argument("--limit-per-class", type=int, help="use at most N images per class and split (quick trials)")
    g = p.add_argument_group("model")
    g.add_argument("--model", help="any timm architecture, or alexnet / squeezenet1_1 (default: the weights "
                   f"package's architecture, else {DEFAULT_MODEL})")
    g.add_argument("--weights", help="local weights file (with NAME.json sidecar), an installed weights package "
                   f"({', '.join(WEIGHT_PACKAGES)}), 'hub' (default: download) or 'none'")
    g.add_argument("--img-size", help="input size: N for the square centre crop (default: the model's own), or "
                   "HxW (e.g. 256x320) to resize the whole photo to H x W, aspect kept, nothing cropped")
    g = p.add_argument_group("recipe")
    g.add_argument("--recipe", default=d.recipe, choices=RECIPES)
    g.add_argument("--loss", default=d.loss, choices=LOSSES)
    g.add_argument("--alpha", help="class weights: 'balanced' or comma-separated values (focal alpha / CE weights)")
    g.add_argument("--focal-gamma", type=float, default=d.focal_gamma)
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    g.add_argument("--epochs", type=int, default=d.epochs, help="finetune: epochs; wastenet: epochs of the final all-layer step")
    g.add_argument("--step-epochs", type=int, default=d.step_epochs, help="wastenet: epochs of each partial unfreezing step")
    g.add_argument("--head-epochs", type=int, default=d.head_epochs, help="head-only stage: at most this many epochs")
    g.add_argument("--head-views", type=int, default=d.head_views, help="augmented views of each image cached for the head stage")
    g.add_argument("--unfreeze-groups", type=int, default=d.unfreeze_groups, help="backbone layer groups unfrozen one by one")
    g.add_argument("--lr", type=float, default=d.lr, help="peak learning rate of the head/top group in backbone stages")
    g.add_argument("--head-lr", type=float, help="head-only stage learning rate (default 2 x --lr)")
    g.add_argument("--lr-decay", type=float, default=d.lr_decay, help="discriminative factor per group below the head")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="global batch: under torchrun each of N processes trains on batch-size / N")
    g.add_argument("--teacher", metavar="BEST.pt", help="distil this trained checkpoint's calibrated "
                   "probabilities into the model (same classes)")
    g.add_argument("--distill-alpha", type=float, default=d.distill_alpha,
                   help="with --teacher: weight of the teacher's soft targets; 1 - alpha weighs the labels")
    g.add_argument("--distill-temperature", type=float, default=d.distill_temperature,
                   help="with --teacher: temperature of the KL term (scaled by its square)")
    g.add_argument("--lwf", type=_lwf_arg, default=d.lwf, metavar="auto|W",
                   help="learning without forgetting: backbone stages also keep the pretrained network's ImageNet "
                        "posterior (weight W of the KL term), so the unknown-item rule keeps its ImageNet-kinds score; "
                        "W needs weights with a 1000-class head; auto: 1 where they carry one (0 = off)")
    g.add_argument("--patience", type=int, default=d.patience, help="early stopping: epochs without validation improvement")
    g = p.add_argument_group("augmentation (Keras ImageDataGenerator style)")
    g.add_argument("--zoom", type=float, default=d.zoom)
    g.add_argument("--rotation", type=float, default=d.rotation)
    g.add_argument("--shift", type=float, default=d.shift)
    _bool(g, "hflip", d.hflip, "random horizontal flips")
    _bool(g, "vflip", d.vflip, "random vertical flips")
    g.add_argument("--fill", default=d.fill, choices=FILL_MODES, help="fill for new pixels")
    _bool(g, "tta", d.tta, "test-time augmentation (flip) in the final evaluation")
    g = p.add_argument_group("field augmentation (breaks the studio shortcuts of TrashNet-like data)")
    g.add_argument("--composite", default=d.composite, choices=COMPOSITE_MODES,
                   help="matte items off a plain studio board onto new backgrounds (auto: when the data is studio-like)")
    _bool(g, "scale-jitter", d.scale_jitter, "with compositing: rescale items to cover --min-cover..--max-cover of the frame")
    g.add_argument("--min-cover", type=float, default=d.min_cover, help="smallest share of the frame an item covers")
    g.add_argument("--max-cover", type=float, default=d.max_cover, help="largest share of the frame an item covers")
    g.add_argument("--backgrounds", metavar="DIR", help="real background photos (e.g. your bin's empty tray), mixed with procedural ones")
    g.add_argument("--color-jitter", type=float, default=d.color_jitter, help="colour and white-balance jitter strength (0 = off)")
    g.add_argument("--blur-jpeg", type=float, default=d.blur_jpeg, help="probability of blur, JPEG artefacts and noise each (0 = off)")
    g.add_argument("--auto-augment", default=d.auto_augment, choices=AUTO_AUGMENT_MODES,
                   help="add kornia's TrivialAugment or RandAugment")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--device", default=d.device, help="auto, cpu or cuda")
    g.add_argument("--amp", default=d.amp, choices=AMP_MODES, help="mixed precision")
    _bool(g, "channels-last", d.channels_last, "channels-last memory format")
    g.add_argument("--threads", type=int, help="torch CPU threads")
    g.add_argument("--frozen-backend", default=d.frozen_backend, choices=FROZEN_BACKENDS,
                   help="frozen passes (head features, teacher, calibration, test): auto = onnxruntime fp32 "
                        "on CPU when installed, else PyTorch")
    g.add_argument("--workers", type=int, default=d.workers, help="image decoding threads")
    g.add_argument("--taxonomy", help="bin taxonomy stored in the checkpoint: trashnet, household or a YAML file")
    g.add_argument("--threshold", type=float, default=d.threshold, help="decision threshold stored in the checkpoint")
    g.add_argument("--out", help="run folder (default runs/MODEL-RECIPE)")
    g.add_argument("--resume", action="store_true", help="continue an interrupted run from its last.pt")


def config_from_args(args: argparse.Namespace):
    from wastenet.training.config import TrainConfig

    fields = TrainConfig.__dataclass_fields__
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    cfg.validate()  # before importing torch-heavy modules: bad options fail in a second
    from wastenet.training.loop import train

    metrics = train(cfg)
    if metrics:
        print(f"test accuracy {metrics['accuracy']:.4f}  macro F1 {metrics['f1_macro']:.4f}")
    return 0
