"""Pure decisions: the phase machine, pre-flight checks, conditions, progress, deadlines."""
