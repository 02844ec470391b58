"""What DVC runs: the stages, the run set, reports, comparisons, diagnostics, ablations, sweeps, bench."""
