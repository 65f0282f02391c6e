"""Worker side of rightsweep: everything that runs inside one trial."""
