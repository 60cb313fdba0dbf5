"""A fake of EvoLink's gpt-image-1.5 asynchronous API for tests, demos and benchmarks."""

from .app import Simulator
from .config import SimulatorConfig, SimulatorFaults

__all__ = ["Simulator", "SimulatorConfig", "SimulatorFaults"]
