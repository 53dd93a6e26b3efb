"""Core math: noise schedules and sigma distributions, f-divergences, guidance, samplers (no networks)."""
