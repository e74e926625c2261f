"""The library map in JupyterLab: the `cml map` page as a widget (anywidget), answered by the notebook's kernel.

The page's code (cml/playlist/static/map.js) is the same; where the page asks the local server over HTTP, the
widget asks the kernel over the Jupyter comm, and `cml.playlist.server.Actions` answers both. plotly.js (from the
plotly package) and the audio travel over the comm too, as messages rather than widget state (a saved
notebook stays small), so the widget works offline and wherever JupyterLab runs: the browser needs no
access to the kernel's files or ports.
"""
from __future__ import annotations

from pathlib import Path

import anywidget

from cml.playlist.library_map import LibraryMap, build_map
from cml.playlist.server import AUDIO_TYPES, STATIC, Actions, plotly_js
from cml.tables import FeatureTable


class LibraryMapWidget(anywidget.AnyWidget):
    """Display it (last expression of a cell) to draw the map; `actions` holds what it answers with."""

    _esm = (STATIC / "map.js").read_text(encoding="utf-8")

    def __init__(self, actions: Actions, **kwargs):
        super().__init__(**kwargs)
        self.actions = actions
        self.on_msg(self._answer)

    def answer(self, content: dict) -> tuple[dict, list[bytes]]:
        """The reply to one request of the page: ``{"id", "name", "body"}`` -> (JSON result, binary buffers)."""
        name, body = content.get("name"), content.get("body") or {}
        if name == "plotly":  # asked once per page: not widget state, which a saved notebook would keep
            return {"type": "text/javascript"}, [plotly_js()]
        if name != "audio":
            return self.actions.call(str(name), body), []
        track = self.actions.library.audio_path(int(body.get("row", -1)))
        try:
            return {"type": AUDIO_TYPES.get(track.suffix.lower(), "application/octet-stream")}, [track.read_bytes()]
        except (AttributeError, OSError):  # no playable file (None) or it cannot be read
            return {"error": "no audio for this track"}, []

    def _answer(self, _widget, content: dict, _buffers) -> None:
        result, buffers = self.answer(content)
        self.send({"id": content.get("id"), "result": result}, buffers)


def show_map(table: FeatureTable, *, clusters: str | Path | None = None, projection: str = "auto", seed: int = 0,
             out_dir: str | Path = "playlists", env_file: str | Path = ".env") -> LibraryMapWidget:
    """The map of ``table`` as a notebook widget (arguments as `cml map`'s options)."""
    library: LibraryMap = build_map(table, clusters=clusters, projection=projection, seed=seed)
    return LibraryMapWidget(Actions(library, out_dir, env_file))
