"""A start-up warning for detectron2 config keys that an RS module replaces by its recipe.

RS heads drop sampling and the smooth-L1 / focal losses, so some of detectron2's keys have
no effect under them. Rather than ignore a user's setting without a word, each RS module
names the keys it does not read and warns once when a config sets one of them to anything
but detectron2's default.
"""
import logging
from functools import lru_cache
from typing import Any, Sequence

from detectron2.config import CfgNode, get_cfg
from detectron2.utils.logger import log_first_n

__all__ = ["warn_ignored_keys"]


@lru_cache(maxsize=1)
def _defaults() -> CfgNode:
    """detectron2's defaults with rs_detectron2's keys (``add_rs_config``) added."""
    from ..config import add_rs_config  # the config module imports the heads: not at import

    cfg = get_cfg()
    add_rs_config(cfg)
    return cfg


def _lookup(cfg: CfgNode, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def warn_ignored_keys(cfg: CfgNode, keys: Sequence[str], module: str, why: str) -> None:
    """Log one warning (once per distinct message) listing the ``keys`` (full dotted names)
    that ``cfg`` sets away from their defaults (detectron2's, or rs_detectron2's for its own
    keys) although ``module`` does not read them (``why`` says what replaces them)."""
    defaults = _defaults()
    changed = [(k, _lookup(cfg, k)) for k in keys if _lookup(cfg, k) != _lookup(defaults, k)]
    if not changed:
        return
    settings = ", ".join(f"{k} = {v!r}" for k, v in changed)
    log_first_n(
        logging.WARNING,
        f"{module} ignores {settings} ({why}); they have no effect on this model.",
        n=1,
        name="rs_detectron2",
        key="message",
    )
