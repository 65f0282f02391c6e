"""Driver side of rightsweep: config, Ray cluster, sweeps, tracking, Pareto fronts."""
