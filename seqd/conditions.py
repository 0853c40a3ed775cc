"""Step conditions (`skip_if` / `only_if`): their shape, their rules and their evaluator.

A condition is one of four forms, combined freely:
- `{"step": 0, "is": "undelivered"}`: what became of an earlier step (STEP_FACTS);
- `{"field": "attributes.plan", "eq": "pro"}` (or `in: [...]`, or `exists: true`): a contact
  field, a contact attribute or the enrollment's metadata;
- `{"all": [...]}`, `{"any": [...]}`: every one, at least one;
- `{"not": {...}}`.

Conditions are checked when the step comes due, in the pure compose step, from what the
claim read: the contact's fields and the enrollment's `o` field, one letter per step of
what became of it (OUTCOME_LETTER: a skip written by `advance`, a delivery receipt's final
status by `recordDelivery`; a step with no letter before the current one was sent). This
module sits on the floor: models validate with it, the engine evaluates with it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from seqd.errors import FieldError

# What a step's letter in the enrollment's `o` field says (absent: nothing recorded).
SKIPPED = "k"
# A reply to a step (replyContact marks the last step sent before it): it was delivered
# too, and no receipt replaces the mark.
REPLIED = "r"
# A step the enrollment passed before it moved (`apply_to: "all"`) to a version of the
# steps where that step is another one: it did not run for the enrollment (syncSequence).
NOT_RUN = "x"
OUTCOME_LETTER: Mapping[str, str] = {
    "delivered": "d",
    "undelivered": "u",
    "failed": "f",
    "canceled": "u",
}

StepFact = Literal["delivered", "undelivered", "failed", "sent", "skipped", "replied"]
Scalar = str | int | float | bool | None
# The contact fields a condition may name (store/codec.py CONTACT_TEXT_FIELDS), beside
# attributes.<key> and metadata.<key>[.<key>...].
CONTACT_FIELDS = ("first_name", "last_name", "phone", "email", "timezone", "external_id")
ConditionField = Annotated[
    str,
    Meta(
        max_length=200,
        pattern="^(" + "|".join(CONTACT_FIELDS) + r"|(attributes|metadata)(\.[^.]+)+)$",
        description="a contact field (first_name, phone, ...), attributes.<key> or "
        "metadata.<key>[.<key>...] (the enrollment's metadata)",
    ),
]
# Deepest nesting of all/any/not, and most conditions in one step's tree.
MAX_DEPTH = 6
MAX_NODES = 50


class Condition(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """One condition: exactly one of the forms (step + is, field + eq|in|exists, all, any,
    not)."""

    json_schema_extra: ClassVar[dict[str, Any]] = {
        "oneOf": [
            {"required": ["step", "is"]},
            {"required": ["field", "eq"]},
            {"required": ["field", "in"]},
            {"required": ["field", "exists"]},
            {"required": ["all"]},
            {"required": ["any"]},
            {"required": ["not"]},
        ]
    }

    step: Annotated[int, Meta(ge=0, le=49)] | UnsetType = UNSET
    is_: StepFact | UnsetType = msgspec.field(name="is", default=UNSET)
    field: ConditionField | UnsetType = UNSET
    eq: Scalar | UnsetType = UNSET
    in_: Annotated[list[Scalar], Meta(min_length=1, max_length=100)] | UnsetType = msgspec.field(
        name="in", default=UNSET
    )
    exists: bool | UnsetType = UNSET
    all: Annotated[list[Condition], Meta(min_length=1, max_length=20)] | UnsetType = UNSET
    any: Annotated[list[Condition], Meta(min_length=1, max_length=20)] | UnsetType = UNSET
    not_: Condition | UnsetType = msgspec.field(name="not", default=UNSET)


_FORMS = "one of: step with is; field with one of eq, in, exists; all; any; not"


def _set(value: object) -> bool:
    return value is not UNSET


def check(cond: Condition, path: str, step: int) -> list[FieldError]:
    """The rules of `cond` on step `step`, errors named under `path`
    (`steps[2].only_if`)."""
    errors: list[FieldError] = []
    nodes = [0]

    def walk(c: Condition, at: str, depth: int) -> None:
        nodes[0] += 1
        if depth > MAX_DEPTH:
            errors.append(FieldError(at, f"nested more than {MAX_DEPTH} deep"))
            return
        forms = [
            _set(c.step) or _set(c.is_),
            _set(c.field) or _set(c.eq) or _set(c.in_) or _set(c.exists),
            _set(c.all),
            _set(c.any),
            _set(c.not_),
        ]
        if sum(forms) != 1:
            errors.append(FieldError(at, f"exactly {_FORMS}"))
            return
        if forms[0]:
            if not _set(c.step):
                errors.append(FieldError(f"{at}.step", "required with is"))
            elif not _set(c.is_):
                errors.append(FieldError(f"{at}.is", "required with step"))
            elif isinstance(c.step, int) and c.step >= step:
                errors.append(FieldError(f"{at}.step", "must be an earlier step"))
        elif forms[1]:
            tests = sum((_set(c.eq), _set(c.in_), _set(c.exists)))
            if not _set(c.field):
                errors.append(FieldError(f"{at}.field", "required with eq, in or exists"))
            elif tests != 1:
                errors.append(FieldError(at, "a field takes exactly one of eq, in, exists"))
        else:
            for name in ("all", "any"):
                items = getattr(c, name)
                if isinstance(items, list):
                    for i, sub in enumerate(items):
                        walk(sub, f"{at}.{name}[{i}]", depth + 1)
            if isinstance(c.not_, Condition):
                walk(c.not_, f"{at}.not", depth + 1)

    walk(cond, path, 1)
    if nodes[0] > MAX_NODES:
        errors.append(FieldError(path, f"more than {MAX_NODES} conditions"))
    return errors


def roots(cond: Condition | None) -> set[str]:
    """The contact fields (and `attributes`) a condition reads: what a claim must read."""
    out: set[str] = set()
    if cond is None:
        return out
    stack = [cond]
    while stack:
        c = stack.pop()
        if isinstance(c.field, str):
            root = c.field.partition(".")[0]
            if root != "metadata":
                out.add(root)
        stack += [*(c.all or ()), *(c.any or ())]
        if isinstance(c.not_, Condition):
            stack.append(c.not_)
    return out


# -- evaluation ---------------------------------------------------------------------------
_decode = msgspec.json.Decoder().decode


class Facts:
    """What a condition reads of one claimed step; attributes and metadata are decoded on
    first use."""

    __slots__ = ("_attributes", "_metadata", "contact", "index", "metadata_text", "outcomes")

    def __init__(
        self, contact: Mapping[str, str], metadata: str | None, outcomes: str | None, index: int
    ) -> None:
        self.contact = contact
        self.metadata_text = metadata
        self.outcomes = outcomes or ""
        # The current step: every step before it was sent or skipped.
        self.index = index
        self._attributes: Any = None
        self._metadata: Any = None

    def letter(self, step: int) -> str:
        return self.outcomes[step] if step < len(self.outcomes) else ""

    def attributes(self) -> Any:
        if self._attributes is None:
            text = self.contact.get("attributes")
            self._attributes = _decode(text) if text else _EMPTY
        return self._attributes

    def metadata(self) -> Any:
        if self._metadata is None:
            text = self.metadata_text
            self._metadata = _decode(text) if text else _EMPTY
        return self._metadata


_EMPTY: dict[str, Any] = {}
Predicate = Callable[[Facts], bool]
Getter = Callable[[Facts], Any]
_REACHED = frozenset((OUTCOME_LETTER["delivered"], REPLIED))


def _passed(f: Facts, step: int) -> bool:
    return step < f.index


# What `{"step": n, "is": fact}` asks of step n. "undelivered" is "not known delivered":
# a receipt said undelivered or failed, none said delivered by now, or it was skipped or
# did not run, so a fallback step sends whenever the first channel did not demonstrably
# reach the contact.
# ("clicked" goes here once click tracking records clicks on the enrollment.)
STEP_FACTS: Mapping[str, Callable[[Facts, int], bool]] = {
    "sent": lambda f, n: _passed(f, n) and f.letter(n) not in (SKIPPED, NOT_RUN),
    "skipped": lambda f, n: f.letter(n) == SKIPPED,
    "delivered": lambda f, n: f.letter(n) in _REACHED,
    "undelivered": lambda f, n: _passed(f, n) and f.letter(n) not in _REACHED,
    "failed": lambda f, n: f.letter(n) == OUTCOME_LETTER["failed"],
    "replied": lambda f, n: f.letter(n) == REPLIED,
}


def _walk(value: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if type(value) is not dict:
            return None
        value = value.get(key)
    return value


def _getter(name: str) -> Getter:
    """The value a field names (None: absent), as a function of the Facts."""
    root, *rest = name.split(".")
    path = tuple(rest)
    if root in ("attributes", "metadata"):
        read: Getter = Facts.attributes if root == "attributes" else Facts.metadata
        if len(path) == 1:
            key = path[0]
            return lambda f: read(f).get(key)
        return lambda f: _walk(read(f), path)
    # A contact's text field: an empty one reads as unset everywhere.
    return lambda f: f.contact.get(root) or None


def _same(a: Any, b: Any) -> bool:
    """JSON equality: true is not 1, 1 is 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return bool(a == b) if type(a) is type(b) or (_number(a) and _number(b)) else False


def _number(v: Any) -> bool:
    return isinstance(v, int | float)


def _equals(get: Getter, expected: Scalar) -> Predicate:
    # Specialised by the expected value's type: a str equals only a str, a bool is only
    # itself (Python's True == 1 is not JSON's).
    if isinstance(expected, str):
        return lambda f: get(f) == expected
    if expected is None or isinstance(expected, bool):
        return lambda f: get(f) is expected
    return lambda f: _same(get(f), expected)


def _joined(parts: list[Predicate], every: bool) -> Predicate:
    """all (`every`) or any of `parts`; one or two without a generator (the usual case)."""
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        a, b = parts
        return (lambda f: a(f) and b(f)) if every else (lambda f: a(f) or b(f))
    if every:
        return lambda f: all(p(f) for p in parts)
    return lambda f: any(p(f) for p in parts)


def compile_condition(cond: Condition) -> Predicate:
    """`cond` as a function of the Facts (built once per plan)."""
    if isinstance(cond.all, list):
        return _joined([compile_condition(c) for c in cond.all], True)
    if isinstance(cond.any, list):
        return _joined([compile_condition(c) for c in cond.any], False)
    if isinstance(cond.not_, Condition):
        inner = compile_condition(cond.not_)
        return lambda f: not inner(f)
    if isinstance(cond.step, int) and isinstance(cond.is_, str):
        fact, n = STEP_FACTS[cond.is_], cond.step
        return lambda f: fact(f, n)
    assert isinstance(cond.field, str)
    get = _getter(cond.field)
    if isinstance(cond.exists, bool):
        if cond.exists:
            return lambda f: get(f) is not None
        return lambda f: get(f) is None
    if isinstance(cond.in_, list):
        options = cond.in_
        if all(isinstance(o, str) for o in options):
            strings = frozenset(options)
            return lambda f: type(v := get(f)) is str and v in strings
        return _joined([_equals(get, o) for o in options], False)
    assert not isinstance(cond.eq, UnsetType)
    return _equals(get, cond.eq)


def gate(only_if: Condition | None, skip_if: Condition | None) -> Predicate | None:
    """Whether a step is sent: its only_if holds and its skip_if does not (None: always)."""
    if only_if is None and skip_if is None:
        return None
    need = compile_condition(only_if) if only_if is not None else None
    skip = compile_condition(skip_if) if skip_if is not None else None
    if skip is None:
        assert need is not None
        return need
    if need is None:
        return lambda f: not skip(f)
    return lambda f: need(f) and not skip(f)
