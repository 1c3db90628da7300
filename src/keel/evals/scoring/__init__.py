"""The scorer implementations behind `keel.evals.scorers`."""
