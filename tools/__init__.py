"""The programs around the method files: comparisons (compare, protocols, stats, tables), speed and memory (bench),
serving prompt files and run folders (serve, predict), CKA (cka), cluster jobs (cluster). They import the core
(runs.py, methods.py, ...); the core never imports them.
Run each from the project root: python tools/compare.py --help."""
