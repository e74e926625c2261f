"""The progress bar of every long `cml` loop (`from cml.progress import tqdm`), in a terminal and in a notebook."""
from __future__ import annotations

import importlib.util


def _progress_bar() -> type:
    """tqdm.auto's bar without its red "IProgress not found" warning. In a Jupyter kernel tqdm.auto picks the
    widget bar, which needs ipywidgets (it comes with anywidget); without it, tqdm warns and falls back to the
    text bar. Looking for ipywidgets first (without importing it: `cml scan` starts fast) gives the same bars
    silently: widgets where a notebook can draw them, else the text bar, which a notebook shows too."""
    if importlib.util.find_spec("ipywidgets") is None:
        from tqdm.std import tqdm
    else:
        from tqdm.auto import tqdm
    return tqdm


tqdm = _progress_bar()
