"""Training around a frozen model: learned bottlenecks with entropy models, on a fixed split.

Data: :func:`split_dataset` cuts a labelled dataset into a train part and a disjoint eval part
(recorded in every checkpoint, so evaluation can refuse trained-on images). Model:
:class:`Bottleneck` (encoder, :class:`EntropyBottleneck`, decoder) between a model's head and
its frozen tail. Training: :func:`train_bottleneck` (feature distillation, then KD on logits,
plus a rate term), optionally for several frozen tails from one latent (:mod:`.tails`).
Checkpoints: :func:`save_checkpoint` / :func:`load_checkpoint` (plain files);
:func:`open_checkpoints` opens them beside the model they were trained around. The
latent travels through the ``bottleneck`` codec.
"""

from .bottleneck import Bottleneck, EdgeModel, ServerModel, trainable_head
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, read_meta, save_checkpoint
from .ckpt_eval import evaluate_checkpoint
from .entropy_model import EntropyBottleneck
from .splits import SplitRecord, TrainedOnError, eval_part, reserve_part, split_dataset
from .tails import TailRecord, Teacher, crossing_shapes, open_tails
from .trained import (
    Trained,
    check_untrained,
    open_checkpoints,
    teacher_model,
    untrained_part,
)
from .trainer import History, Student, TrainConfig, kd_loss, train_bottleneck

__all__ = [
    "Bottleneck", "Checkpoint", "CheckpointError", "EdgeModel", "EntropyBottleneck", "History",
    "ServerModel", "SplitRecord", "Student", "TailRecord", "Teacher", "TrainConfig", "Trained",
    "TrainedOnError", "check_untrained", "crossing_shapes", "eval_part", "evaluate_checkpoint",
    "kd_loss", "load_checkpoint", "open_checkpoints", "open_tails", "read_meta",
    "reserve_part", "save_checkpoint", "split_dataset", "teacher_model", "train_bottleneck",
    "trainable_head", "untrained_part",
]
