"""Triplet scripting: produce text triplets ``(T_r, T_c, T_t)`` as validated JSON.

* ``TemplateScripter`` (offline): a template set of objects (the world's shapes,
  colours, sizes, places) and edits (the world's edit kinds and phrasings, with
  weights) gives random reference scenes, edits and their descriptions.
* ``LLMScripter``: asks any OpenAI-compatible chat endpoint (vLLM, Ollama,
  llama.cpp server, hosted APIs: ``POST {base_url}/chat/completions``) for triplets
  in a JSON format, with few-shot examples drawn from the target domain; every answer
  is checked against ``RESPONSE_SCHEMA`` (and an optional domain check, e.g. "the world
  can render this description"); malformed or invalid answers are retried, duplicates
  dropped.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..errors import CirlabError
from ..world.edits import EDIT_KINDS, make_edit
from ..world.phrasing import REGISTERS, phrase
from ..world.scene import caption, random_scene
from .schema import schema_errors
from .triplets import RESPONSE_SCHEMA, TextTriplet

log = logging.getLogger(__name__)
DomainCheck = Callable[[TextTriplet], "str | None"]  # None when fine, else the reason to reject


# ---- offline ------------------------------------------------------------------------------------

@dataclass
class TemplateSet:
    """Which edits (with weights) and scenes to script; the objects are the world's vocabulary."""

    kinds: dict[str, float] = field(default_factory=lambda: {k: 1.0 for k in EDIT_KINDS})
    min_objects: int = 1
    max_objects: int = 5
    banned: list[tuple[str, str]] = field(default_factory=list)   # (colour, shape) never produced
    # modification-text registers (world.phrasing) and their weights; a scripter uses only the
    # phrasings a template writer has (never the human-only ones of the world's splits)
    registers: dict[str, float] = field(default_factory=lambda: {r: 1.0 for r in REGISTERS})

    def __post_init__(self) -> None:
        bad_r = [r for r in self.registers if r not in REGISTERS]
        if bad_r or not any(w > 0 for w in self.registers.values()):
            raise CirlabError(f"template set: registers {self.registers}: need positive weights of {REGISTERS}")
        bad = [k for k in self.kinds if k not in EDIT_KINDS]
        if bad:
            raise CirlabError(f"template set: unknown edit kind(s) {bad}; known: {', '.join(EDIT_KINDS)}")
        if not any(w > 0 for w in self.kinds.values()):
            raise CirlabError("template set: every edit kind has weight 0")


class TemplateScripter:
    """Random (scene, edit) pairs from a template set -> deduplicated, validated text triplets."""

    name = "template"

    def __init__(self, templates: TemplateSet | None = None, seed: int = 0) -> None:
        self.templates = templates or TemplateSet()
        self.seed = seed

    def script(self, n: int) -> list[TextTriplet]:
        ts = self.templates
        rng = random.Random(self.seed)
        banned = frozenset(tuple(x) for x in ts.banned)
        kinds = [k for k, w in ts.kinds.items() if w > 0]
        weights = [ts.kinds[k] for k in kinds]
        registers = [r for r in REGISTERS if ts.registers.get(r, 0) > 0]
        reg_weights = [ts.registers[r] for r in registers]
        out: list[TextTriplet] = []
        seen: set[tuple[str, str, str]] = set()
        tries = 0
        while len(out) < n:
            tries += 1
            if tries > 50 * n + 1000:
                raise CirlabError(f"template scripter: only {len(out)} distinct triplets of {n} requested")
            ref = random_scene(rng, ts.min_objects, ts.max_objects, banned)
            kind = rng.choices(kinds, weights)[0]
            res = make_edit(ref, kind, rng, banned)
            if res is None:
                continue
            register = rng.choices(registers, reg_weights)[0]
            words = phrase(ref, res.target, res.ops, res.text, register, rng, human=False)
            t = TextTriplet.from_json({"reference": caption(ref), "modification": words.text,
                                       "target": caption(res.target), "meta": {"kind": kind, "register": register}})
            if t.key not in seen:
                seen.add(t.key)
                out.append(t)
        return out


# ---- LLM ------------------------------------------------------------------------------------------

@dataclass
class LLMConfig:
    base_url: str                         # e.g. http://127.0.0.1:8000/v1
    model: str = "default"
    api_key: str | None = None            # default: $CIRLAB_LLM_API_KEY (sent as a Bearer token)
    temperature: float = 0.8
    per_request: int = 8                  # triplets asked for per request
    few_shot: int = 4                     # target-domain examples shown per request
    max_retries: int = 3                  # consecutive failed requests before giving up
    timeout: float = 60.0
    backoff: float = 0.5                  # seconds, doubled per consecutive failure
    response_format: str = "json_object"  # "json_object", "json_schema" or "none" (what the server supports)
    seed: int = 0


@dataclass
class ScriptStats:
    requests: int = 0
    failed_requests: int = 0
    malformed_json: int = 0
    schema_invalid: int = 0
    rejected_domain: int = 0
    duplicates: int = 0
    errors: list[str] = field(default_factory=list)


class LLMError(CirlabError):
    """The endpoint kept failing or answering invalid JSON."""


class LLMScripter:
    """Text triplets from an OpenAI-compatible chat endpoint."""

    name = "llm"

    def __init__(self, cfg: LLMConfig, examples: Sequence[TextTriplet] = (), domain_check: DomainCheck | None = None,
                 instructions: str = "") -> None:
        if not cfg.base_url.startswith(("http://", "https://")):
            raise CirlabError(f"LLM base_url {cfg.base_url!r}: expected http(s)://host:port/v1")
        if cfg.response_format not in ("json_object", "json_schema", "none"):
            raise CirlabError(f"LLM response_format {cfg.response_format!r}: use json_object, json_schema or none")
        self.cfg = cfg
        self.examples = list(examples)
        self.domain_check = domain_check
        self.instructions = instructions
        self.stats = ScriptStats()
        self._rng = random.Random(cfg.seed)

    # -- the request -------------------------------------------------------------------------
    def messages(self, count: int) -> list[dict[str, str]]:
        system = ("You write training data for composed image retrieval. A triplet is a description of a "
                  "reference image, a modification request, and a description of the target image (the reference "
                  "with the modification applied). Answer with JSON only, exactly in this JSON schema: "
                  + json.dumps(RESPONSE_SCHEMA) + (" " + self.instructions if self.instructions else ""))
        msgs = [{"role": "system", "content": system}]
        shots = self._rng.sample(self.examples, min(self.cfg.few_shot, len(self.examples)))
        if shots:
            msgs.append({"role": "user", "content": f"Write {len(shots)} triplets."})
            msgs.append({"role": "assistant", "content": json.dumps(
                {"triplets": [{k: v for k, v in s.to_json().items() if k != "meta"} for s in shots]})})
        msgs.append({"role": "user", "content": f"Write {count} new, different triplets in the same style."})
        return msgs

    def request_body(self, count: int) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.cfg.model, "messages": self.messages(count),
                                "temperature": self.cfg.temperature}
        if self.cfg.response_format == "json_object":
            body["response_format"] = {"type": "json_object"}
        elif self.cfg.response_format == "json_schema":
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "triplets", "schema": RESPONSE_SCHEMA}}
        return body

    def _post(self, body: dict[str, Any]) -> str:
        url = self.cfg.base_url.rstrip("/") + "/chat/completions"
        headers = {"Content-Type": "application/json"}
        key = self.cfg.api_key or os.environ.get("CIRLAB_LLM_API_KEY")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.cfg.timeout) as resp:
            payload = json.loads(resp.read().decode("utf-8"))
        try:
            return payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"{url}: not a chat-completions answer (no choices[0].message.content)") from None

    # -- parsing ---------------------------------------------------------------------------
    @staticmethod
    def parse(content: str) -> list[TextTriplet]:
        """The triplets in one answer; raises ``json.JSONDecodeError`` / ``ValueError`` on malformed / invalid ones."""
        text = content.strip()
        fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.S)
        if fence:
            text = fence.group(1)
        obj = json.loads(text)
        errs = schema_errors(obj, RESPONSE_SCHEMA)
        if errs:
            raise ValueError("; ".join(errs[:5]))
        return [TextTriplet.from_json(t, f"$.triplets[{n}]") for n, t in enumerate(obj["triplets"])]

    # -- the loop --------------------------------------------------------------------------
    def script(self, n: int) -> list[TextTriplet]:
        out: list[TextTriplet] = []
        seen = {e.key for e in self.examples}   # do not hand the few-shot examples back as new data
        failures = 0
        while len(out) < n:
            self.stats.requests += 1
            try:
                content = self._post(self.request_body(min(self.cfg.per_request, n - len(out))))
                got = self.parse(content)
            except json.JSONDecodeError as e:
                self.stats.malformed_json += 1
                failures = self._failed(failures, f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}")
                continue
            except ValueError as e:
                self.stats.schema_invalid += 1
                failures = self._failed(failures, f"invalid answer: {e}")
                continue
            except (urllib.error.URLError, OSError) as e:
                failures = self._failed(failures, f"request failed: {e}")
                continue
            new = 0
            for t in got:
                if t.key in seen:
                    self.stats.duplicates += 1
                    continue
                reason = self.domain_check(t) if self.domain_check else None
                if reason:
                    self.stats.rejected_domain += 1
                    continue
                seen.add(t.key)
                out.append(t)
                new += 1
                if len(out) >= n:
                    break
            failures = 0 if new else self._failed(failures, "no new valid triplets in the answer")
        return out

    def _failed(self, failures: int, message: str) -> int:
        self.stats.failed_requests += 1
        self.stats.errors.append(message)
        log.warning("LLM scripter: %s", message)
        failures += 1
        if failures > self.cfg.max_retries:
            raise LLMError(f"LLM endpoint {self.cfg.base_url}: {failures} failed requests in a row; last: {message}")
        if self.cfg.backoff:
            time.sleep(self.cfg.backoff * 2 ** (failures - 1))
        return failures


__all__ = ["LLMConfig", "LLMError", "LLMScripter", "ScriptStats", "TemplateScripter", "TemplateSet"]


# ---- the synthetic-to-human text gap -------------------------------------------------------------

def _frame(text: str) -> list[str]:
    """A text's words with the object vocabulary (colours, shapes, sizes, places, numbers) abstracted."""
    from ..world.phrasing import NUMBERS
    from ..world.scene import CELLS, COLOURS, SHAPES, SIZES

    slots = {**{c: "<colour>" for c in COLOURS}, **{s: "<shape>" for s in SHAPES}, **{s: "<size>" for s in SIZES},
             **{w: "<place>" for c in CELLS for w in c.split()}, **{n: "<number>" for n in NUMBERS if n != "no"}}
    return [slots.get(w, w) for w in re.findall(r"[a-z0-9]+|[^\sa-z0-9]", text.lower())]


def text_gap(human: Sequence[str], synthetic: Sequence[str]) -> dict[str, float]:
    """How much of the human phrasing a synthetic text set cannot produce (object words abstracted).

    ``unseen_phrasing``: share of human texts whose abstracted form no synthetic text has;
    ``unseen_trigram``: share with a word trigram no synthetic text has; ``unseen_word``: share with a
    word no synthetic text uses."""
    syn_frames = {tuple(_frame(t)) for t in synthetic}
    syn_tri = {tuple(f[i:i + 3]) for f in syn_frames for i in range(max(1, len(f) - 2))}
    syn_words = {w for f in syn_frames for w in f}
    frames = [_frame(t) for t in human]
    n = max(1, len(frames))
    return {"human_texts": len(frames), "synthetic_texts": len(synthetic),
            "unseen_phrasing": round(100.0 * sum(tuple(f) not in syn_frames for f in frames) / n, 2),
            "unseen_trigram": round(100.0 * sum(any(tuple(f[i:i + 3]) not in syn_tri for i in range(max(1, len(f) - 2)))
                                                for f in frames) / n, 2),
            "unseen_word": round(100.0 * sum(any(w not in syn_words for w in f) for f in frames) / n, 2)}
