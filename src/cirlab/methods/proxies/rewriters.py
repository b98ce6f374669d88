"""Rewriters: (reference description, modification text) -> a description of the target.

- ``llm:BASE_URL[,model=NAME]``: any OpenAI-compatible chat endpoint, through the DAIG issue's client
  (``cirlab.synth.scripting``: ``LLMConfig``, ``LLMScripter._post``); one request per query, the answer
  is the target description (JSON ``{"target": ...}`` or plain text).
- ``lexical``: **the world's analog of an LLM rewrite** (not an oracle): reads the reference description
  and the human text as English with its own small lexicon (``cirlab.methods.lexical``), in any register,
  imperfectly.
- ``world``: **an oracle** (upper bound, not a method): a rule-based parser of the world's edit phrasings
  (the grammar that generated the procedural texts) that applies the edit to the scene the reference
  description names and describes the result. A clause it cannot parse or resolve is skipped (counted in
  ``stats``); the reference description is returned unchanged when nothing applied.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ...errors import CirlabError
from ...registry import Registry, split_spec
from ...registry import parse_spec_options as parse_options
from ...world.scene import CELLS, COLOURS, SHAPES, SIZES, Obj, Scene, caption


@runtime_checkable
class Rewriter(Protocol):
    def rewrite(self, descriptions: list[str], texts: list[str]) -> list[str]: ...

    def config(self) -> dict[str, Any]: ...


REWRITERS: Registry[Rewriter] = Registry("rewriter")


def create_rewriter(spec: str) -> Rewriter:
    name, arg = split_spec(spec)
    rw = REWRITERS.get(name)(arg)
    rw.spec = spec
    return rw


# ---- the world's analog: rule-based edit application ------------------------------------------------

def _alt(words: Any) -> str:
    return "|".join(sorted((re.escape(w) for w in words), key=len, reverse=True))


_C, _S, _Z, _P = _alt(COLOURS), _alt(SHAPES), _alt(SIZES), _alt(CELLS)
_REF = rf"the (?:(?P<rz>{_Z}) )?(?P<rc>{_C}) (?P<rs>{_S})(?: at the (?P<rp>{_P}))?"
_NOUN = rf"an? (?P<z>{_Z}) (?P<c>{_C}) (?P<s>{_S})"
_WHERE = rf"(?:at|in) the (?P<p>{_P})"

# (pattern, operation); patterns are matched in full against one clause
_CLAUSES: list[tuple[str, str]] = [
    (rf"(?:add|put|insert|place) {_NOUN} {_WHERE}", "add"),
    (rf"(?:add {_NOUN} anywhere|put {_NOUN} somewhere|also show {_NOUN}|add {_NOUN} to an empty spot)", "add-any"),
    (rf"(?:remove|take away|delete|get rid of|without) {_REF}", "remove"),
    (rf"(?:make|paint|turn) {_REF} (?P<c>{_C})", "colour"),
    (rf"change the colour of {_REF} to (?P<c>{_C})", "colour"),
    (rf"{_REF} should be (?P<c>{_C})", "colour"),
    (rf"(?:turn {_REF} into|change {_REF} to|make {_REF}) an? (?P<s>{_S})", "shape"),
    (rf"replace {_REF} with an? (?P<c>{_C}) (?P<s>{_S})", "shape"),
    (rf"(?:make {_REF} (?:bigger|large)|enlarge {_REF}|{_REF} should be larger)", "large"),
    (rf"(?:make {_REF} (?:smaller|small)|shrink {_REF}|{_REF} should be smaller)", "small"),
    (rf"(?:move|shift) {_REF} to the (?P<p>{_P})", "move"),
    (rf"(?:put {_REF}|{_REF} should be) {_WHERE}", "move"),
    (rf"(?:move {_REF} somewhere else|move {_REF} to another place|put {_REF} in a different spot)", "move-any"),
]
_SPLIT = re.compile(r", then |; | and also | and ")


def _group(m: re.Match, name: str) -> str | None:
    """A named group that may occur in several alternatives (Python numbers them ``name``, ``name_2``...)."""
    return next((v for k, v in m.groupdict().items() if v is not None and re.fullmatch(rf"{name}(_\d+)?", k)), None)


def _unique_groups(pattern: str) -> str:
    """Rename repeated named groups (``(?P<rc>`` twice) to ``rc``, ``rc_2``, ... so one regex can hold them."""
    seen: dict[str, int] = {}

    def rename(m: re.Match) -> str:
        name = m.group(1)
        seen[name] = seen.get(name, 0) + 1
        return f"(?P<{name}>" if seen[name] == 1 else f"(?P<{name}_{seen[name]}>"

    return re.sub(r"\(\?P<(\w+)>", rename, pattern)


_COMPILED = [(re.compile(_unique_groups(p)), op) for p, op in _CLAUSES]


def _resolve(scene: Scene, m: re.Match) -> Obj | None:
    colour, shape, size, where = _group(m, "rc"), _group(m, "rs"), _group(m, "rz"), _group(m, "rp")
    cands = [o for o in scene.objects if o.colour == colour and o.shape == shape
             and (size is None or o.size == size) and (where is None or o.where == where)]
    return cands[0] if len(cands) == 1 else None


def apply_clause(scene: Scene, clause: str) -> Scene | None:
    """The scene after one edit clause, or None when the clause is not understood or does not fit."""
    text = clause.strip().lower().rstrip(".")
    for rx, op in _COMPILED:
        m = rx.fullmatch(text)
        if m is None:
            continue
        try:
            if op in ("add", "add-any"):
                free = scene.free_cells()
                cell = CELLS.index(_group(m, "p")) if op == "add" else (free[0] if free else -1)
                if cell not in free:
                    return None
                return scene.add(Obj(cell, _group(m, "s"), _group(m, "c"), _group(m, "z")))
            o = _resolve(scene, m)
            if o is None:
                return None
            if op == "remove":
                return scene.replace_obj(o, None)
            if op == "colour":
                return scene.replace_obj(o, Obj(o.cell, o.shape, _group(m, "c"), o.size))
            if op == "shape":
                return scene.replace_obj(o, Obj(o.cell, _group(m, "s"), _group(m, "c") or o.colour, o.size))
            if op in ("large", "small"):
                return scene.replace_obj(o, Obj(o.cell, o.shape, o.colour, op))
            free = [c for c in scene.free_cells() if c != o.cell]
            cell = CELLS.index(_group(m, "p")) if op == "move" else (free[0] if free else -1)
            if cell not in free:
                return None
            return scene.replace_obj(o, Obj(cell, o.shape, o.colour, o.size))
        except ValueError:
            return None
    return None


@dataclass
class RewriteStats:
    queries: int = 0
    unparsed_descriptions: int = 0
    clauses: int = 0
    failed_clauses: int = 0
    examples: list[str] = field(default_factory=list)


class WorldRuleRewriter:
    """World analog of the LLM rewrite: parse the reference description and the edit, apply, describe."""

    def __init__(self) -> None:
        self.stats = RewriteStats()

    def rewrite_one(self, description: str, text: str) -> str:
        from ...synth.world import parse_description

        self.stats.queries += 1
        try:
            scene = parse_description(description)
        except ValueError:
            self.stats.unparsed_descriptions += 1
            return description
        for clause in _SPLIT.split(text.strip().lower()):
            self.stats.clauses += 1
            new = apply_clause(scene, clause)
            if new is None:
                self.stats.failed_clauses += 1
                if len(self.stats.examples) < 5:
                    self.stats.examples.append(f"{clause!r} on {description!r}")
                continue
            scene = new
        return caption(scene) if scene.objects else description

    def rewrite(self, descriptions: list[str], texts: list[str]) -> list[str]:
        return [self.rewrite_one(d, t) for d, t in zip(descriptions, texts)]

    def config(self) -> dict[str, Any]:
        return {"name": "world", "analog": True,
                "oracle": "parses the edit grammar that generated the world's queries (procedural register)"}


@REWRITERS.register("world", help="ORACLE (upper bound): applies the world's own edit grammar to the reference "
                                  "description by rules")
def _world(arg: str) -> Rewriter:
    return WorldRuleRewriter()


@REWRITERS.register("lexical", help="WORLD ANALOG of an LLM rewrite, not an oracle: reads the reference description "
                                    "and the human text as English (own lexicon; no world grammar)")
def _lexical(arg: str) -> Rewriter:
    from ..lexical import LexicalRewriter

    if arg:
        raise CirlabError(f"lexical rewriter: takes no argument, got {arg!r}")
    return LexicalRewriter()


# ---- an LLM through the OpenAI-compatible client ------------------------------------------------------

SYSTEM_PROMPT = ("You edit image descriptions. Given the description of a reference image and a modification "
                 "request, write the description of the image after the modification. Keep everything the "
                 "request does not change. Answer with JSON only: {\"target\": \"<description>\"}.")


class LLMRewriter:
    """Target descriptions from an OpenAI-compatible chat endpoint (``cirlab.synth.scripting``'s client)."""

    def __init__(self, cfg: Any, system: str = SYSTEM_PROMPT) -> None:
        from ...synth.scripting import LLMScripter

        self.cfg = cfg
        self.client = LLMScripter(cfg)   # validates base_url/response_format; ``_post`` does the request
        self.system = system
        self.failures = 0

    def messages(self, description: str, text: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system},
                {"role": "user", "content": f"Reference: {description}\nModification: {text}"}]

    @staticmethod
    def parse(content: str) -> str:
        text = content.strip()
        fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.DOTALL)
        if fence:
            text = fence.group(1).strip()
        if text.startswith("{"):
            obj = json.loads(text)
            if not isinstance(obj, dict) or not isinstance(obj.get("target"), str) or not obj["target"].strip():
                raise ValueError(f"answer {content[:200]!r}: expected {{\"target\": \"<non-empty string>\"}}")
            return obj["target"].strip()
        if not text:
            raise ValueError("empty answer")
        return text.strip('"').strip()

    def rewrite_one(self, description: str, text: str) -> str:
        import urllib.error

        body: dict[str, Any] = {"model": self.cfg.model, "messages": self.messages(description, text),
                                "temperature": self.cfg.temperature}
        if self.cfg.response_format == "json_object":
            body["response_format"] = {"type": "json_object"}
        last = ""
        for _ in range(self.cfg.max_retries + 1):
            try:
                return self.parse(self.client._post(body))
            except (ValueError, urllib.error.URLError, OSError) as e:   # JSONDecodeError is a ValueError
                self.failures += 1
                last = str(e)
        raise CirlabError(f"LLM rewriter {self.cfg.base_url}: no valid answer after {self.cfg.max_retries + 1} "
                          f"requests; last error: {last}")

    def rewrite(self, descriptions: list[str], texts: list[str]) -> list[str]:
        return [self.rewrite_one(d, t) for d, t in zip(descriptions, texts)]

    def config(self) -> dict[str, Any]:
        return {"name": "llm", "base_url": self.cfg.base_url, "model": self.cfg.model,
                "temperature": self.cfg.temperature}


@REWRITERS.register("llm", help="an OpenAI-compatible chat endpoint; llm:BASE_URL[,model=NAME,temperature=T]")
def _llm(arg: str) -> Rewriter:
    from ...synth.scripting import LLMConfig

    url, opts = parse_options(arg, {"model": str, "temperature": float, "response_format": str}, "llm rewriter")
    if not url:
        raise CirlabError("llm rewriter: give the endpoint, e.g. llm:http://127.0.0.1:8000/v1")
    return LLMRewriter(LLMConfig(base_url=url, temperature=opts.pop("temperature", 0.0), backoff=0.0, **opts))


__all__ = [
    "REWRITERS",
    "LLMRewriter",
    "Rewriter",
    "WorldRuleRewriter",
    "apply_clause",
    "create_rewriter",
    "parse_options",
]
