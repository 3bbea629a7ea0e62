"""matplotlib for the tools' figures (tables.py, cka.py, theory/rank_by_depth.py), without a display."""


def pyplot():
    """matplotlib's pyplot, drawing into files only."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt
