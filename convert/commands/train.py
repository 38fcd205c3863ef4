"""``edge train``: MobileNetV2 SSDLite on VOC / COCO / synthetic data into a run directory.

GPU memory is configured before TensorFlow touches a GPU (growth by default, or a hard cap), so the
job never grabs the whole card; several GPUs train under ``MirroredStrategy``. ``--teacher RUN_DIR``
distils a trained run into the new one (:mod:`convert.distill`); with it, ``--data`` may be a folder of
images alone, labelled by the teacher first (:mod:`convert.data.pseudo`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge.errors import EdgeError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="VOC folder, COCO .json, or a folder holding one")
    parser.add_argument("--format", choices=("voc", "coco"), default=None, help="default: auto-detect")
    parser.add_argument("--images-dir", default=None, help="COCO: folder the file_names are relative to")
    parser.add_argument("--out", required=True, help="run directory (config.json, checkpoints/, history.json)")
    parser.add_argument("--classes", default=None, help="comma-separated class names to train, in model order "
                                                        "(default: all classes in the data)")
    parser.add_argument("--val-data", default=None, help="separate validation set (same format)")
    parser.add_argument("--val-split", type=float, default=0.1,
                        help="fraction held out for validation mAP when --val-data is not given (default 0.1)")
    parser.add_argument("--input-size", type=int, default=320, help="square input, 160..320 px (default 320)")
    parser.add_argument("--width", type=float, default=0.5, help="MobileNetV2 width multiplier 0.35..1.0 (default 0.5)")
    parser.add_argument("--fpn", action="store_true", help="FPN-lite feature fusion")
    parser.add_argument("--epochs", type=int, default=20, help="passes over the data (default 20)")
    parser.add_argument("--batch-size", default="8", help="N or 'auto' (largest that fits the GPU, minus a margin; default 8)")
    parser.add_argument("--steps-per-epoch", type=int, default=None, help="default: one pass over the data")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (Adam, warm-up + cosine; default 2e-3)")
    parser.add_argument("--loss", choices=("focal", "hard_negatives"), default="focal",
                        help="class loss: sigmoid focal, or softmax CE with 3:1 hard-negative mining (default focal)")
    # Pretrained weights on disk (convert.pretrained) and the freezing policy (convert.train._BackboneFreezing).
    parser.add_argument("--backbone-weights", default=None, metavar="imagenet|none|PATH",
                        help="imagenet (downloads through Keras), none, a Keras MobileNetV2 weights file (.h5), "
                             "or a TF OD API SSD MobileNetV2 export (frozen graph .pb, TF2 checkpoint or "
                             "SavedModel; needs --width 1.0), mapped by layer name and checked (default imagenet)")
    parser.add_argument("--init-from", default=None, metavar="EXPORT",
                        help="an OD API SSDLite MobileNetV2 frozen graph: backbone, extra layers and box/class "
                             "heads from it (same number of classes; --width 1.0, no --fpn)")
    parser.add_argument("--freeze-backbone-epochs", type=int, default=0, metavar="N",
                        help="keep the pretrained backbone frozen (BatchNorm in inference mode) for the first N "
                             "epochs, then train it; its BatchNorm stays frozen for batches under 16 (default 0)")
    # Distillation (convert.distill); the defaults live in DistillConfig, None means "not given".
    parser.add_argument("--teacher", default=None, metavar="RUN_DIR",
                        help="distil from a trained run directory with the same labels and --loss (any input "
                             "size or width; its anchors are matched to the student's by IoU); --data may then "
                             "be a folder of unlabelled images, labelled by the teacher into OUT/pseudo_labels/")
    parser.add_argument("--distill-weight", type=float, default=None, metavar="W",
                        help="weight of the distillation terms against the ground-truth loss, >= 0 (default 1.0)")
    parser.add_argument("--temperature", type=float, default=None, metavar="T",
                        help="softening temperature of the teacher's class scores, > 0 (default 2.0)")
    parser.add_argument("--pseudo-label-score", type=float, default=None, metavar="S",
                        help="unlabelled --data: keep the teacher's detections scoring >= S after NMS "
                             "(default 0.5)")
    parser.add_argument("--no-augment", action="store_true", help="no crop/flip/colour augmentation")
    parser.add_argument("--no-memory-growth", action="store_true",
                        help="let TensorFlow map all GPU memory up front (its default; not recommended)")
    parser.add_argument("--memory-limit", type=int, default=None, metavar="MB",
                        help="hard cap per GPU in MB (a logical device with memory_limit)")
    parser.add_argument("--mixed-precision", action="store_true", help="mixed_float16 (GPU only)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    parser.add_argument("--checkpoint-every", type=int, default=None, metavar="STEPS",
                        help="extra checkpoints inside an epoch (default: at each epoch end)")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed: initial weights, shuffling, augmentation, the validation split (default 0)")
    parser.add_argument("--workers", type=int, default=2, help="parallel image readers (default 2)")
    parser.add_argument("--quiet", action="store_true", help="one line per epoch instead of a progress bar")
    # Several machines (MultiWorkerMirroredStrategy): see convert.distributed.
    parser.add_argument("--cluster", default=None, metavar="HOST:PORT,...",
                        help="train on several machines: every worker's host:port, the same list on all "
                             "(default: a TF_CONFIG environment variable, else this machine alone); "
                             "--batch-size is then per worker")
    parser.add_argument("--task-index", type=int, default=None, metavar="I",
                        help="this worker's place in --cluster (0 = the chief, which writes --out)")
    parser.add_argument("--worker-timeout", type=float, default=None, metavar="S",
                        help="a worker that dies or cannot be reached (or does not join at start) stops the "
                             "others after S seconds (default 60)")


def _parse_batch_size(value: str) -> int | None:
    if value == "auto":
        return None
    try:
        size = int(value)
    except ValueError:
        raise EdgeError(f"--batch-size {value!r}: expected a number or 'auto'") from None
    if size < 1:
        raise EdgeError(f"--batch-size {size}: must be at least 1")
    return size


def _datasets(args: argparse.Namespace):
    """``(all data, training set, validation set or None)``, the split printed."""
    from convert.data import load_dataset

    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    dataset = load_dataset(args.data, format=args.format, images_dir=args.images_dir, labels=classes)
    for path, reason in dataset.skipped[:10]:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if args.val_data:
        val = load_dataset(args.val_data, format=args.format, labels=dataset.labels)
        train_set = dataset
    elif args.val_split > 0:
        train_set, val = dataset.split(args.val_split, seed=args.seed)
    else:
        train_set, val = dataset, None
    print(f"train: {train_set.summary()}" + (f"; val: {val.summary()}" if val is not None else "")
          + (f"; {len(dataset.skipped)} annotation file(s) skipped" if dataset.skipped else ""))
    return dataset, train_set, val


def _distill_options(args: argparse.Namespace):
    """--teacher and its options checked before any work (no TensorFlow); the DistillConfig or None."""
    from convert.data.pseudo import DEFAULT_PSEUDO_LABEL_SCORE
    from convert.distill import DistillConfig, check_teacher_dir

    options = (("--distill-weight", args.distill_weight), ("--temperature", args.temperature),
               ("--pseudo-label-score", args.pseudo_label_score))
    if args.teacher is None:
        given = next(((name, value) for name, value in options if value is not None), None)
        if given:
            raise EdgeError(f"{given[0]} {given[1]:g}: needs --teacher RUN_DIR (it only shapes distillation)")
        return None
    defaults = DistillConfig()
    distill = DistillConfig(weight=defaults.weight if args.distill_weight is None else args.distill_weight,
                            temperature=defaults.temperature if args.temperature is None else args.temperature)
    distill.validate()
    if args.pseudo_label_score is None:
        args.pseudo_label_score = DEFAULT_PSEUDO_LABEL_SCORE
    if not 0.0 < args.pseudo_label_score <= 1.0:
        raise EdgeError(f"--pseudo-label-score {args.pseudo_label_score:g}: expected 0 < score <= 1")
    check_teacher_dir(args.teacher)
    return distill


def _student_config(args: argparse.Namespace, labels):
    from convert.config import SSDConfig
    from convert.losses import score_conversion_for

    config = SSDConfig.create(labels, input_size=args.input_size, width=args.width, fpn=args.fpn)
    config.training["data"] = str(args.data)
    # What train() records too; the teacher is checked against it before the run starts.
    config.score_conversion = score_conversion_for(args.loss)
    return config


def _pseudo_labelled(args: argparse.Namespace):
    """Images-only --data: ``(config, teacher, training set, validation set or None)``, the teacher's
    detections written as VOC into OUT/pseudo_labels/ (only after every check has passed)."""
    from convert.data import load_dataset
    from convert.data.pseudo import PSEUDO_LABELS_DIR, write_pseudo_labels
    from convert.distill import Teacher, check_teacher_dir
    from convert.train import check_run_dir

    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    config = _student_config(args, classes or check_teacher_dir(args.teacher).labels)
    teacher = Teacher.from_run(args.teacher, config)
    val = load_dataset(args.val_data, format=args.format, labels=config.labels) if args.val_data else None
    out = Path(args.out)
    check_run_dir(out, args.resume)
    dataset, labelled = write_pseudo_labels(teacher, args.data, out / PSEUDO_LABELS_DIR,
                                            score=args.pseudo_label_score)
    print(labelled.describe())
    if labelled.objects == 0:
        print(f"the teacher found nothing scoring >= {args.pseudo_label_score:g}; training on distillation alone")
    config.training["pseudo_labels"] = {"images": str(args.data), "dir": str(labelled.out_dir),
                                        "score": args.pseudo_label_score, "labelled_images": labelled.images,
                                        "objects": labelled.objects}
    train_set = dataset
    if val is None and args.val_split > 0:
        train_set, val = dataset.split(args.val_split, seed=args.seed)
        print("val mAP below measures agreement with the teacher's pseudo-labels")
    print(f"train: {train_set.summary()}" + (f"; val: {val.summary()}" if val is not None else ""))
    return config, teacher, train_set, val


def _auto_batch_size(config, train_set, loss, setup, teacher=None, distill=None) -> int:
    """``--batch-size auto``: measured on the GPU, else the default."""
    from convert.steps import search_batch_size
    from convert.train import DEFAULT_BATCH_SIZE

    if not setup.gpus:
        print(f"--batch-size auto needs a GPU to measure; using the default {DEFAULT_BATCH_SIZE}")
        return DEFAULT_BATCH_SIZE
    search = search_batch_size(config, train_set, loss=loss, mixed_precision=setup.mixed_precision,
                               teacher=teacher, distill=distill)
    print(search.describe())
    return search.batch_size


def _check_train_paths(args: argparse.Namespace) -> None:
    """The run directory may be no input, and must be writable, before TensorFlow starts."""
    from edge.files import FOLDER, check_paths

    weights = args.backbone_weights if args.backbone_weights not in ("imagenet", "none") else None
    check_paths([("--data", args.data), ("--val-data", args.val_data), ("--images-dir", args.images_dir),
                 ("--backbone-weights", weights), ("--init-from", args.init_from), ("--teacher", args.teacher)],
                [("--out", Path(args.out), FOLDER)])


def _cluster(args: argparse.Namespace):
    """``(Cluster or None, convert.distributed)`` from --cluster/--task-index or TF_CONFIG, checked."""
    import os

    from convert import distributed
    from convert.cluster import DEFAULT_WORKER_TIMEOUT, check_worker_timeout, resolve_cluster

    cluster = resolve_cluster(args.cluster, args.task_index)
    args.worker_timeout = check_worker_timeout(
        DEFAULT_WORKER_TIMEOUT if args.worker_timeout is None else args.worker_timeout)
    if cluster is not None:
        if args.cluster and os.environ.get("TF_CONFIG"):
            print("--cluster given: the TF_CONFIG environment variable is ignored")
        if not getattr(args, "debug", False):  # a lost worker is one EdgeError line, not pages of gRPC logs
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return cluster, distributed


def _pretrained_options(args: argparse.Namespace) -> None:
    """--backbone-weights / --init-from / --freeze-backbone-epochs checked before any work;
    ``args.backbone_weights`` becomes what :func:`convert.model.build_ssd` takes."""
    from convert import pretrained
    from convert.pretrained_sources import source_kind

    if args.freeze_backbone_epochs < 0:
        raise EdgeError(f"--freeze-backbone-epochs {args.freeze_backbone_epochs}: must be 0 or more")
    if args.init_from is not None:
        if args.backbone_weights not in (None, args.init_from):
            raise EdgeError(f"--init-from {args.init_from} loads the backbone too; drop --backbone-weights "
                            f"{args.backbone_weights}")
        if args.fpn:
            raise EdgeError(f"--init-from {args.init_from}: the export's heads sit on SSDLite extra layers, "
                            "not on FPN features; drop --fpn (or use --backbone-weights)")
        kind = source_kind(args.init_from)
        if kind != "odapi_frozen":
            raise EdgeError(f"--init-from {args.init_from}: heads are read from OD API frozen graphs (.pb) only "
                            f"(this is {kind}); use --backbone-weights for the backbone alone")
        args.backbone_weights = pretrained.InitFrom(args.init_from)
    elif args.backbone_weights is None:
        args.backbone_weights = "imagenet"
    elif args.backbone_weights not in ("imagenet", "none"):
        try:
            source_kind(args.backbone_weights)
        except EdgeError as exc:
            raise EdgeError(f"--backbone-weights {exc}") from None
    if args.freeze_backbone_epochs >= args.epochs:
        print(f"--freeze-backbone-epochs {args.freeze_backbone_epochs} >= --epochs {args.epochs}: "
              "the backbone stays frozen for the whole run")


def main(args: argparse.Namespace) -> int:
    batch_size = _parse_batch_size(args.batch_size)
    if not 160 <= args.input_size <= 320:
        raise EdgeError(f"--input-size {args.input_size}: expected 160..320")
    if not 0.0 <= args.val_split < 1.0:
        raise EdgeError(f"--val-split {args.val_split}: expected 0 <= fraction < 1")
    if args.epochs < 1:
        raise EdgeError(f"--epochs {args.epochs}: must be at least 1")
    distill = _distill_options(args)
    _check_train_paths(args)
    _pretrained_options(args)

    cluster, workers = _cluster(args)

    from convert.data.pseudo import images_only

    # The data and the teacher's labels are read before TensorFlow starts: a mismatch is one line in
    # a second, and it cannot be masked by TensorFlow having started already (as in a test process).
    pseudo = args.teacher is not None and images_only(args.data)
    if not pseudo:
        dataset, train_set, val = _datasets(args)
        config = _student_config(args, dataset.labels)
        if args.teacher is not None:
            from convert.distill import check_compatible, check_teacher_dir

            check_compatible(check_teacher_dir(args.teacher), config, f"--teacher {args.teacher}")

    # First TensorFlow contact of the process: GPU memory settings must come before anything else.
    from convert.gpu import configure_gpus, mirrored_strategy_if_needed

    setup = configure_gpus(memory_growth=not args.no_memory_growth, memory_limit_mb=args.memory_limit,
                           mixed_precision=args.mixed_precision)
    print(setup.describe())
    multi_worker = workers.create_strategy(cluster, args.worker_timeout) if cluster else None

    from convert.losses import LossConfig
    from convert.train import train

    teacher = None
    if pseudo:
        config, teacher, train_set, val = _pseudo_labelled(args)
    else:
        if args.teacher is not None:
            from convert.distill import Teacher

            teacher = Teacher.from_run(args.teacher, config)
    if teacher is not None:
        print(f"teacher {args.teacher}: {teacher.config.architecture.input_size} px, width "
              f"{teacher.config.architecture.width:g}, anchors by {teacher.mapping}; "
              f"--distill-weight {distill.weight:g} --temperature {distill.temperature:g}")
    loss = LossConfig(classification=args.loss)
    if batch_size is None:
        batch_size = _auto_batch_size(config, train_set, loss, setup, teacher, distill)
    if multi_worker is not None:  # batch_size is per worker: the smallest one measured wins
        from convert.worker_sync import agree_on_batch_size

        strategy, per_worker = multi_worker, agree_on_batch_size(multi_worker, batch_size, train_set, val)
        if per_worker != batch_size:
            print(f"batch size {per_worker} per worker: the smallest of the workers' ({batch_size} here)")
        batch_size = per_worker * workers.num_workers(strategy)
        print(workers.describe(strategy, per_worker))
        config.training["workers"] = workers.num_workers(strategy)
    else:
        strategy = mirrored_strategy_if_needed()
        if strategy.num_replicas_in_sync > 1:
            print(f"MirroredStrategy over {strategy.num_replicas_in_sync} GPUs; global batch {batch_size}")

    try:
        result = train(config, train_set, args.out, epochs=args.epochs, batch_size=batch_size,
                       steps_per_epoch=args.steps_per_epoch, val_dataset=val, seed=args.seed,
                       learning_rate=args.lr, loss=loss, backbone_weights=args.backbone_weights,
                       resume=args.resume, checkpoint_every=args.checkpoint_every,
                       augment=not args.no_augment, verbose=2 if args.quiet else 1, strategy=strategy,
                       mixed_precision=setup.mixed_precision, workers=args.workers,
                       freeze_backbone_epochs=args.freeze_backbone_epochs, teacher=teacher, distill=distill)
    except KeyboardInterrupt:
        return 130
    except workers.LostWorker as exc:  # one line, then out: TensorFlow's teardown could block for minutes
        if getattr(args, "debug", False):
            raise
        workers.exit_at_once(exc)
    summary = f"done: {result.steps} steps, checkpoint {result.checkpoint}"
    if multi_worker is not None and not workers.is_chief(multi_worker):
        summary = f"done: {result.steps} steps; the chief wrote the checkpoints"
    if result.val_map is not None:
        summary += f", val mAP@0.5 {result.val_map.map50:.3f} (mAP@[.5:.95] {result.val_map.map:.3f})"
    print(summary)
    return 0
