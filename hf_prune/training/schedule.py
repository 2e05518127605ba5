"""When the callback's pruning events happen, and how much of the final targets each one reaches.

Events are spread evenly from `pruning_start_step` to `pruning_end_step`; the removed share grows
linearly or cubically (fast first, Zhu & Gupta 2017) and reaches the targets at the last event.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import PruningConfig

# What the callback uses where the config leaves a schedule field None (the command line picks its own).
DEFAULT_START_STEP = 0
DEFAULT_EVENTS = 1


def schedule_fraction(event: int, num_events: int, schedule: str) -> float:
    """Share of the final sparsity reached after event `event` (1-based) of `num_events`."""
    t = event / num_events
    return t if schedule == "linear" else 1.0 - (1.0 - t) ** 3


@dataclass(frozen=True)
class Schedule:
    """The callback's event schedule: `events` events from step `start` to step `end`, growing as `kind`."""

    start: int
    end: int | None
    events: int
    kind: str

    @classmethod
    def from_config(cls, config: PruningConfig) -> Schedule:
        """The schedule a config asks for, with the callback's defaults (start 0, one event)."""
        start = DEFAULT_START_STEP if config.pruning_start_step is None else config.pruning_start_step
        events = DEFAULT_EVENTS if config.pruning_events is None else config.pruning_events
        end = config.pruning_end_step
        if events > 1 and end is None:
            raise ValueError(f"an iterative schedule (pruning_events={events}) needs pruning_end_step (end_step): "
                             f"the step of the last event")
        if end is not None and end < start:
            raise ValueError(f"pruning_end_step ({end}) must be >= pruning_start_step ({start})")
        return cls(start, end, events, config.pruning_schedule)

    def steps(self) -> list[int]:
        """Global steps at which the events happen (one-shot at `start` with a single event)."""
        if self.events == 1:
            return [self.start]
        span = self.end - self.start
        return [self.start + round(span * k / (self.events - 1)) for k in range(self.events)]

    def fraction(self, event: int) -> float:
        """Share of the final targets reached after event `event` (1-based)."""
        return schedule_fraction(event, self.events, self.kind)

    def check_fits(self, max_steps: int | None) -> None:
        """ValueError when the last event comes after the training's last step."""
        last = self.steps()[-1]
        if max_steps and max_steps > 0 and last > max_steps:
            raise ValueError(f"the last pruning event is at step {last}, beyond max_steps={max_steps}: lower "
                             f"pruning_end_step (end_step) or train longer")
