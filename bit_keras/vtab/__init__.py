"""VTAB-1k, the BiT paper's headline transfer benchmark: 19 tasks as data, their inputs, and the runner."""

from bit_keras.vtab.tasks import BY_NAME, GROUPS, PROTOCOLS, TASKS, Task, select

__all__ = ["BY_NAME", "GROUPS", "PROTOCOLS", "TASKS", "Task", "select"]
