"""`miniplaces serve`: a local web page to explore trained models image by image.

Needs the `serve` extra (`pip install miniplaces[serve]`, which brings Werkzeug). The page
browses images with their top-5, shows saliency maps and runs attacks; with two checkpoints it
puts the models side by side and tells whether an adversarial image transfers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from miniplaces.serve.app import ServeApp, Server, build_app

__all__ = ["ServeApp", "Server", "build_app"]


def __getattr__(name: str) -> Any:
    # Werkzeug is an optional extra: import it only when the server is asked for.
    if name in __all__:
        from miniplaces.serve import app

        return getattr(app, name)
    raise AttributeError(name)
