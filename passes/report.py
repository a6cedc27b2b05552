"""What a pass decided about each candidate op: rewritten, or left alone and why."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Decision:
    """One candidate op and what the pass did with it."""

    op: str  # the op's name, e.g. "linalg.matmul"
    location: str  # where it came from (file:line of the torch source when known)
    rewritten: bool
    reason: str  # what was done, or why nothing was

    def line(self) -> str:
        verdict = "rewritten" if self.rewritten else "skipped"
        return f"{verdict}: {self.op} at {self.location}: {self.reason}"


@dataclass
class Report:
    """Decisions of one pass run, in the order the ops were first seen."""

    pass_name: str
    decisions: list[Decision] = field(default_factory=list)

    @property
    def rewritten(self) -> list[Decision]:
        return [d for d in self.decisions if d.rewritten]

    @property
    def skipped(self) -> list[Decision]:
        return [d for d in self.decisions if not d.rewritten]

    def format(self) -> str:
        head = (
            f"{self.pass_name}: {len(self.rewritten)} rewritten, {len(self.skipped)} skipped"
        )
        return "\n".join([head, *("  " + d.line() for d in self.decisions)])

    def __str__(self) -> str:
        return self.format()
