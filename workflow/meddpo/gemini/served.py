"""Which model answered: the ``modelVersion`` each Gemini reply names, held against the configured model.

Google may answer a request for a model with another one (a retired model routed to its
successor, billed at that model's rate). Every reply names the model that served it; the
job records it on each answer, refusal and request-log line (``served_model``) and stops
with one line when it is not the model asked for, or when it changes within a run.

**A version of the model** is the configured name followed by a version suffix: one or more
hyphen-separated words, each all digits or one of ``preview``, ``exp`` and ``latest``. So
``gemini-2.5-flash-001``, ``gemini-2.5-flash-002`` and ``gemini-2.5-flash-preview-09-2025``
are versions of ``gemini-2.5-flash``, and ``gemini-2.5-flash-lite`` (another model) is not.

**The rule** (``ServedModels``): without ``accept_served_model`` every served model of the
run must be a version of the configured model, and all of them the same one: the answers
already in the store under these settings (whatever shard asked them) count as the run's. With
``accept_served_model`` set (a replacement named on purpose) a served model may be a version
of the configured model or of the named one, and a change between the two is allowed: naming
the replacement says its answers may stand beside the earlier ones. A reply that names no
model is counted as unrecorded and not held against anything.

An answer from a model that breaks the rule is kept in the store (it was paid for), and so is
every answer already on its way; the job starts nothing more (no request, no batch) and then
stops with the line. Naming the model in ``accept_served_model`` reuses those answers instead
of buying them again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from meddpo.gemini.errors import HardGeminiError

VERSION_WORDS = frozenset({"preview", "exp", "latest"})
UNRECORDED = "unrecorded"  # the count of answers whose reply named no model


def served_model(response) -> str | None:
    """The model a reply says served it (``modelVersion``, without a ``models/`` prefix), or None."""
    version = getattr(response, "model_version", None)
    return version.removeprefix("models/") if version else None


def is_version_of(served: str, model: str) -> bool:
    """Whether ``served`` is ``model`` or ``model`` with a version suffix (the module's rule)."""
    served, model = served.removeprefix("models/"), model.removeprefix("models/")
    if served == model:
        return True
    if not served.startswith(model + "-"):
        return False
    words = served[len(model) + 1 :].split("-")
    return all(word.isdigit() or word in VERSION_WORDS for word in words)


def row_served_model(row: Mapping) -> str | None:
    """The served model an answer or refusal row records (rows made before the field: its revision)."""
    return row.get("served_model") or (row.get("revision") if "text" in row else None)


class ServedModels:
    """The served models of one job's answers, checked as they come (the module's rule).

    ``block`` names the config block in messages (``teacher.gemini``, ``judge.gemini``);
    ``stored`` are the rows already in the store under these settings, checked first.
    """

    def __init__(self, model: str, accept: str | None, block: str, stored: Iterable[Mapping] = ()) -> None:
        self.model, self.accept, self.block = model, accept, block
        self.first: tuple[str, str] | None = None  # (question id, served model) of the run's first answer
        self.counts: Counter = Counter()  # this job's outcomes by served model
        self.problem: str | None = None  # the one line the job stops with, once a served model broke the rule
        for row in stored:
            self.check(row["id"], row_served_model(row), what="the answer store holds question")

    def check(self, question_id: str, served: str | None, what: str = "question") -> None:
        """Stop with one line when ``served`` breaks the rule; else remember it."""
        if served is None:
            return
        allowed = [self.model] + ([self.accept] if self.accept else [])
        if not any(is_version_of(served, name) for name in allowed):
            named = " or ".join(allowed)
            raise HardGeminiError(
                f"{what} {question_id}: Gemini says {served} answered, not {named} or a version of it: to "
                f"take its answers on purpose set {self.block}.accept_served_model: {served}, else choose "
                f"another {self.block}.model (what it answered is kept in the store)"
            )
        if self.first is None:
            self.first = (question_id, served)
        elif served != self.first[1] and not self.accept:
            raise HardGeminiError(
                f"{what} {question_id}: Gemini says {served} answered, but {self.first[1]} answered "
                f"question {self.first[0]} of this run: the served model changed; to go on with both set "
                f"{self.block}.accept_served_model: {served} (what either answered is kept in the store)"
            )

    def count(self, question_id: str, served: str | None) -> None:
        """Count one new outcome under its served model; the first that breaks the rule sets ``problem``
        (the job then starts nothing more, keeps what is already on its way, and stops with it)."""
        self.counts[served or UNRECORDED] += 1
        try:
            self.check(question_id, served)
        except HardGeminiError as error:
            self.problem = self.problem or str(error)


def served_counts(rows: Iterable[Mapping]) -> dict[str, int]:
    """Rows (answers, refusals) by the model that served them, ``unrecorded`` where none is known."""
    return dict(sorted(Counter(row_served_model(row) or UNRECORDED for row in rows).items()))
