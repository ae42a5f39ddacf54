"""The trainer's parts: optimiser, schedules and FLOPs, checkpoints, distributed switches, the recipe dataclass,
the run directory and the growth recipe's state. May import every subpackage above, never a verb."""
