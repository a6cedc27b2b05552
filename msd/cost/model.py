"""A closed-form cost model per contraction: IREE's dequantize-then-matmul vs MSD with p slices.

For a weight-quantized contraction ``y[B,M,N] = x[B,M,K] · W[B,N,K]`` on a :class:`~msd.cost.Hardware`
the model adds up, per dispatch, the bytes it moves through global memory, the matrix-unit time and the
vector-unit time, and combines them the way the machine overlaps them:

- **coupled units** (CPU cores, GPU SMs/CUs: the same cores do both), per dispatch
  ``t = max(mem, comp) + (1 - overlap)·min(mem, comp)``, with ``comp = matrix + vector``;
- **decoupled units** (Ascend AIC/AIV): vector and matrix engines work in a pipeline, so the matrix
  unit stalls for ``stall = max(0, vector - matrix)``; ``t = max(mem, matrix + stall)``.

Baseline (IREE's own lowering of the dequantized weight):

- dequantization **fused** into the matmul (GPUs): one dispatch reads the low-bit weight; the
  conversion (``DEQUANT_OPS`` per weight element) is redone for every block of ``fused_m_block`` rows;
- **not fused, coupled** (IREE llvm-cpu): one dispatch writes the float weight (fresh transient pages
  are faulted in on every call above ``fresh_min_bytes``), the matmul reads it back;
- **not fused, decoupled** (NPU): the vector unit dequantizes into a float weight in global memory
  (int8 read + bf16 write), the matrix unit reads it (bf16 read), pipelined with the stall above.

MSD (``--msd-decompose-activations`` with p slices): amax (+ row sums), the slices (``p·M·K`` int8
written and read), one integer matmul over ``p·M`` rows that reads the weight once, and an epilogue
that reads ``p·M·N`` int32 accumulators (per K group for group-wise weights).  The vector work is
``O(p·M·K + p·M·N)`` instead of the baseline's ``O(N·K)``.

The constants below are operation counts of the generics the pass emits; the hardware rates are in
:mod:`msd.cost.hardware`.  Nothing here reads IR: the pass turns a matched contraction into a
:class:`Matmul` and asks :func:`decide`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from msd.errors import OptionError

from .hardware import ELEMENT_BYTES, Hardware, profile_for

# Vector work, in lane operations per element (what the emitted code does per element).
DEQUANT_OPS = 2.0  # per weight element: int -> float conversion, x scale
OFFSET_OPS = 1.0  # + zero point / offset (baseline per weight element; MSD: the row sum per activation element)
AMAX_OPS = 2.0  # per activation element: |x|, max
SLICE_OPS = 5.0  # per activation element and slice: residual x254 (or x 1/s), round, clamp (2), convert
RECOMBINE_OPS = 2.0  # per output, slice (and K group): int32 -> float, multiply-add
EPILOGUE_OPS = 3.0  # per output (and K group): x row scale, x weight scale, + init
SCALE_BYTES = 4.0  # f32 scales / offsets
PAGE_BYTES = 4096

SLICE_BITS = {1: 8, 2: 16, 3: 24}  # log2(amax / max error) rounded: 7.99, 15.98, 23.97 (docs/method.md)
MIN_GAIN = 0.05  # MSD must be predicted at least this much faster, otherwise the baseline is kept
DYNAMIC_M = 512  # rows assumed for a dynamic M (batch x sequence): prefill-sized


def bits_of(slices: int) -> int:
    """Effective bits (vs the row maximum) of ``slices`` int8 activation slices."""
    if slices not in SLICE_BITS:
        raise OptionError(f"slices={slices!r} is not supported (1, 2 or 3)")
    return SLICE_BITS[slices]


def slices_for_bits(min_bits: int) -> int:
    """The fewest slices that reach ``min_bits`` effective bits (8 → 1, 16 → 2, 24 → 3)."""
    if min_bits < 1:
        raise OptionError(f"min_bits={min_bits} must be positive")
    for p, bits in SLICE_BITS.items():
        if min_bits <= bits:
            return p
    raise OptionError(f"min_bits={min_bits} is more than 3 int8 slices give (about 24 bits)")


@dataclass(frozen=True)
class Matmul:
    """One contraction ``y[B,M,N] = x[B,M,K] · W[B,N,K]`` with a quantized ``W``."""

    m: int
    n: int
    k: int
    batch: int = 1
    act: str = "f32"  # activation (and baseline matmul) element type: f32 | bf16 | f16
    weight_bits: int = 8  # bits per weight element as stored (8, or 4 packed)
    group: int | None = None  # weight scales per group of this many K elements (None: per output channel)
    offset: bool = False  # the weight has a zero point / float offset
    chain: int = 1  # this many such layers run back to back in one call (transient-buffer reuse on CPUs)
    m_assumed: bool = False  # M was dynamic and ``m`` is an assumption

    def __post_init__(self) -> None:
        for name in ("m", "n", "k", "batch", "chain"):
            if getattr(self, name) < 1:
                raise OptionError(f"{name}={getattr(self, name)} must be positive")
        if self.act not in ELEMENT_BYTES:
            raise OptionError(f"activation type {self.act!r} is not one of {', '.join(ELEMENT_BYTES)}")
        if self.group is not None and (self.group < 1 or self.k % self.group):
            raise OptionError(f"group {self.group} does not divide K={self.k}")

    @property
    def groups(self) -> int:
        """K groups with their own scale (1 for per-channel weights)."""
        return self.k // self.group if self.group else 1

    @property
    def shape(self) -> str:
        m = f"{self.m}?" if self.m_assumed else str(self.m)
        batch = f"B={self.batch} " if self.batch > 1 else ""
        return f"{batch}M={m} N={self.n} K={self.k}"

    @property
    def format(self) -> str:
        weight = f"i{self.weight_bits}"
        weight += f" g{self.group}" if self.group else " per-channel"
        weight += " +offset" if self.offset else ""
        return f"{weight}, {self.act} act"


@dataclass(frozen=True)
class Cost:
    """Predicted time of one variant, with its parts (seconds; bytes through global memory)."""

    total_s: float
    memory_s: float  # all bytes at full bandwidth
    matrix_s: float
    vector_s: float
    stall_s: float  # matrix unit idle, waiting for the vector unit (decoupled units)
    fault_s: float  # fresh transient pages (CPU runtimes)
    launch_s: float
    bytes: float
    dispatches: int

    @property
    def bound(self) -> str:
        """The largest part: what this variant is bound by."""
        parts = {"memory": self.memory_s, "matrix": self.matrix_s, "vector": self.vector_s,
                 "page faults": self.fault_s, "launches": self.launch_s}
        return max(parts, key=lambda k: parts[k])


@dataclass(frozen=True)
class Estimate:
    hardware: Hardware
    matmul: Matmul
    slices: int
    baseline: Cost
    msd: Cost

    @property
    def ratio(self) -> float:
        """time(MSD) / time(baseline): below 1, MSD is faster."""
        return self.msd.total_s / self.baseline.total_s

    @property
    def speedup(self) -> float:
        return self.baseline.total_s / self.msd.total_s


@dataclass(frozen=True)
class Choice:
    """What the pass should do with one contraction."""

    rewrite: bool
    slices: int
    estimate: Estimate
    reason: str


def _combine(hw: Hardware, mem: float, comp: float) -> float:
    return max(mem, comp) + (1.0 - hw.overlap) * min(mem, comp)


def _weight_bytes(mm: Matmul) -> float:
    """The stored weight: elements at their bit width plus f32 scales (and offsets)."""
    per_nk = mm.batch * mm.n * mm.k * mm.weight_bits / 8
    scales = mm.batch * mm.n * mm.groups * SCALE_BYTES * (2 if mm.offset else 1)
    return per_nk + scales


def baseline_cost(hw: Hardware, mm: Matmul) -> Cost:
    """IREE's own lowering: dequantize the weight to ``mm.act``, then a float matmul."""
    ab = ELEMENT_BYTES[mm.act]
    w_elems = mm.batch * mm.n * mm.k
    wq = _weight_bytes(mm)
    xy = mm.batch * mm.m * (mm.k + mm.n) * ab
    matrix = 2.0 * mm.batch * hw.rows(mm.m, mm.act) * mm.n * mm.k / hw.rate(mm.act)
    dq_ops = (DEQUANT_OPS + (OFFSET_OPS if mm.offset else 0.0)) * w_elems
    if hw.dequant_fuses:  # one dispatch; the conversion is redone per block of rows
        vector = dq_ops * math.ceil(mm.m / hw.fused_m_block) / hw.vector
        nbytes = wq + xy
        mem = nbytes / hw.bandwidth
        launch = hw.launch_s
        total = _combine(hw, mem, matrix + vector) + launch
        return Cost(total, mem, matrix, vector, 0.0, 0.0, launch, nbytes, 1)
    w_float = ab * w_elems  # the dequantized weight IREE materializes in memory
    vector = dq_ops / hw.vector
    launch = 2 * hw.launch_s
    if hw.decoupled:  # vector unit: int8 read + float write; matrix unit: float read
        nbytes = wq + 2 * w_float + xy
        mem = nbytes / hw.bandwidth
        stall = max(0.0, vector - matrix)
        total = max(mem, matrix + stall) + launch
        return Cost(total, mem, matrix, vector, stall, 0.0, launch, nbytes, 2)
    faults = 0.0
    if w_float >= hw.fresh_min_bytes:
        fresh = min(mm.chain, hw.transient_buffers) / mm.chain
        faults = hw.fault_s * w_float / PAGE_BYTES * fresh
    nbytes = wq + 2 * w_float + xy
    t1 = _combine(hw, (wq + w_float) / hw.bandwidth, vector) + faults
    t2 = _combine(hw, (w_float + xy) / hw.bandwidth, matrix)
    total = t1 + t2 + launch
    return Cost(total, nbytes / hw.bandwidth, matrix, vector, 0.0, faults, launch, nbytes, 2)


def msd_cost(hw: Hardware, mm: Matmul, slices: int) -> Cost:
    """MSD with ``slices`` int8 activation slices and one integer matmul reading the weight once."""
    bits_of(slices)
    ab = ELEMENT_BYTES[mm.act]
    b, m, n, k, g = mm.batch, mm.m, mm.n, mm.k, mm.groups
    wq = _weight_bytes(mm)
    x, y = b * m * k * ab, b * m * n * ab
    sl = slices * b * m * k  # int8 slices
    acc = 4.0 * slices * b * m * n * g  # int32 accumulators (one per K group)
    it = hw.int_type
    matrix = 2.0 * b * hw.rows(slices * m, it) * n * k / hw.rate(it)
    dec_ops = (AMAX_OPS + (OFFSET_OPS if mm.offset else 0.0) + slices * SLICE_OPS) * b * m * k
    rec_ops = (slices * RECOMBINE_OPS + EPILOGUE_OPS) * b * m * n * g
    vector = (dec_ops + rec_ops) / hw.vector
    if hw.decoupled:  # vector unit decomposes and recombines; both hand data to/from the cube via memory
        nbytes = wq + x + 2 * sl + 2 * acc + y
        mem = nbytes / hw.bandwidth
        stall = max(0.0, vector - matrix)
        launch = 2 * hw.launch_s
        total = max(mem, matrix + stall) + launch
        return Cost(total, mem, matrix, vector, stall, 0.0, launch, nbytes, 2)
    if hw.fused_msd:  # msd's quantizer (x in, slices out) and its kernel (weight + slices in, y out)
        kv = hw.kernel_vector or hw.vector
        t_q = _combine(hw, (x + sl) / hw.bandwidth, dec_ops / kv)
        t_k = _combine(hw, (wq + sl + y) / hw.bandwidth, matrix + rec_ops / kv)
        launch = 2 * hw.launch_s
        nbytes = wq + x + 2 * sl + y
        return Cost(t_q + t_k + launch, nbytes / hw.bandwidth, matrix, vector, 0.0, 0.0, launch, nbytes, 2)
    # Coupled: amax (+ row sums), slices, integer matmul, epilogue — four dispatches.
    t_amax = _combine(hw, x / hw.bandwidth, (AMAX_OPS + (OFFSET_OPS if mm.offset else 0.0)) * b * m * k / hw.vector)
    t_slices = _combine(hw, (x + sl) / hw.bandwidth, slices * SLICE_OPS * b * m * k / hw.vector)
    t_mm = _combine(hw, (wq + sl + acc) / hw.bandwidth, matrix)
    t_epi = _combine(hw, (acc + y) / hw.bandwidth, rec_ops / hw.vector)
    launch = 4 * hw.launch_s
    nbytes = wq + 2 * x + 2 * sl + 2 * acc + y
    total = t_amax + t_slices + t_mm + t_epi + launch
    return Cost(total, nbytes / hw.bandwidth, matrix, vector, 0.0, 0.0, launch, nbytes, 4)


def estimate(hw: Hardware | str, mm: Matmul, slices: int) -> Estimate:
    """Baseline and MSD costs of ``mm`` on ``hw`` (a profile or a profile/target name)."""
    hw = profile_for(hw) if isinstance(hw, str) else hw
    return Estimate(hw, mm, slices, baseline_cost(hw, mm), msd_cost(hw, mm, slices))


def fmt_time(s: float) -> str:
    """Seconds as a short human string (us under a millisecond, s from a second)."""
    if s < 1e-3:
        return f"{s * 1e6:.3g} us"
    if s < 1.0:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def _baseline_note(hw: Hardware, c: Cost) -> str:
    if hw.dequant_fuses:
        return f"dequant fused, {c.bound}-bound"
    if hw.decoupled:
        stall = f", vector stall {fmt_time(c.stall_s)}" if c.stall_s > 0 else ""
        return f"dequant on the vector unit, float weight through memory{stall}, {c.bound}-bound"
    return f"float weight materialized, {c.bound}-bound"


def decide(hw: Hardware | str, mm: Matmul, *, slices: int = 2, min_bits: int = 0,
           min_gain: float = MIN_GAIN) -> Choice:
    """Rewrite ``mm`` with MSD or not, and with how many slices.

    The accuracy request is ``min_bits`` (the fewest slices reaching it) when positive, else
    ``slices``.  More slices are never faster, so the count is fixed by the request; the model only
    decides whether MSD at that count beats the baseline by at least ``min_gain``.  Keeping the
    baseline never loses accuracy: it multiplies the exactly dequantized weight in float.
    """
    hw = profile_for(hw) if isinstance(hw, str) else hw
    p = slices_for_bits(min_bits) if min_bits > 0 else slices
    est = estimate(hw, mm, p)
    b, q = est.baseline, est.msd
    assumed = f"M dynamic, costed as {mm.m} rows; " if mm.m_assumed else ""
    times = (f"{assumed}predicted MSD p={p} {fmt_time(q.total_s)} ({q.bound}-bound) vs baseline {fmt_time(b.total_s)} "
             f"({_baseline_note(hw, b)}) on {hw.name}")
    if b.total_s > q.total_s * (1.0 + min_gain):
        return Choice(True, p, est, f"{times}: {est.speedup:.2f}x faster")
    verdict = "slower" if q.total_s > b.total_s else f"under {min_gain:.0%} faster"
    return Choice(False, p, est, f"{times}: MSD {verdict}, baseline kept")


@dataclass(frozen=True)
class Policy:
    """How the pass decides: a hardware profile and an accuracy request (``min_bits`` or ``slices``)."""

    hardware: Hardware
    slices: int = 2
    min_bits: int = 0
    dynamic_m: int = DYNAMIC_M

    def decide(self, mm: Matmul) -> Choice:
        return decide(self.hardware, mm, slices=self.slices, min_bits=self.min_bits)


__all__ = [
    "DYNAMIC_M", "MIN_GAIN", "SLICE_BITS", "Choice", "Cost", "Estimate", "Matmul", "Policy", "baseline_cost",
    "bits_of", "decide", "estimate", "fmt_time", "msd_cost", "slices_for_bits",
]
