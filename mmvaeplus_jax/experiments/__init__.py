"""Experiments over many runs: the study driver, its records and report, and
`load_run` (a finished run's model and params)."""
