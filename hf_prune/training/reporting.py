"""How pruning events reach the Trainer's loggers (report_to integrations, the console) and `state.log_history`.

The Trainer calls its `report_to` integrations (TensorBoard, W&B, ...) before user callbacks, and hands
callbacks no Trainer, so a callback cannot add metrics to what the integrations see. Instead:

- at an event the callback queues its `hf_prune/*` metrics here (`EventLog`) and sets `control.should_log`,
  so the Trainer logs that step;
- `PruningLogMixin.log` (in `PruningTrainer` and `DistillationTrainer`) merges the queued metrics into
  that log call before any callback runs: every integration, the console and `log_history` get them;
- with a plain `Trainer` the callback's own `on_log` takes them instead: `log_history` and the console
  (whose callbacks run after user callbacks) get them, the integrations do not;
- an event run when training ends (after the Trainer's last log call) goes to `log_history` only.
"""

from __future__ import annotations

import logging

from transformers import Trainer

logger = logging.getLogger(__name__)


def metrics_of(record: dict) -> dict:
    """An event record without its `step` (the Trainer adds the step to whatever it logs)."""
    return {k: v for k, v in record.items() if k != "step"}


class EventLog:
    """Event records waiting for the Trainer's next log call."""

    def __init__(self):
        self.pending: list[dict] = []

    def add(self, record: dict) -> None:
        self.pending.append(record)
        logger.info("hf_prune event %s at step %s: %s", record.get("hf_prune/event"), record.get("step"),
                    metrics_of(record))

    def take(self) -> list[dict]:
        """The queued records, oldest first; the queue is left empty."""
        records, self.pending = self.pending, []
        return records

    def merge_into(self, logs: dict, history: list[dict]) -> None:
        """Put the latest queued event's metrics into `logs`; earlier ones of the same step go to `history` alone."""
        records = self.take()
        history.extend(records[:-1])
        if records:
            logs.update(metrics_of(records[-1]))

    def flush(self, history: list[dict], logs: dict | None = None) -> None:
        """Without the mixin: every queued record to `history`, the latest one's metrics into `logs` too."""
        records = self.take()
        history.extend(records)
        if records and logs is not None:
            logs.update(metrics_of(records[-1]))


class PruningLogMixin:
    """Trainer mixin: queued `hf_prune/*` event metrics join the next `log()` call, so report_to integrations,
    the console and `state.log_history` all see them. Put it first: `class MyTrainer(PruningLogMixin, Trainer)`.
    """

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        for callback in self.callback_handler.callbacks:
            queue = getattr(callback, "event_log", None)
            if isinstance(queue, EventLog):
                queue.merge_into(logs, self.state.log_history)
        super().log(logs, *args, **kwargs)


class PruningTrainer(PruningLogMixin, Trainer):
    """A Trainer whose loggers (report_to integrations, console, log_history) receive HeadPruningCallback's events."""
