"""What a pass decided about each candidate op: rewritten, or left alone and why."""

from __future__ import annotations

from dataclasses import dataclass, field


class NotHandled(Exception):
    """A candidate the pass leaves alone; the message is the reason the report gives.

    Raised by analyses and planning, never after IR was created.  ``fields`` are extra
    :class:`Decision` fields (the cost model's numbers when it is what declined).
    ``found_integer`` is set when the operand did come from an integer tensor (so the reason is
    about an unsupported dequantization rather than a plain float operand).
    """

    found_integer = False

    def __init__(self, reason: str, **fields: object) -> None:
        super().__init__(reason)
        self.fields = fields


@dataclass(frozen=True)
class Decision:
    """One candidate op and what the pass did with it."""

    op: str  # the op's name, e.g. "linalg.matmul"
    location: str  # where it came from (file:line of the torch source when known)
    rewritten: bool
    reason: str  # what was done, or why nothing was
    # Filled in when a cost model decided (``target=`` on the pass, ``decide="cost"`` in msd.compile):
    shape: str = ""  # "M=1 N=4096 K=4096" ("M=512?" when M was dynamic and assumed)
    format: str = ""  # "i8 per-channel, f32 act"
    slices: int = 0  # slices used (0: not rewritten)
    hardware: str = ""  # the hardware profile the times are predicted for
    baseline_s: float | None = None  # predicted time of IREE's own lowering
    msd_s: float | None = None  # predicted time of MSD with the slices evaluated

    def line(self) -> str:
        verdict = "rewritten" if self.rewritten else "skipped"
        return f"{verdict}: {self.op} at {self.location}: {self.reason}"

    def to_json(self) -> dict:
        """The decision as the artifact manifest (msd.json) stores it."""
        d = {"op": self.op, "location": self.location, "rewritten": self.rewritten, "reason": self.reason}
        if self.hardware:
            d.update(shape=self.shape, format=self.format, slices=self.slices, hardware=self.hardware,
                     baseline_s=self.baseline_s, msd_s=self.msd_s)
        return d


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


__all__ = ["Decision", "NotHandled", "Report"]
