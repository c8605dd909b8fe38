"""Signals other parts of the platform (dashboard, usage) can listen to."""

from django.dispatch import Signal

# Sent after an operation's outcome is committed, from the worker that ran it.
# Keyword arguments: operation (the Operation row, refreshed), metrics (dict[str, float]).
operation_finished = Signal()

# Sent after a training run is released (its session ended or an operator stopped it),
# once the release is committed. Keyword arguments: run_id (str).
run_released = Signal()
