"""TIP-style restoration prompts: render and parse, for every registered degradation type.

The grammar is generated from the registry: a type contributes a type-only clause (its
verb, "Deblur") and a parameter clause (its template, "Deblur with sigma {sigma}"). Clauses
end with ";". ``parse(render(p)) == p`` for every prompt, and the parser accepts what people
type: any case, extra spaces, a missing final ";", "3" for "3.0", "2x" for "2.0x".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from degradations.names import BLIND_PROMPT
from degradations.registry import DEGRADATIONS, DegradationType, get_degradation

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"


class PromptError(ValueError):
    """A prompt that does not follow the grammar; the message names the offending text."""


@dataclass(frozen=True)
class Clause:
    type: str
    params: dict[str, float | int] | None = None  # None: a type-only clause ("Deblur;")


@dataclass(frozen=True)
class RestorationPrompt:
    clauses: tuple[Clause, ...] = ()
    blind: bool = False
    types: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "types", tuple(c.type for c in self.clauses))

    def to_json(self) -> dict[str, Any]:
        return {
            "blind": self.blind,
            "clauses": [{"type": c.type, "params": c.params} for c in self.clauses],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RestorationPrompt:
        if not isinstance(data, dict) or not set(data) <= {"blind", "clauses"}:
            raise PromptError('expected {"blind": bool, "clauses": [{"type", "params"}, ...]}')
        clauses = []
        for item in data.get("clauses", []):
            if not isinstance(item, dict) or "type" not in item:
                raise PromptError(f"a clause needs a 'type': {item!r}")
            clauses.append(Clause(item["type"], item.get("params")))
        prompt = cls(tuple(clauses), bool(data.get("blind", False)))
        validate(prompt)
        return prompt


def validate(prompt: RestorationPrompt) -> None:
    if prompt.blind and prompt.clauses:
        raise PromptError(f"'{BLIND_PROMPT}' cannot be combined with other clauses")
    seen: set[str] = set()
    for clause in prompt.clauses:
        try:
            kind = get_degradation(clause.type)
        except KeyError as err:
            raise PromptError(err.args[0]) from None
        if clause.type in seen:
            raise PromptError(f"{clause.type} appears twice")
        seen.add(clause.type)
        if clause.params is not None:
            try:
                kind.check(clause.params)
            except ValueError as err:
                raise PromptError(str(err)) from None


def render(prompt: RestorationPrompt) -> str:
    validate(prompt)
    if prompt.blind:
        return BLIND_PROMPT
    return " ".join(
        get_degradation(c.type).render(c.params) + ";" for c in prompt.clauses
    )


def _template_regex(template: str) -> re.Pattern[str]:
    pieces = []
    for piece in re.split(r"(\{\w+\})", template):
        if piece.startswith("{"):
            pieces.append(f"(?P<{piece[1:-1]}>{_NUMBER})")
        elif piece.strip():
            pieces.append(r"\s+".join(re.escape(word) for word in piece.split()))
    return re.compile(r"\s*".join(pieces), re.IGNORECASE)


@lru_cache(maxsize=1)
def _grammar(registry_size: int) -> list[tuple[DegradationType, re.Pattern[str]]]:
    del registry_size  # the cache key: a plugin registered later rebuilds the grammar
    return [(kind, _template_regex(kind.template)) for kind in DEGRADATIONS.values()]


def _number(kind: DegradationType, name: str, text: str, clause: str) -> float | int:
    spec = kind.param_index[name]
    value = float(text)
    if spec.decimals == 0:
        if value != int(value):
            raise PromptError(f"{name} must be an integer in {clause!r}")
        return int(value)
    return value


def _parse_clause(clause: str) -> Clause | None:
    """Return the clause, or None for the blind prompt."""
    words = " ".join(clause.split())
    if words.lower() == BLIND_PROMPT.lower():
        return None
    for kind, pattern in _grammar(len(DEGRADATIONS)):
        if words.lower() == kind.verb.lower():
            return Clause(kind.name)
        match = pattern.fullmatch(words)
        if match:
            values = {k: _number(kind, k, v, clause) for k, v in match.groupdict().items()}
            try:
                kind.check(values)
            except ValueError as err:
                raise PromptError(f"{err} in {clause.strip()!r}") from None
            return Clause(kind.name, values)
    options = "; ".join(
        f"{kind.verb} | {kind.template}" for kind in DEGRADATIONS.values()
    )
    raise PromptError(
        f"cannot parse {clause.strip()!r}; expected one of: {options}; {BLIND_PROMPT}"
    )


def parse(text: str) -> RestorationPrompt:
    clauses: list[Clause] = []
    blind = False
    for piece in text.split(";"):
        if not piece.strip():
            continue
        clause = _parse_clause(piece)
        if clause is None:
            blind = True
        else:
            clauses.append(clause)
    prompt = RestorationPrompt(tuple(clauses), blind)
    validate(prompt)
    return prompt
