"""Plan a split deployment: measure what each cut and codec costs here (:mod:`.profile`),
model the link (:mod:`.channel`) and the edge device (:mod:`.devices`), cost every option and
choose one (:mod:`.planner`), write it down (:mod:`.planfile`), check it on loopback
(:mod:`.validate`). ``splitcomp plan`` (:mod:`splitcomp.cli.plan`) does all of it; the cost
model is in ``docs/planner.md``.
"""

from .channel import BandwidthTrace, Channel, Pacer, parse_duration, parse_rate
from .devices import DeviceProfile, available_devices, get_device, register_device
from .planfile import Plan, load_plan, plan_from_row, save_plan
from .planner import OBJECTIVES, PlanRow, build_rows, choose, format_table, plan_front
from .profile import CodecOption, CutProfile, ModelProfile, Profiler, TrainedProfile

__all__ = [
    "OBJECTIVES", "BandwidthTrace", "Channel", "CodecOption", "CutProfile", "DeviceProfile",
    "ModelProfile", "Pacer", "Plan", "PlanRow", "Profiler", "TrainedProfile",
    "available_devices", "build_rows", "choose", "format_table", "get_device", "load_plan",
    "plan_front", "parse_duration", "parse_rate", "plan_from_row", "register_device",
    "save_plan",
]
