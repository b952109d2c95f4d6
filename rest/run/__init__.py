"""Running phases: the run directory and its manifest, a phase's own process, fault injection, schedules, stopping."""
