"""How loud cirlab and the libraries it drives are: one place for log levels.

By default (``cirlab ...``) cirlab's own messages are shown at INFO and the chatter of third-party
libraries is hidden: faiss's loader reporting every CPU-specific library it could not load (it then
loads the generic one, which is fine), Milvus Lite's server start/stop lines and the
"Method not implemented" traceback its gRPC server logs when pymilvus asks it for a timestamp
(an optional call pymilvus falls back from), Ray's INFO logs, and transformers' loading bars.
``cirlab -v`` turns all of them back on (and sets DEBUG everywhere).
"""
from __future__ import annotations

import logging
import os
import sys

# logger -> level it is held at unless verbose
QUIET_LOGGERS = {
    "faiss": logging.WARNING,
    "faiss.loader": logging.WARNING,
    "milvus_lite": logging.WARNING,
    "ray": logging.WARNING,
    "ray.data": logging.WARNING,
    "transformers": logging.ERROR,
    "httpx": logging.WARNING,
}

_verbose = False


def verbose() -> bool:
    return _verbose


class _MilvusLiteUnimplemented(logging.Filter):
    """Drops the gRPC server's traceback for an RPC Milvus Lite does not implement."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _verbose or not record.exc_info:
            return True
        return not (record.exc_info[0] is NotImplementedError and "Method not implemented" in str(record.exc_info[1]))


_milvus_filter = _MilvusLiteUnimplemented()


def quiet_milvus_lite() -> None:
    """Called by the Milvus index: hide the harmless ``AllocTimestamp`` traceback of Milvus Lite."""
    logger = logging.getLogger("grpc._server")
    if _milvus_filter not in logger.filters:
        logger.addFilter(_milvus_filter)


def ray_logging_level() -> int:
    """The ``logging_level`` keyword for Ray's init: Ray's INFO lines only when verbose."""
    return logging.DEBUG if _verbose else logging.WARNING


def configure(verbose: bool = False) -> None:
    """Set up logging for the command line: cirlab at INFO (DEBUG and everything else on with ``verbose``)."""
    global _verbose
    _verbose = verbose
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s")
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else level)
    if verbose:
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")      # read by transformers when imported
    if "transformers" in sys.modules:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
