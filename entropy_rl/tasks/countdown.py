"""Countdown: combine the given numbers, each exactly once, with + - * (/) to reach the target.

Prompt format (char-level friendly): the numbers in ascending order separated by spaces, '>', the
target, ':'. The completion is an infix expression, e.g.

    prompt "3 5 7>22:"   completion "3*5+7"

Generation: draw `n_numbers` numbers in [min_number, max_number], shuffle, build a random binary
expression tree over them with random operators from `ops`, evaluate exactly (Fraction); resample
until the value is an integer in [0, max_target] with no division by zero. The reference answer
is the tree printed with minimal parentheses.

Verifier (hand-written recursive descent, exact `Fraction` arithmetic, never eval):
    grammar   expr := term (('+'|'-') term)*   term := factor (('*'|'/') factor)*
              factor := NUMBER | '(' expr ')'   NUMBER := ASCII digits, no leading zero
    - the completion is stripped; "" -> "empty"; more than MAX_CHARS (64) chars -> "too_long";
    - spaces/tabs between tokens are ignored; any other character (unicode digits, control chars,
      NUL, letters, '**', unary minus, an operator not in `ops`) -> "parse_error";
    - a literal longer than MAX_LITERAL_DIGITS (4) digits -> "number_too_large" (no big ints built);
    - parentheses nested deeper than MAX_DEPTH (16) -> "too_deep" (recursion stays shallow);
    - then: multiset of literals != the given numbers -> "wrong_numbers"; a zero divisor anywhere ->
      "division_by_zero"; value != target -> "wrong_value"; else "ok".
    `RewardResult.answer` is the expression without whitespace once it parses and uses the right
    numbers, else None.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from typing import Union

from entropy_rl.tasks.base import TASKS, Problem, RewardResult, fail, ok, sample_problems

MAX_CHARS = 64  # completion length cap (after strip)
MAX_LITERAL_DIGITS = 4  # integer literal cap: numbers are built from at most this many digits
MAX_DEPTH = 16  # parenthesis nesting cap

_OPS = "+-*/"
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}


@dataclass(frozen=True)
class Params:
    n_numbers: int = 3  # numbers per problem (3 or 4 are the intended settings)
    min_number: int = 1  # smallest number drawn
    max_number: int = 9  # largest number drawn; single digits keep it learnable by a ~1M-param model
    max_target: int = 100  # targets are integers in [0, max_target]
    ops: str = "+-*"  # allowed operators, a subset of "+-*/"

    def __post_init__(self) -> None:
        if not 2 <= self.n_numbers <= 6:
            raise ValueError(f"countdown: n_numbers must be in [2, 6], got {self.n_numbers}")
        if not 0 <= self.min_number <= self.max_number < 10**MAX_LITERAL_DIGITS:
            raise ValueError(
                f"countdown: need 0 <= min_number <= max_number < {10**MAX_LITERAL_DIGITS}, "
                f"got {self.min_number}..{self.max_number}"
            )
        if self.max_target < 0:
            raise ValueError(f"countdown: max_target must be >= 0, got {self.max_target}")
        if not self.ops or any(c not in _OPS for c in self.ops) or len(set(self.ops)) != len(self.ops):
            raise ValueError(f"countdown: ops must be distinct characters of '{_OPS}', got '{self.ops}'")


# ---- expression trees used for generation: an int leaf or (op, left, right) ----
Tree = Union[int, tuple]


def _random_tree(numbers: list[int], ops: str, rng: random.Random) -> Tree:
    """A uniformly split random binary tree using each of `numbers` once, in order, as leaves."""
    if len(numbers) == 1:
        return numbers[0]
    k = rng.randint(1, len(numbers) - 1)
    return (rng.choice(ops), _random_tree(numbers[:k], ops, rng), _random_tree(numbers[k:], ops, rng))


def _evaluate(tree: Tree) -> Fraction:
    """Exact value of `tree`; raises ZeroDivisionError on a zero divisor."""
    if isinstance(tree, int):
        return Fraction(tree)
    op, left, right = tree
    a, b = _evaluate(left), _evaluate(right)
    return _apply(op, a, b)


def _apply(op: str, a: Fraction, b: Fraction) -> Fraction:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a / b  # raises ZeroDivisionError on b == 0


def _prec(tree: Tree) -> int:
    return 3 if isinstance(tree, int) else _PREC[tree[0]]


def to_text(tree: Tree) -> str:
    """Print `tree` with minimal parentheses.

    Operators are left-associative, so a left operand needs parentheses only if it binds looser; a
    right operand also needs them at equal precedence under '-' or '/' (a-(b+c) != a-b+c). Under '+'
    and '*' equal precedence is safe in exact arithmetic: a+(b-c) == a+b-c, a*(b/c) == a*b/c.
    """
    if isinstance(tree, int):
        return str(tree)
    op, left, right = tree
    p = _PREC[op]
    lt, rt = to_text(left), to_text(right)
    if _prec(left) < p:
        lt = f"({lt})"
    if _prec(right) < p or (_prec(right) == p and op in "-/"):
        rt = f"({rt})"
    return f"{lt}{op}{rt}"


# ---- verifier ----
class _Reject(Exception):
    """Internal: parsing stopped with a reason code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def tokenize(text: str, ops: str) -> list[str]:
    """Split `text` into number and operator/parenthesis tokens; raises _Reject on anything else."""
    tokens: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t":
            i += 1
        elif "0" <= c <= "9":  # not str.isdigit(): that accepts unicode digits such as '٣'
            j = i
            while j < n and "0" <= text[j] <= "9":
                j += 1
                if j - i > MAX_LITERAL_DIGITS:
                    raise _Reject("number_too_large")
            if text[i] == "0" and j - i > 1:
                raise _Reject("parse_error")  # leading zero: keeps answers canonical
            tokens.append(text[i:j])
            i = j
        elif c in "()" or c in ops:
            tokens.append(c)
            i += 1
        else:
            raise _Reject("parse_error")
    return tokens


class _Parser:
    """Recursive descent over tokens. Recursion happens only at '(' and is capped by MAX_DEPTH.

    A zero divisor does not stop parsing (the multiset check must still see every literal); the
    value becomes None and the flag `div_zero` is set.
    """

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.numbers: list[int] = []
        self.div_zero = False

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def parse(self) -> Fraction | None:
        if not self.tokens:
            raise _Reject("parse_error")
        value = self.expr(0)
        if self.pos != len(self.tokens):
            raise _Reject("parse_error")
        return value

    def expr(self, depth: int) -> Fraction | None:
        value = self.term(depth)
        while self.peek() in ("+", "-"):
            op = self.tokens[self.pos]
            self.pos += 1
            value = self.combine(op, value, self.term(depth))
        return value

    def term(self, depth: int) -> Fraction | None:
        value = self.factor(depth)
        while self.peek() in ("*", "/"):
            op = self.tokens[self.pos]
            self.pos += 1
            value = self.combine(op, value, self.factor(depth))
        return value

    def factor(self, depth: int) -> Fraction | None:
        tok = self.peek()
        if tok is None:
            raise _Reject("parse_error")
        if tok == "(":
            if depth + 1 > MAX_DEPTH:
                raise _Reject("too_deep")
            self.pos += 1
            value = self.expr(depth + 1)
            if self.peek() != ")":
                raise _Reject("parse_error")
            self.pos += 1
            return value
        if "0" <= tok[0] <= "9":
            self.pos += 1
            self.numbers.append(int(tok))  # at most MAX_LITERAL_DIGITS digits, checked by tokenize
            return Fraction(int(tok))
        raise _Reject("parse_error")

    def combine(self, op: str, a: Fraction | None, b: Fraction | None) -> Fraction | None:
        if a is None or b is None:
            return None
        if op == "/" and b == 0:
            self.div_zero = True
            return None
        return _apply(op, a, b)


def verify(completion: str, numbers: list[int], target: int, ops: str = _OPS) -> RewardResult:
    """Score a Countdown expression against `numbers` and `target` (limits in the module docstring).

    Args:
        completion: model text (EOS removed); stripped here.
        numbers: the given numbers; each must be used exactly once.
        target: the value to reach.
        ops: operators the grammar accepts (others are a parse error).

    Returns:
        RewardResult; never raises on any input string.
    """
    text = completion.strip()
    if not text:
        return fail("empty")
    if len(text) > MAX_CHARS:
        return fail("too_long")
    try:
        tokens = tokenize(text, ops)
        parser = _Parser(tokens)
        value = parser.parse()
    except _Reject as r:
        return fail(r.reason)
    if Counter(parser.numbers) != Counter(numbers):
        return fail("wrong_numbers")
    answer = "".join(tokens)
    if parser.div_zero:
        return fail("division_by_zero", answer)
    if value != target:
        return fail("wrong_value", answer)
    return ok(answer)


@TASKS.register("countdown", Params)
class CountdownTask:
    """Countdown: reach the target from the given numbers with + - * (/), each number once."""

    name = "countdown"

    def __init__(self, params: Params | None = None) -> None:
        self.params = params if params is not None else Params()
        # ' ' separates numbers, '>' precedes the target, ':' ends the prompt.
        self.alphabet = "0123456789 >:()" + "".join(c for c in _OPS if c in self.params.ops)

    def draw(self, rng: random.Random) -> Problem:
        """One random problem from the full (unsplit) distribution.

        Raises:
            RuntimeError: no valid problem found in 10,000 attempts (e.g. max_target too small).
        """
        p = self.params
        for _ in range(10_000):
            numbers = [rng.randint(p.min_number, p.max_number) for _ in range(p.n_numbers)]
            tree = _random_tree(numbers, p.ops, rng)  # numbers are i.i.d., so their order is random
            try:
                value = _evaluate(tree)
            except ZeroDivisionError:
                continue
            if value.denominator == 1 and 0 <= value <= p.max_target:
                target = int(value)
                shown = sorted(numbers)
                prompt = " ".join(map(str, shown)) + f">{target}:"
                return Problem(prompt, to_text(tree), {"numbers": shown, "target": target})
        raise RuntimeError(f"countdown: no valid problem in 10000 draws for {p}")

    def prompts(self, split: str, n: int, seed: int) -> list[Problem]:
        """`n` problems of `split`, deterministic in (split, n, seed); splits are disjoint by prompt hash."""
        return sample_problems(self.name, split, n, seed, self.draw)

    def reward(self, problem: Problem, completion: str) -> RewardResult:
        """Verify `completion` against `problem.data` ("numbers", "target"); never raises."""
        return verify(completion, list(problem.data["numbers"]), int(problem.data["target"]), self.params.ops)
