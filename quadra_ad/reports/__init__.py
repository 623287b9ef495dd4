"""Human-readable results written into the run folder."""
