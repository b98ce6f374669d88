"""HTTP service and search page over a ``Retriever`` (needs the ``serve`` extra: fastapi, uvicorn).

    from cirlab.retrieval import Retriever
    from cirlab.serve import create_app
    app = create_app(Retriever.from_index("runs/index"))   # any ASGI server runs it
"""
from .errors import RequestError
from .limits import ServeLimits

__all__ = ["RequestError", "ServeLimits", "create_app"]


def __getattr__(name: str):  # fastapi is imported only when the app is built
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(name)
