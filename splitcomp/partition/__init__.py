"""Cut a network in two at a module or graph node: the head runs on the edge, the tail on
the server, and exactly the tensors that cross the cut are sent.

``split(model, "layer2", x) -> (head, tail)`` with ``tail(*head(x))`` equal to ``model(x)`` bit
for bit; ``candidates(model, x)`` lists every cut with its tensor shapes, bytes, head
parameters and FLOPs (``format_candidates`` prints them). Models are traced with ``torch.fx``,
or ``torch.export`` when fx cannot (Hugging Face language models); ``Partitioner`` keeps one
trace for several cuts.

What crosses (see :mod:`.cut`): every activation computed before the cut and used after it,
plus model inputs still used after it (e.g. a caller's attention mask); never weights. Tensors
the tail can rebuild itself (causal masks, position ids, rotary tables, masks derived from a
smaller input) are rebuilt there, and sizes are read off the tensors that do cross.
"""

from .api import Partitioner, SplitInfo, split
from .candidates import CutPoint, candidates, format_candidates
from .costs import FLOPS_NOTE, count_flops
from .cut import CrossingTensor, SplitError
from .measure import TensorSpec

__all__ = [
    "FLOPS_NOTE", "CrossingTensor", "CutPoint", "Partitioner", "SplitError", "SplitInfo",
    "TensorSpec", "candidates", "count_flops", "format_candidates", "split",
]
