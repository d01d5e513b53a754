"""Edge device profiles: how much slower than this machine, and what compute and radio cost.

Compute times are measured here and multiplied by ``slowdown`` for the edge (the server is
this machine, ``slowdown`` 1). Energy is a first-order model (see ``docs/planner.md``):

    edge J = compute_w * (head + encode seconds at edge speed)
             + tx_j_per_byte * uplink bytes + rx_j_per_byte * downlink bytes
             + idle_w * seconds waiting for the answer

The figures are order-of-magnitude defaults from published measurements (a phone SoC at a
few watts, an LTE/Wi-Fi radio at about 0.1-1 uJ per bit), to be replaced by measured ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class DeviceProfile:
    """One edge device class."""

    name: str
    slowdown: float  #: edge compute time / this machine's
    compute_w: float  #: power while computing (W)
    tx_j_per_byte: float  #: radio energy per uplink byte (J)
    rx_j_per_byte: float  #: radio energy per downlink byte (J)
    idle_w: float  #: power while waiting for the server (W)
    note: str = ""

    def scaled(self, factor: float) -> DeviceProfile:
        """The same device ``factor`` times slower again (``--edge-slowdown``)."""
        return replace(self, slowdown=self.slowdown * factor)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_PROFILES: dict[str, DeviceProfile] = {}


def register_device(profile: DeviceProfile) -> DeviceProfile:
    """Add a profile to the registry (its name must be new)."""
    if profile.name in _PROFILES:
        raise ValueError(f"device profile {profile.name!r} already registered")
    _PROFILES[profile.name] = profile
    return profile


def get_device(name: str, slowdown: float = 1.0) -> DeviceProfile:
    """The profile called ``name``, made ``slowdown`` times slower."""
    try:
        profile = _PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown device profile {name!r}; known: {', '.join(_PROFILES)}") from None
    return profile.scaled(slowdown) if slowdown != 1.0 else profile


def available_devices() -> list[str]:
    return list(_PROFILES)


register_device(DeviceProfile("server", 1.0, 65.0, 0.0, 0.0, 20.0,
                              "this machine: edge as fast as the server"))
register_device(DeviceProfile("laptop", 2.0, 15.0, 0.1e-6 * 8, 0.05e-6 * 8, 2.0,
                              "laptop CPU, Wi-Fi (0.1 uJ/bit up)"))
register_device(DeviceProfile("phone", 8.0, 3.0, 0.5e-6 * 8, 0.2e-6 * 8, 0.5,
                              "phone SoC (CPU), LTE (0.5 uJ/bit up)"))
register_device(DeviceProfile("mcu", 200.0, 0.1, 0.2e-6 * 8, 0.1e-6 * 8, 0.01,
                              "microcontroller, low-power radio"))
