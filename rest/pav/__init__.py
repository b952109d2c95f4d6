"""Process advantage verifiers (PAV): Monte Carlo step values under a prover policy."""
