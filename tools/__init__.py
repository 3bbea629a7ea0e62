"""The programs around the method files: comparisons (compare, protocols, stats, tables), speed and memory (bench),
prompt files and serving (serve, predict), CKA (cka), figures, and the run directory train.py writes (rundir).
Run each from the project root: python tools/compare.py --help."""
