"""Error study of Winograd F(4x4, 3x3) point sets (fpnops' kernel uses 0, +-1, +-2 and infinity).

For each candidate set (5 finite points + infinity): the Cook-Toom matrices A^T, G, B^T in exact
rational arithmetic (checked exactly and in float64 against F.conv2d); a torch emulation of
fpnops' float32 order (V = G g G^T in float64 rounded once, U = B^T d B in float32 columns then
rows, M = U @ V by torch.bmm, Y = A^T M A, + bias), measured against F.conv2d in float64 of the
same float32 inputs: norm-wise relative error, the tile-bound constant c in |y - ref| <= c *
(max|x| over the 6x6 input tile * sum|w[k]| + |b[k]|), and per-element relative errors, on random
normal, ReLU-like, bright-pixel, checkerboard, near-1e30 and subnormal inputs, with F.conv2d in
float32 as the baseline; plus each set's growth bounds and the adds/multiplies of its 1-D
transforms written with shared subexpressions as csrc/cpu/winograd_kernel.h writes them. The
current set's emulation is checked bit for bit against the real kernel (AVX2 and generic builds).
Float32 emulation figures on the CPU, not timings.

    python benchmarks/winograd_points.py         # -> benchmarks/results/winograd-points-<cpu>.json
    python benchmarks/winograd_points.py --quick --out /tmp/winograd-points-quick.json
"""
import argparse
import datetime
import json
import math
import os
import pathlib
import platform
import subprocess
import sys
from fractions import Fraction as Fr

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

INF = "inf"  # the point at infinity (always the last of the six)
M_OUT, R_K, N_PTS = 4, 3, 6

# Candidates: 5 finite points each, infinity appended. The first is fpnops' current set.
CANDIDATES = [
    ("0,+-1,+-2", (0, 1, -1, 2, -2)),
    ("0,+-1,+-1/2", (0, 1, -1, Fr(1, 2), Fr(-1, 2))),
    ("0,+-1,1/2,-2", (0, 1, -1, Fr(1, 2), -2)),
    ("0,+-1,2,-1/2", (0, 1, -1, 2, Fr(-1, 2))),
    ("0,+-1,2,1/2", (0, 1, -1, 2, Fr(1, 2))),
    ("0,+-1/2,+-2", (0, Fr(1, 2), Fr(-1, 2), 2, -2)),
    ("0,+-1,+-1/4", (0, 1, -1, Fr(1, 4), Fr(-1, 4))),
    ("0,+-1,+-3", (0, 1, -1, 3, -3)),
    ("0,+-1,+-3/2", (0, 1, -1, Fr(3, 2), Fr(-3, 2))),
    ("+-1,+-2,1/2", (1, -1, 2, -2, Fr(1, 2))),
]
CURRENT = "0,+-1,+-2"


# ----------------------------------------------------------------------------------------------
# Exact Cook-Toom matrices
# ----------------------------------------------------------------------------------------------

def poly_from_roots(roots):
    """Coefficients (lowest power first) of prod (x - r)."""
    c = [Fr(1)]
    for r in roots:
        new = [Fr(0)] * (len(c) + 1)
        for i, v in enumerate(c):
            new[i + 1] += v
            new[i] -= r * v
        c = new
    return c


def primitive(vec, positive_at):
    """The multiple of vec with coprime integer entries whose entry at the first ("first") or
    last ("last") nonzero is positive; returns (scaled vec, factor)."""
    nz = [v for v in vec if v != 0]
    lcm = 1
    for v in nz:
        lcm = lcm * v.denominator // math.gcd(lcm, v.denominator)
    g = 0
    for v in nz:
        g = math.gcd(g, int(v * lcm))
    factor = Fr(lcm, g)
    lead = nz[0] if positive_at == "first" else nz[-1]
    if lead * factor < 0:
        factor = -factor
    return [v * factor for v in vec], factor


def cook_toom(points, scaling="G"):
    """A^T (4x6), G (6x3), B^T (6x6) as lists of Fractions for the finite points + infinity.

    Unscaled: A^T[i][j] = a_j^i, G[j] = (1, a_j, a_j^2) / prod_{l!=j} (a_j - a_l), B^T row j =
    coefficients of prod_{l!=j} (x - a_l) (padded to 6); infinity: A^T column e_3, G row e_2, B^T
    row = coefficients of prod_l (x - a_l). Row j of B^T, row j of G and column j of A^T may be
    scaled by b_j, g_j, 1/(b_j g_j) without changing the exact result.
    scaling "G" (the default, fpnops' choice): B^T rows and A^T columns are the coprime integer
    multiples (leading power positive in B^T, first entry positive in A^T) and G takes every
    other factor (V = G g G^T is made in float64 and rounded once, so G's entries cost no extra
    float32 rounding). scaling "A": B^T rows and G rows coprime integers, A^T takes the rest.
    """
    pts = [Fr(p) for p in points]
    assert len(pts) == N_PTS - 1 and len(set(pts)) == len(pts)
    bt, g, at_cols = [], [], []
    for j, a in enumerate(pts):
        others = pts[:j] + pts[j + 1:]
        b0 = poly_from_roots(others) + [Fr(0)]
        f = Fr(1)
        for o in others:
            f *= a - o
        a0 = [a ** i for i in range(M_OUT)]
        g0 = [a ** k / f for k in range(R_K)]
        brow, bf = primitive(b0, "last")
        if scaling == "G":
            acol, af = primitive(a0, "first")
            grow = [v / (af * bf) for v in g0]
        elif scaling == "A":
            grow, gf = primitive(g0, "first")
            acol = [v / (bf * gf) for v in a0]
        else:
            raise ValueError(scaling)
        bt.append(brow)
        g.append(grow)
        at_cols.append(acol)
    # infinity: B^T row = prod (x - a_l) (made a coprime integer multiple, b), G row e_2 and
    # A^T column e_3, with 1/b in G (scaling "G") or in A^T (scaling "A")
    brow, bf = primitive(poly_from_roots(pts), "last")
    bt.append(brow)
    if scaling == "G":
        g.append([Fr(0), Fr(0), 1 / bf])
        at_cols.append([Fr(0)] * (M_OUT - 1) + [Fr(1)])
    else:
        g.append([Fr(0), Fr(0), Fr(1)])
        at_cols.append([Fr(0)] * (M_OUT - 1) + [1 / bf])
    at = [[at_cols[j][i] for j in range(N_PTS)] for i in range(M_OUT)]
    return at, g, bt


def check_exact(at, g, bt):
    """sum_j A^T[i][j] G[j][k] B^T[j][l] == [l == i + k] for all i, k, l (1-D correlation
    y_i = sum_k d_{i+k} g_k): the algorithm is exact in rational arithmetic."""
    for i in range(M_OUT):
        for k in range(R_K):
            for l in range(N_PTS):
                s = sum(at[i][j] * g[j][k] * bt[j][l] for j in range(N_PTS))
                if s != (1 if l == i + k else 0):
                    return False
    return True


def frac_str(v):
    return str(v.numerator) if v.denominator == 1 else f"{v.numerator}/{v.denominator}"


def mat_str(m):
    return [[frac_str(v) for v in row] for row in m]


def growth(at, g, bt):
    """Max-row-sum bounds: |U| <= bt_growth max|x|, |V| <= g_growth max|g| (per 3x3 kernel),
    |Y| <= at_growth * max|M|; total = bt_growth * g_growth * at_growth (for the current set
    100 * 1 * 361 = 36100, the figure in fpnops/ops/winograd.py). kappa: the scale-invariant
    first-order amplification max_i sum_j |A^T_ij| ||G_j||_1 ||B^T_j||_1, squared for 2-D: each
    output's rounding error is at most about kappa2 * (a few eps) * tile max|x| * sum|w|."""
    rs = lambda m: max(sum(abs(v) for v in row) for row in m)  # noqa: E731
    b, gg, a = rs(bt) ** 2, rs(g) ** 2, rs(at) ** 2
    k1 = max(sum(abs(at[i][j]) * sum(abs(v) for v in g[j]) * sum(abs(v) for v in bt[j])
                 for j in range(N_PTS)) for i in range(M_OUT))
    return {"bt_growth": float(b), "g_growth": float(gg), "at_growth": float(a),
            "total_growth": float(b * gg * a), "kappa1": float(k1), "kappa2": float(k1 * k1)}


def nonzeros(m):
    nz = sum(1 for row in m for v in row if v != 0)
    nontrivial = sum(1 for row in m for v in row if v != 0 and abs(v) != 1)
    return {"nonzero": nz, "not_pm1": nontrivial}


# ----------------------------------------------------------------------------------------------
# 1-D transforms as straight-line programs (float32 on tensors, exact on Fractions, op counts,
# C-like formulas)
# ----------------------------------------------------------------------------------------------

class Prog:
    """A straight-line program over inputs <inp>0 .. <inp>{n_in-1}: add, sub, mul (by an exact
    constant), neg, fma steps, with common subexpressions shared through a cache. It runs on
    tensors (one float rounding per step, in the tensor's dtype), on exact Fractions (matrix(),
    to check it against B^T or A^T), counts its operations and prints kernel-style formulas."""

    def __init__(self, inp, n_in, n_out):
        self.inp, self.n_in = inp, n_in
        self.steps = []  # (name, op, args)
        self.out = [None] * n_out
        self.cache = {}
        self.names = set()

    def _emit(self, op, args, name=None):
        key = (op, args)
        if key in self.cache:
            return self.cache[key]
        if name is None or name in self.names:
            name = f"t{len(self.steps)}"
        self.names.add(name)
        self.steps.append((name, op, args))
        self.cache[key] = name
        return name

    def x(self, i):
        return f"{self.inp}{i}"

    def add(self, a, b, name=None):
        return self._emit("add", (a, b), name)

    def sub(self, a, b, name=None):
        return self._emit("sub", (a, b), name)

    def mul(self, c, a, name=None):
        c = Fr(c)
        if c == 1:
            return a
        return self._emit("neg", (a,), name) if c == -1 else self._emit("mul", (c, a), name)

    def fma(self, c, a, b, sa=1, sb=1, name=None):
        """sa * c * a + sb * b with one rounding (a fused multiply-add)."""
        return self._emit("fma", (Fr(c), a, b, sa, sb), name)

    def run(self, inputs, ops):
        env = {self.x(i): v for i, v in enumerate(inputs)}
        for name, op, args in self.steps:
            if op == "mul":
                env[name] = ops["mul"](args[0], env[args[1]])
            elif op == "fma":
                c, a, b, sa, sb = args
                env[name] = ops["fma"](c, env[a], env[b], sa, sb)
            else:
                env[name] = ops[op](*(env[a] for a in args))
        return [env[o] for o in self.out]

    def run_tensors(self, inputs):
        # the scalar is rounded to the tensor's dtype; an FMA is done in float64 and rounded
        # once (exact product; the float64 sum may round, then the float32 rounding: a double
        # rounding, wrong only when the float64 sum lands on a float32 tie)
        ops = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "neg": lambda a: -a,
               "mul": lambda c, a: a * float(c),
               "fma": lambda c, a, b, sa, sb: (sa * float(c) * a.double() + sb * b.double()).to(a.dtype)}
        return self.run(inputs, ops)

    def matrix(self):
        """The exact linear map the program computes (rows = outputs)."""
        unit = [[Fr(int(i == j)) for j in range(self.n_in)] for i in range(self.n_in)]
        ops = {"add": lambda a, b: [u + v for u, v in zip(a, b)],
               "sub": lambda a, b: [u - v for u, v in zip(a, b)],
               "neg": lambda a: [-u for u in a], "mul": lambda c, a: [c * u for u in a],
               "fma": lambda c, a, b, sa, sb: [sa * c * u + sb * v for u, v in zip(a, b)]}
        return self.run(unit, ops)

    def contracted(self, prefer="left"):
        """The program as a compiler contracting multiplies into adds would emit it (GCC with
        -ffp-contract=fast on an FMA target, the AVX2 build): each add/sub takes one operand
        that is a multiply used only there as an FMA (when both are, the left one, or the
        right one with prefer="right")."""
        uses = {}
        for _, op, args in self.steps:
            for a in (args[1:] if op == "mul" else args[1:3] if op == "fma" else args):
                uses[a] = uses.get(a, 0) + 1
        for o in self.out:
            uses[o] = uses.get(o, 0) + 1
        defs = {name: (op, args) for name, op, args in self.steps}
        p = Prog(self.inp, self.n_in, len(self.out))
        p.names = set(self.names)
        fused = set()
        for name, op, args in self.steps:
            if op in ("add", "sub"):
                a, b = args
                sb = 1 if op == "add" else -1
                cands = ((0, a, b), (1, b, a)) if prefer == "left" else ((1, b, a), (0, a, b))
                for k, m, other in cands:
                    if defs.get(m, ("",))[0] == "mul" and uses[m] == 1:
                        c, src = defs[m][1]
                        # a + b, a - b with a the product: c*src + sb*b; with b: a + sb*c*src
                        sa, so = (1, sb) if k == 0 else (sb, 1)
                        p.steps.append((name, "fma", (c, src, other, sa, so)))
                        fused.add(m)
                        break
                else:
                    p.steps.append((name, op, args))
            else:
                p.steps.append((name, op, args))
        p.steps = [st for st in p.steps if st[0] not in fused]
        p.out = list(self.out)
        return p

    def counts(self):
        """adds (add/sub), muls (by a constant other than +-1), negs, fmas (contracted
        programs only), total ops, and total_with_fma: the ops left after contracted()."""
        n = {k: sum(1 for _, op, _ in self.steps if op in ops) for k, ops in
             (("adds", ("add", "sub")), ("muls", ("mul",)), ("negs", ("neg",)), ("fmas", ("fma",)))}
        n["total"] = sum(n.values())
        n["total_with_fma"] = len(self.contracted().steps) if not n["fmas"] else n["total"]
        return n

    def formulas(self):
        """Kernel-style C++: temporaries used more than once are named, the rest inlined."""
        uses = {}
        for _, op, args in self.steps:
            for a in (args[1:] if op == "mul" else args):
                uses[a] = uses.get(a, 0) + 1
        for o in self.out:
            uses[o] = uses.get(o, 0) + 1
        defs = {name: (op, args) for name, op, args in self.steps}
        shown = {o for o in self.out}

        def leaf(n):
            if n.startswith(self.inp) and n[len(self.inp):].isdigit():
                return f"{self.inp}[{n[len(self.inp):]}]"
            return None

        def expr(n, top=False):
            if leaf(n):
                return leaf(n)
            if not top and (uses.get(n, 0) > 1 or n in shown):
                return n
            op, args = defs[n]
            if op == "mul":
                inner = expr(args[1])
                if defs.get(args[1], ("",))[0] in ("add", "sub") and not (
                        uses.get(args[1], 0) > 1 or args[1] in shown):
                    inner = f"({inner})"
                return f"{cnum(args[0])} * {inner}"
            if op == "neg":
                return f"-{expr(args[0])}"
            left, right = expr(args[0]), expr(args[1])
            r_op = defs.get(args[1], ("",))[0]
            if r_op in ("add", "sub") and not (uses.get(args[1], 0) > 1 or args[1] in shown):
                right = f"({right})"
            return f"{left} {'+' if op == 'add' else '-'} {right}"

        lines = []
        shared = [name for name, _, _ in self.steps if uses.get(name, 0) > 1 and name not in shown]
        for name in shared:
            lines.append(f"const Vec {name} = {expr(name, top=True)};")
        for i, o in enumerate(self.out):
            lines.append(f"o[{i}] = {expr(o, top=True) if not leaf(o) else leaf(o)};")
        return lines


def cnum(c):
    c = Fr(c)
    if c.denominator == 1:
        return f"{c.numerator}.f"
    return f"({c.numerator}.f / {c.denominator})"


def lincomb(prog, terms, style="structured", name=None):
    """Emit sum c*x over terms [(c, name)] (zeros dropped); the last operation gets `name`.
    structured: start from the first term with a positive coefficient, then the others in
    order, subtracting |c| x for negative c (products reused through the program's cache);
    returns (result, sign) with sign -1 when every coefficient was negative (the sum's negation
    was emitted). plain: in the given order from the first term, acc = acc + c x, i.e.
    round(acc + round(c x)) whatever the sign."""
    terms = [(Fr(c), x) for c, x in terms if c != 0]
    sign = 1
    if style == "plain":
        order = list(range(len(terms)))
    else:
        if all(c < 0 for c, _ in terms):
            terms, sign = [(-c, x) for c, x in terms], -1
        start = next(i for i, (c, _) in enumerate(terms) if c > 0)
        order = [start] + [i for i in range(len(terms)) if i != start]
    last = len(order) - 1
    c0, x0 = terms[order[0]]
    acc = prog.mul(c0, x0, name=name if last == 0 else None)
    for n, i in enumerate(order[1:], 1):
        c, x = terms[i]
        nm = name if n == last else None
        acc = prog.add(acc, prog.mul(c, x), nm) if c > 0 else prog.sub(acc, prog.mul(-c, x), nm)
    return acc, sign


def _finish(prog, i, name, sign):
    prog.out[i] = name if sign == 1 else prog.mul(-1, name)


def plain_program(mat, inp, order=None):
    """Each row as a plain float32 linear combination of its nonzero terms, in index order
    (or the given order of the inputs); no shared subexpressions."""
    n_in = len(mat[0])
    prog = Prog(inp, n_in, len(mat))
    idx = list(range(n_in)) if order is None else list(order)
    for i, row in enumerate(mat):
        name, sign = lincomb(prog, [(row[j], prog.x(j)) for j in idx], "plain")
        _finish(prog, i, name, sign)
    return prog


def _row_cost(row):
    nz = [v for v in row if v != 0]
    return max(len(nz) - 1, 0) + sum(1 for v in nz if abs(v) != 1)


def structured_bt(points, bt):
    """B^T d with shared subexpressions, as winograd_kernel.h's bt would be written:
    rows of a symmetric pair +-a as E +- O (E, O: the halves' sum and difference, the even and
    odd powers); when 0 and +-1 are points, the row of every other point a is alpha P + beta Q
    with P = d4 - d2, Q = d3 - d1 (its polynomial is x(x^2-1)(x - b)), P, Q and the products
    shared; everything else as one linear combination (index order)."""
    pts = [Fr(p) for p in points]
    prog = Prog("d", N_PTS, N_PTS)
    idx = {p: j for j, p in enumerate(pts)}
    has_pq = all(Fr(v) in idx for v in (0, 1, -1))
    done = set()
    for a in sorted((p for p in pts if p > 0 and -p in idx), key=abs):
        if has_pq and a != 1:
            continue
        jp, jm = idx[a], idx[-a]
        e = [(u + v) / 2 for u, v in zip(bt[jp], bt[jm])]
        o = [(u - v) / 2 for u, v in zip(bt[jp], bt[jm])]
        if _row_cost(e) + _row_cost(o) + 2 > _row_cost(bt[jp]) + _row_cost(bt[jm]):
            continue
        tag = frac_str(a).replace("/", "_")
        en, es = lincomb(prog, [(c, prog.x(l)) for l, c in enumerate(e)], name=f"E{tag}")
        on, os_ = lincomb(prog, [(c, prog.x(l)) for l, c in enumerate(o)], name=f"O{tag}")
        for j, s in ((jp, 1), (jm, -1)):
            name, sign = lincomb(prog, [(es, en), (s * os_, on)])
            _finish(prog, j, name, sign)
            done.add(j)
    if has_pq:
        for j, a in enumerate(pts):
            if a in (0, 1, -1) or j in done:
                continue
            r = bt[j]
            alpha, beta = r[4], r[3]
            if r != [Fr(0), -beta, -alpha, beta, alpha, Fr(0)]:
                continue
            p_ = prog.sub(prog.x(4), prog.x(2), name="P")
            q_ = prog.sub(prog.x(3), prog.x(1), name="Q")
            name, sign = lincomb(prog, [(alpha, p_), (beta, q_)])
            _finish(prog, j, name, sign)
            done.add(j)
    for j in range(N_PTS):
        if j not in done:
            name, sign = lincomb(prog, [(c, prog.x(l)) for l, c in enumerate(bt[j])])
            _finish(prog, j, name, sign)
    return prog


def structured_at(points, at):
    """A^T m as winograd_kernel.h's at: the columns of a symmetric pair +-a enter as their sum
    and difference (s, d) where the rows' entries are equal or opposite; each row one linear
    combination in column order."""
    pts = [Fr(p) for p in points] + [INF]
    prog = Prog("m", N_PTS, M_OUT)
    idx = {p: j for j, p in enumerate(pts)}
    partner = {}
    for p in pts[:-1]:
        if p > 0 and -p in idx:
            partner[idx[p]] = idx[-p]
    for i in range(M_OUT):
        terms, used = [], set()
        for j in range(N_PTS):
            if j in used:
                continue
            if j in partner:
                k = partner[j]
                used.add(k)
                u, v = at[i][j], at[i][k]
                tag = f"{j}{k}"
                if u == 0 and v == 0:
                    continue
                if u == v:
                    terms.append((u, prog.add(prog.x(j), prog.x(k), name=f"s{tag}")))
                elif u == -v:
                    terms.append((u, prog.sub(prog.x(j), prog.x(k), name=f"d{tag}")))
                else:
                    terms += [(u, prog.x(j)), (v, prog.x(k))]
            else:
                terms.append((at[i][j], prog.x(j)))
        name, sign = lincomb(prog, terms)
        _finish(prog, i, name, sign)
    return prog


def kernel_bt():
    """winograd_kernel.h's bt, operation for operation (the current set)."""
    p = Prog("d", N_PTS, N_PTS)
    d = p.x
    p.out[0] = p.add(p.sub(p.mul(4, d(0)), p.mul(5, d(2))), d(4))
    p.out[1] = p.sub(p.add(d(3), d(4)), p.mul(4, p.add(d(1), d(2))))
    p.out[2] = p.add(p.mul(4, p.sub(d(1), d(2))), p.sub(d(4), d(3)))
    p.out[3] = p.add(p.mul(2, p.sub(d(3), d(1))), p.sub(d(4), d(2)))
    p.out[4] = p.add(p.mul(2, p.sub(d(1), d(3))), p.sub(d(4), d(2)))
    p.out[5] = p.add(p.sub(p.mul(4, d(1)), p.mul(5, d(3))), d(5))
    return p


def kernel_at():
    """winograd_kernel.h's at, operation for operation."""
    p = Prog("m", N_PTS, M_OUT)
    m = p.x
    s12, d12 = p.add(m(1), m(2), "s12"), p.sub(m(1), m(2), "d12")
    s34, d34 = p.add(m(3), m(4), "s34"), p.sub(m(3), m(4), "d34")
    p.out[0] = p.add(p.add(m(0), s12), s34)
    p.out[1] = p.add(d12, p.mul(2, d34))
    p.out[2] = p.add(s12, p.mul(4, s34))
    p.out[3] = p.add(p.add(d12, p.mul(8, d34)), m(5))
    return p


def hand_bt_mixed(neg=False):
    """B^T d for 0, 1, -1, 1/2, -2 (and infinity), derived by hand: with P = d4 - d2,
    Q = d3 - d1, the rows of 1/2 and -2 are P + 2Q and 2P - Q; those of +-1 are E +- O with
    E = 2P + 3 d3, O = 2Q + 3 d2; 0: 2(d0 - d2) + 2P + 3Q; infinity: 2(d5 - d3) - 2Q + 3P.
    neg: the negated set 0, 1, -1, 2, -1/2 (rows 2P + Q, P - 2Q; E = 2P - 3 d3, O = 2Q - 3 d2;
    0: 2(d0 - d2) + 2P - 3Q; infinity: 2(d5 - d3) - 2Q - 3P)."""
    p = Prog("d", N_PTS, N_PTS)
    d = p.x
    P, Q = p.sub(d(4), d(2), "P"), p.sub(d(3), d(1), "Q")
    P2, Q2 = p.mul(2, P, "P2"), p.mul(2, Q, "Q2")
    pm = p.sub if neg else p.add
    E, O = pm(P2, p.mul(3, d(3)), "E"), pm(Q2, p.mul(3, d(2)), "O")
    p.out[0] = pm(p.add(p.mul(2, p.sub(d(0), d(2))), P2), p.mul(3, Q))
    p.out[1] = p.add(E, O)
    p.out[2] = p.sub(E, O)
    p.out[3] = p.add(P2, Q) if neg else p.add(P, Q2)
    p.out[4] = p.sub(P, Q2) if neg else p.sub(P2, Q)
    last = p.sub(p.mul(2, p.sub(d(5), d(3))), Q2)
    p.out[5] = p.sub(last, p.mul(3, P)) if neg else p.add(last, p.mul(3, P))
    return p


def hand_bt_half_two():
    """B^T d for 0, 1/2, -1/2, 2, -2 (and infinity), derived by hand: t = d4 - 4 d2 and
    u = 4 d3 - d1 shared; the rows of +-1/2 are 2t +- (d3 - 4 d1), those of +-2 are
    (4 d4 - d2) +- 2u; 0: 4(d0 + t) - d2 (= 4 d0 - 17 d2 + 4 d4); infinity: 4(d5 - u) - d3."""
    p = Prog("d", N_PTS, N_PTS)
    d = p.x
    t, u = p.sub(d(4), p.mul(4, d(2)), "t"), p.sub(p.mul(4, d(3)), d(1), "u")
    E1, O1 = p.mul(2, t, "E1"), p.sub(d(3), p.mul(4, d(1)), "O1")
    E2, O2 = p.sub(p.mul(4, d(4)), d(2), "E2"), p.mul(2, u, "O2")
    p.out[0] = p.sub(p.mul(4, p.add(d(0), t)), d(2))
    p.out[1], p.out[2] = p.add(E1, O1), p.sub(E1, O1)
    p.out[3], p.out[4] = p.add(E2, O2), p.sub(E2, O2)
    p.out[5] = p.sub(p.mul(4, p.sub(d(5), u)), d(3))
    return p


# hand-derived B^T formulas, where they beat structured_bt's (A^T: structured_at's)
HAND_BT = {"0,+-1,1/2,-2": hand_bt_mixed, "0,+-1,2,-1/2": lambda: hand_bt_mixed(neg=True),
           "0,+-1/2,+-2": hand_bt_half_two}


# ----------------------------------------------------------------------------------------------
# The emulated convolution
# ----------------------------------------------------------------------------------------------

def weight_transform(w, g, integer=False):
    """(K, C, 3, 3) -> (36, C, K): as winograd_weight, in float64, then rounded once (unless w
    is float64, for the exactness check). integer: G as D * G (integers) and one division by
    D^2 at the end, so the float64 sums are exact (independent of their order) and the float32
    value is the correctly rounded one; many exact values of V are float32 ties (sums of few
    float32 terms times 1/36 and the like), which the einsum's last-bit float64 rounding then
    decides, differently for a mirrored G (for reciprocal_check)."""
    if integer:
        den = 1
        for row in g:
            for v in row:
                den = den * v.denominator // math.gcd(den, v.denominator)
        g = [[v * den for v in row] for row in g]
    g64 = torch.tensor([[float(v) for v in row] for row in g], dtype=torch.float64)
    v = torch.einsum("ia,kcab,jb->ijck", g64, w.double(), g64)
    if integer:
        v = v / float(den * den)
    v = v.reshape(36, w.shape[1], w.shape[0])
    return (v if w.dtype == torch.float64 else v.float()).contiguous()



def _passes(prog):
    return prog if isinstance(prog, tuple) else (prog, prog)


def winograd(x, w, b, g, bt_prog, at_prog, v=None):
    """Emulated conv3x3_winograd (stride 1, padding 1) in x's dtype: returns (N, K, H, W).
    bt_prog / at_prog: one program for both passes, or (column pass, row pass)."""
    (bt_col, bt_row), (at_col, at_row) = _passes(bt_prog), _passes(at_prog)
    n, c, h, wd = x.shape
    k = w.shape[0]
    th, tw = (h + 3) // 4, (wd + 3) // 4
    if v is None:
        v = weight_transform(w, g)
    xp = F.pad(x, (1, 4 * tw + 1 - wd, 1, 4 * th + 1 - h))
    tiles = xp.unfold(2, 6, 4).unfold(3, 6, 4)  # (N, C, th, tw, 6 rows, 6 cols)
    # column transform (B^T d, along H for each column), then the row transform (along W)
    t = torch.stack(bt_col.run_tensors([tiles[..., i, :] for i in range(6)]), dim=-2)
    u = torch.stack(bt_row.run_tensors([t[..., :, j] for j in range(6)]), dim=-1)
    u = u.permute(4, 5, 0, 2, 3, 1).reshape(36, n * th * tw, c).contiguous()
    m = torch.bmm(u, v).reshape(6, 6, n, th, tw, k)  # M[p] = U[p] @ V[p], float32
    s = torch.stack(at_col.run_tensors([m[i] for i in range(6)]), dim=0)  # (4, 6, ...)
    y = torch.stack(at_row.run_tensors([s[:, j] for j in range(6)]), dim=1)  # (4, 4, ...)
    if b is not None:
        y = y + b
    y = y.permute(2, 5, 3, 0, 4, 1).reshape(n, k, 4 * th, 4 * tw)
    return y[:, :, :h, :wd]


def tile_max(x):
    """max |x| over each output's 6x6 input tile (all channels), broadcast to (N, 1, H, W)."""
    n, c, h, wd = x.shape
    th, tw = (h + 3) // 4, (wd + 3) // 4
    xp = F.pad(x.abs().double(), (1, 4 * tw + 1 - wd, 1, 4 * th + 1 - h))
    tm = xp.unfold(2, 6, 4).unfold(3, 6, 4).amax(dim=(1, 4, 5))  # (N, th, tw)
    tm = tm.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, :h, :wd]
    return tm.unsqueeze(1)


def metrics(y, ref, denom, tiny):
    """(a) norm_err: ||y - ref|| / ||ref||; (b) c_tile: max |y - ref| / denom (denom = tile
    max|x| * sum|w[k]| + |b[k]|); (c) max_rel (and p999_rel, the 99.9th percentile): |y - ref|
    / |ref| over |ref| > tiny; nonfinite: outputs that overflowed to inf or NaN."""
    y64 = y.double()
    err = (y64 - ref).abs()
    out = {"nonfinite": int((~torch.isfinite(y64)).sum()), "ref_sq": float((ref * ref).sum())}
    if out["nonfinite"]:
        return {**out, "norm_err": math.inf, "c_tile": math.inf, "max_rel": math.inf,
                "p999_rel": math.inf, "err_sq": math.inf}
    big = ref.abs() > tiny
    rel = err[big] / ref.abs()[big]
    out.update({"norm_err": float(err.norm() / ref.norm()),
                "c_tile": float((err / denom).max()),
                "max_rel": float(rel.max()) if rel.numel() else 0.0,
                "p999_rel": float(torch.quantile(rel, 0.999)) if rel.numel() else 0.0,
                "err_sq": float((err * err).sum())})
    return out


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------

KINDS = ("normal", "relu", "bright_pixel", "checkerboard", "huge", "denormal")


def make_case(kind, c, side, seed):
    """(x, w, b) float32, N = 1, C = K = c, side x side; w ~ N(0, 1/(9c)) (outputs of x's
    scale), b ~ N(0, 1) * 0.1 * median |conv(x, w)|."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(c, c, 3, 3, generator=g) / (3 * c ** 0.5)
    shape = (1, c, side, side)
    if kind == "normal":
        x = torch.randn(shape, generator=g)
    elif kind == "relu":  # nonnegative, half zeros, as after a ReLU
        x = torch.randn(shape, generator=g).clamp_min(0)
    elif kind == "bright_pixel":
        # a sea of 0.01 with one bright pixel (1000, all channels) per 8x8 block, at a random
        # place in the block (so it falls in tile interiors and in the halos tiles share)
        x = torch.full(shape, 0.01)
        for by in range(0, side, 8):
            for bx in range(0, side, 8):
                py, px = torch.randint(0, 8, (2,), generator=g).tolist()
                x[:, :, min(by + py, side - 1), min(bx + px, side - 1)] = 1000.0
    elif kind == "checkerboard":  # signs alternating in H and W, magnitudes in [0.5, 1.5)
        hh = torch.arange(side).view(-1, 1)
        ww = torch.arange(side).view(1, -1)
        sgn = 1.0 - 2.0 * ((hh + ww) % 2).float()
        x = sgn * (0.5 + torch.rand(shape, generator=g))
    elif kind == "huge":
        # |x| <= 1e30, fpnops' SAFE_BOUND: the transforms' growth keeps every intermediate far
        # below float32's 3.4e38 for the sets whose total growth is below ~1e7
        x = (torch.rand(shape, generator=g) * 2 - 1) * 1e30
    elif kind == "denormal":
        x = torch.randn(shape, generator=g) * 1e-40  # subnormal float32 (min normal 1.2e-38)
    else:
        raise ValueError(kind)
    x = x.float()
    ref0 = F.conv2d(x.double(), w.double(), padding=1)
    b = (torch.randn(c, generator=g) * 0.1 * ref0.abs().median()).float()
    return x, w, b


def case_list(quick):
    """(kind, channels, side, seeds)."""
    if quick:
        return [(k, 64, 16, 1) for k in KINDS]
    return [("normal", 64, 32, 8), ("normal", 256, 32, 3), ("relu", 64, 32, 8),
            ("relu", 256, 32, 3), ("bright_pixel", 64, 32, 4), ("checkerboard", 64, 32, 4),
            ("huge", 64, 32, 4), ("denormal", 64, 32, 4)]


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------

def float64_check(g, bt_prog, at_prog):
    """Winograd in float64 (V not rounded) against F.conv2d in float64 (a map not a multiple of
    4, two images): max |diff| / max |ref|."""
    gen = torch.Generator().manual_seed(123)
    x = torch.randn(2, 16, 13, 10, generator=gen, dtype=torch.float64)
    w = torch.randn(12, 16, 3, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(12, generator=gen, dtype=torch.float64)
    y = winograd(x, w, b, g, bt_prog, at_prog)
    ref = F.conv2d(x, w, b, padding=1)
    return float((y - ref).abs().max() / ref.abs().max())


def reciprocal(points):
    """x -> 1/x maps the set with 0 and inf to another with 0 and inf (0 <-> inf)."""
    return tuple(Fr(0) if p == 0 else 1 / Fr(p) for p in points)


def reciprocal_check(points):
    """Winograd with the points S on (x, w) against Winograd with 1/S on the spatially flipped
    (x, w), flipped back, both as plain linear combinations, 1/S's in the mirrored order (B^T
    over d[5] .. d[0]; A^T over its points in the order of their reciprocals in S), V correctly
    rounded for both (weight_transform(integer=True)): the two algorithms are mirror images up
    to power-of-2 scalings of rows, so they agree bit for bit if the theory holds. Also counts
    the entries where the einsum V (winograd_weight's way) is not the correctly rounded one."""
    x, w, b = make_case("normal", 64, 32, 7)
    at, g, bt = cook_toom(points)
    rp = reciprocal(points)
    at2, g2, bt2 = cook_toom(rp)
    # S's point j (infinity last) is 1/S's point perm[j]: 0 <-> infinity, the others in place
    pos = {Fr(p): j for j, p in enumerate(rp)}
    perm = [N_PTS - 1 if Fr(p) == 0 else pos[1 / Fr(p)] for p in points] + [pos[Fr(0)]]
    vi = weight_transform(w, g, integer=True)
    y1 = winograd(x, w, b, g, plain_program(bt, "d"), plain_program(at, "m"), v=vi)
    y2 = winograd(x.flip(2, 3), w.flip(2, 3), b, g2, plain_program(bt2, "d", range(5, -1, -1)),
                  plain_program(at2, "m", perm),
                  v=weight_transform(w.flip(2, 3), g2, integer=True)).flip(2, 3)
    diff = (y1 - y2).abs()
    return {"reciprocal_set": [frac_str(p) for p in rp] + ["inf"],
            "max_diff_rel": float(diff.max() / y1.abs().max()),
            "differing_outputs": int((diff > 0).sum()), "outputs": y1.numel(),
            "einsum_V_not_correctly_rounded": int((vi != weight_transform(w, g)).sum()),
            "V_entries": vi.numel()}


def current_variants():
    """The current set's formulas as winograd_kernel.h writes them: as compiled without FMA
    (the DEFAULT build) and as GCC contracted them in the AVX2 build (found in its
    disassembly and by this check: the column pass fuses 4 d0 into 4 d0 - (5 d2), exact
    either way, the row pass fuses 5 d2, one rounding of 4 d0 - 5 d2; A^T's products are
    powers of 2, exact)."""
    kb, ka = kernel_bt(), kernel_at()
    return {"kernel": (kb, ka),
            "kernel_avx2": ((kb.contracted("left"), kb.contracted("right")), ka.contracted())}


def kernel_check():
    """The emulation against the real fpnops kernel on this process's CPU capability: how many
    outputs differ (and by how much, relative to max |y|) for the kernel's formulas without
    FMA, with the AVX2 build's contractions, and for structured_bt/at's formulas."""
    try:
        from fpnops.ops.winograd import conv3x3_winograd, winograd_weight
    except Exception as e:  # noqa: BLE001
        return {"error": repr(e)}
    pts = dict(CANDIDATES)[CURRENT]
    at, g, bt = cook_toom(pts)
    progs = {**current_variants(), "structured": (structured_bt(pts, bt), structured_at(pts, at))}
    out = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "cases": []}
    for kind, c, side in (("normal", 64, 32), ("normal", 96, 20), ("relu", 64, 12),
                          ("bright_pixel", 64, 32), ("huge", 64, 32), ("denormal", 64, 32)):
        x, w, b = make_case(kind, c, side, 3)
        v = winograd_weight(w)
        real = conv3x3_winograd(x, v, b).contiguous()
        row = {"case": f"{kind} C=K={c} {side}x{side}",
               "weights_equal": bool(torch.equal(v, weight_transform(w, g))), "outputs": real.numel()}
        for name, (bp, ap) in progs.items():
            emu = winograd(x, w, b, g, bp, ap, v=v)
            row[name] = {"differing": int((real != emu).sum()),
                         "max_diff_rel": float((real - emu).abs().max() / real.abs().max())}
        out["cases"].append(row)
    return out


# ----------------------------------------------------------------------------------------------
# The study
# ----------------------------------------------------------------------------------------------

def cpu_info():
    """lscpu's model name, a short tag for the file name, and the relevant flags."""
    model, flags = "unknown", ""
    try:
        txt = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in txt.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("Flags:"):
                flags = line.split(":", 1)[1]
    except (OSError, subprocess.CalledProcessError):
        model = platform.processor() or "unknown"
    fl = set(flags.split())
    words = model.lower().replace("(r)", "").replace("(tm)", "").split()
    base = ("xeon" if "xeon" in words else "epyc" if "epyc" in words else
            "".join(ch for ch in (words[0] if words else "cpu") if ch.isalnum()))
    ext = ("amx" if "amx_tile" in fl else "avx512" if "avx512f" in fl else
           "avx2" if "avx2" in fl else "")
    return model, f"{base}-{ext}" if ext else base, sorted(fl & {"avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"})


def programs_for(name, points, quick):
    """{variant: (bt program(s), at program(s), G)} and the set's description."""
    at, g, bt = cook_toom(points)
    sb, sa = structured_bt(points, bt), structured_at(points, at)
    hb = HAND_BT[name]() if name in HAND_BT else None
    pb, pa = plain_program(bt, "d"), plain_program(at, "m")
    for prog, mat in ((sb, bt), (sa, at), (pb, bt), (pa, at)) + (((hb, bt),) if hb else ()):
        assert prog.matrix() == mat, (name, prog.formulas())
        assert prog.contracted().matrix() == mat, name
    primary_bt = hb or sb
    var = {"primary": (primary_bt, sa, g), "structured": (sb, sa, g),
           "fma": (primary_bt.contracted(), sa.contracted(), g), "plain": (pb, pa, g)}
    if name == CURRENT:
        var.update({k: (bp, ap, g) for k, (bp, ap) in current_variants().items()})
    at_a, g_a, bt_a = cook_toom(points, scaling="A")
    if not quick:
        var["A_scaled"] = (structured_bt(points, bt_a), structured_at(points, at_a), g_a)
    info = {"name": name, "points": [frac_str(Fr(p)) for p in points] + ["inf"],
            "exact": check_exact(at, g, bt), "exact_A_scaled": check_exact(at_a, g_a, bt_a),
            "float64_check_max_rel": float64_check(g, primary_bt, sa),
            "AT": mat_str(at), "G": mat_str(g), "BT": mat_str(bt),
            "A_scaled": {"AT": mat_str(at_a), "G": mat_str(g_a), "BT": mat_str(bt_a)},
            "growth": growth(at, g, bt), "BT_entries": nonzeros(bt), "AT_entries": nonzeros(at),
            "primary_bt": "hand" if hb else "structured",
            "bt_ops": primary_bt.counts(), "at_ops": sa.counts(),
            "bt_ops_structured": sb.counts(),
            "bt_formulas": primary_bt.formulas(), "at_formulas": sa.formulas()}
    info["per_tile_ops"] = {
        "note": "per 6x6 tile: 12 B^T column programs per input channel + 10 A^T programs per "
                "output channel",
        "input_per_channel": 12 * info["bt_ops"]["total"],
        "output_per_channel": 10 * info["at_ops"]["total"],
        "input_per_channel_fma": 12 * info["bt_ops"]["total_with_fma"],
        "output_per_channel_fma": 10 * info["at_ops"]["total_with_fma"]}
    if name == CURRENT:
        kb, ka = kernel_bt(), kernel_at()
        info["kernel_bt_ops"], info["kernel_at_ops"] = kb.counts(), ka.counts()
        info["kernel_bt_formulas"], info["kernel_at_formulas"] = kb.formulas(), ka.formulas()
    return var, info


def pool(rows):
    """Seeds of one case pooled: norm error over all, the others as maxima."""
    es, rs = sum(r["err_sq"] for r in rows), sum(r["ref_sq"] for r in rows)
    return {"norm_err": math.sqrt(es / rs) if math.isfinite(es) else math.inf,
            "c_tile": max(r["c_tile"] for r in rows), "max_rel": max(r["max_rel"] for r in rows),
            "p999_rel": max(r["p999_rel"] for r in rows),
            "nonfinite": sum(r["nonfinite"] for r in rows)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="JSON path (default benchmarks/results/winograd-points-<cpu>.json)")
    p.add_argument("--quick", action="store_true", help="16x16 maps, C=K=64, one seed per case")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--kernel-check-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.kernel_check_only:
        print(json.dumps(kernel_check()))
        return
    model, tag, flags = cpu_info()
    out_path = pathlib.Path(args.out or ROOT / "benchmarks" / "results" / f"winograd-points-{tag}.json")

    # the inputs and their float64 references, shared by every set
    cases, case_meta, groups = {}, {}, {}
    for kind, c, side, seeds in case_list(args.quick):
        for s in range(seeds):
            key = f"{kind} C=K={c} {side}x{side} seed{s}"
            x, w, b = make_case(kind, c, side, 1000 * c + 10 * KINDS.index(kind) + s)
            ref = F.conv2d(x.double(), w.double(), b.double(), padding=1)
            denom = (tile_max(x) * w.double().abs().sum(dim=(1, 2, 3)).view(1, -1, 1, 1)
                     + b.double().abs().view(1, -1, 1, 1))
            tiny = 1e-3 * float(ref.abs().median())
            cases[key] = (x, w, b, ref, denom, tiny)
            case_meta[key] = {"kind": kind, "channels": c, "side": side, "seed": s,
                              "max_abs_x": float(x.abs().max()), "median_abs_ref": float(ref.abs().median()),
                              "tiny": tiny,
                              "direct_fp32": metrics(F.conv2d(x, w, b, padding=1), ref, denom, tiny)}
            groups.setdefault(f"{kind} C={c}", []).append(key)

    sets = []
    for name, pts in CANDIDATES:
        var, info = programs_for(name, pts, args.quick)
        info["cases"] = {key: {vn: metrics(winograd(x, w, b, g, bp, ap), ref, denom, tiny)
                               for vn, (bp, ap, g) in var.items()}
                         for key, (x, w, b, ref, denom, tiny) in cases.items()}
        sets.append(info)
        print(f"done {name:14s} exact={info['exact']} float64 check "
              f"{info['float64_check_max_rel']:.1e}", flush=True)

    summary = {"direct_fp32": {g: pool([case_meta[k]["direct_fp32"] for k in ks])
                               for g, ks in groups.items()}}
    for info in sets:
        for vn in next(iter(info["cases"].values())):
            summary[f"{info['name']} [{vn}]"] = {g: pool([info["cases"][k][vn] for k in ks])
                                                for g, ks in groups.items()}

    checks = {"reciprocal": {n: reciprocal_check(pts) for n, pts in CANDIDATES if 0 in pts},
              "kernel": kernel_check()}
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default", PYTHONPATH=str(ROOT))
    try:
        r = subprocess.run([sys.executable, __file__, "--kernel-check-only"], env=env,
                           capture_output=True, text=True, timeout=600, check=True)
        checks["kernel_default"] = json.loads(r.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError) as e:
        checks["kernel_default"] = {"error": repr(e)}

    # recommendation: two error scores, the mean log norm error over the random cases (normal
    # and relu) and the mean log tile-bound constant c over every case but the subnormal one
    # (primary formulas), averaged; among the sets within 5% of the best, the one with the
    # fewest transform ops per tile (12 B^T + 10 A^T 1-D programs, no FMA)
    rand = [g for g in groups if g.startswith(("normal", "relu"))]
    worst = [g for g in groups if not g.startswith("denormal")]
    for info in sets:
        summ = summary[f"{info['name']} [primary]"]
        info["score_norm"] = sum(math.log(summ[g]["norm_err"]) for g in rand) / len(rand)
        info["score_c"] = sum(math.log(summ[g]["c_tile"]) for g in worst) / len(worst)
        info["score"] = (info["score_norm"] + info["score_c"]) / 2
        info["cost"] = info["per_tile_ops"]["input_per_channel"] + info["per_tile_ops"]["output_per_channel"]

    def pick(key):
        best = min(s[key] for s in sets)
        return min((s for s in sets if s[key] <= best + math.log(1.05)), key=lambda s: (s["cost"], s[key]))

    rec, rec_norm = pick("score"), pick("score_norm")
    cur = next(s for s in sets if s["name"] == CURRENT)
    same_cost = min((s for s in sets if s["cost"] <= cur["cost"]), key=lambda s: s["score"])

    doc = {"what": "Winograd F(4x4, 3x3) point sets: float32 error of an emulation of fpnops' "
                   "computation order on the CPU (not timings)",
           "command": " ".join(["python benchmarks/winograd_points.py"]
                               + (sys.argv[1:] if argv is None else list(argv))),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "cpu_model": model, "cpu_tag": tag, "cpu_flags": flags,
           "torch": torch.__version__, "python": platform.python_version(),
           "torch_threads": torch.get_num_threads(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "quick": args.quick,
           "notes": {
               "scaling": "B^T rows and A^T columns are the coprime integer multiples of the "
                          "Lagrange rows (positive leading power) and of the Vandermonde columns "
                          "(positive first entry); G takes every other factor (V is made in "
                          "float64 and rounded once, so G's fractions cost no float32 rounding). "
                          "For the current set this is exactly fpnops' B^T, G, A^T. Rescaling a "
                          "row by a power of 2 changes no float32 rounding (but at overflow and "
                          "in the subnormal range). A_scaled: the other choice, B^T and G rows "
                          "integer, A^T fractional (e.g. 1/6 rounded to float32).",
               "variants": "primary: hand-derived B^T formulas where given (HAND_BT), else "
                           "structured_bt's; structured_at's A^T. structured: structured_bt/at. "
                           "fma: primary with every mul+add contracted (left operand first). "
                           "plain: each row one linear combination in index order. kernel / "
                           "kernel_avx2 (current set): winograd_kernel.h's bt/at operation for "
                           "operation, without FMA (the DEFAULT build) and with the AVX2 build's "
                           "contractions; checks.kernel* compare them bit for bit with the real "
                           "kernel. A_scaled: structured formulas of the A-scaled matrices.",
               "metrics": "ref: F.conv2d in float64 of the same float32 x, w, b. norm_err = "
                          "||y-ref||/||ref|| (seeds pooled); c_tile = max |y-ref| / (max|x| over "
                          "the output's 6x6 input tile, all channels, * sum_(c,3x3) |w[k]| + "
                          "|b[k]|); max_rel, p999_rel = max and 99.9th percentile of |y-ref|/|ref| "
                          "over |ref| > 1e-3 median|ref|; maxima over seeds. b ~ 0.1 median|conv|.",
               "growth": "bt_growth = (max row sum |B^T|)^2 bounds |U|/max|x|; g_growth the same "
                         "for G (|V| / max|g| per 3x3 kernel); at_growth for A^T; total = their "
                         "product (36100 for the current set, as in fpnops/ops/winograd.py). "
                         "kappa2 = (max_i sum_j |A^T_ij| ||G_j||_1 ||B^T_j||_1)^2, independent of "
                         "the scaling: the first-order bound on each output's rounding error is "
                         "a small multiple of kappa2 * eps * tile max|x| * sum|w|.",
               "recommendation_rule": "score = mean of score_norm (mean log norm_err over the "
                                      "normal and relu cases) and score_c (mean log c_tile over "
                                      "every case but the subnormal one), primary formulas; "
                                      "among the sets within 5% of the best score, the fewest "
                                      "transform ops per tile (no FMA). best_by_norm_error: the "
                                      "same on score_norm alone. best_at_current_cost: the best "
                                      "score among sets with at most the current set's op "
                                      "count (its structured formulas)."},
           "cases": case_meta, "point_sets": sets, "summary": summary, "checks": checks,
           "best_at_current_cost": same_cost["name"], "best_by_norm_error": rec_norm["name"],
           "recommended": {k: rec[k] for k in ("name", "points", "BT", "G", "AT", "bt_formulas",
                                                "at_formulas", "bt_ops", "at_ops", "per_tile_ops",
                                                "growth", "score", "score_norm", "score_c",
                                                "cost")}}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(doc, indent=1) + "\n")
    print_tables(doc, groups)
    print(f"\nwrote {out_path}")


def _cell(r):
    if r["nonfinite"]:
        return f"{'overflow: ' + str(r['nonfinite']) + ' nonfinite':>27s}"
    return f"{r['norm_err']:8.2e} {r['c_tile']:8.2e} {r['max_rel']:8.1e}"


def print_tables(doc, groups):
    summ = doc["summary"]
    gnames = list(groups)
    rand = [g for g in gnames if g.startswith(("normal", "relu"))]
    adv = [g for g in gnames if g not in rand]
    print(f"\nCPU: {doc['cpu_model']} ({doc['cpu_tag']}), torch {doc['torch']}; float32 "
          "emulation of fpnops' order, not timings")
    rows = [("direct fp32", summ["direct_fp32"])]
    for s in doc["point_sets"]:
        rows.append((s["name"], summ[f"{s['name']} [primary]"]))
        if s["name"] == CURRENT:
            rows += [(f"  [{v}]", summ[f"{s['name']} [{v}]"]) for v in ("kernel", "kernel_avx2")]
    for title, gs in (("Random inputs", rand), ("Adversarial inputs", adv)):
        print(f"\n{title} (primary formulas): norm error / tile-bound c / max per-element rel")
        print(f"{'point set (+inf)':16s} " + " ".join(f"{g:>27s}" for g in gs))
        for n, r in rows:
            print(f"{n:16s} " + " ".join(f"{_cell(r[g]):>27s}" for g in gs))
    print("\n99.9th percentile of the per-element relative error (primary formulas)")
    print(f"{'point set (+inf)':16s} " + " ".join(f"{g:>18s}" for g in gnames))
    for n, r in rows:
        print(f"{n:16s} " + " ".join(f"{r[g]['p999_rel']:18.2e}" if not r[g]["nonfinite"]
                                     else f"{'overflow':>18s}" for g in gnames))
    print("\nCost and growth: B^T / A^T nonzeros (entries not +-1); 1-D ops per column, adds+muls "
          "(with FMA); per tile and channel (in+out); growth |U|/max|x|, total; kappa2")
    for s in doc["point_sets"]:
        b, a, t = s["bt_ops"], s["at_ops"], s["per_tile_ops"]
        print(f"{s['name']:16s} BT {s['BT_entries']['nonzero']:2d} ({s['BT_entries']['not_pm1']:2d})"
              f" AT {s['AT_entries']['nonzero']:2d} ({s['AT_entries']['not_pm1']:2d})"
              f"  bt {b['adds']:2d}+{b['muls']:2d} ({b['total_with_fma']:2d})"
              f"  at {a['adds']:2d}+{a['muls']} ({a['total_with_fma']:2d})"
              f"  tile {t['input_per_channel']}+{t['output_per_channel']}"
              f"  growth {s['growth']['bt_growth']:5.0f} {s['growth']['total_growth']:9.3g}"
              f"  kappa2 {s['growth']['kappa2']:7.1f}  [{s['primary_bt']}]")
    cur = next(s for s in doc["point_sets"] if s["name"] == CURRENT)
    kb, ka = cur["kernel_bt_ops"], cur["kernel_at_ops"]
    print(f"(current set as winograd_kernel.h writes it: bt {kb['adds']}+{kb['muls']} "
          f"({kb['total_with_fma']}), at {ka['adds']}+{ka['muls']} ({ka['total_with_fma']}), "
          f"tile {12 * kb['total']}+{10 * ka['total']})")
    print(f"\nFormula variants, norm error on {rand[0]}: primary / structured / fma / plain"
          " / A-scaled")
    for s in doc["point_sets"]:
        cells = [summ.get(f"{s['name']} [{v}]", {}).get(rand[0], {}).get("norm_err")
                 for v in ("primary", "structured", "fma", "plain", "A_scaled")]
        print(f"{s['name']:16s} " + " ".join(f"{c:9.3e}" if c is not None else f"{'-':>9s}"
                                             for c in cells))
    print("\nChecks:")
    for n, r in doc["checks"]["reciprocal"].items():
        print(f"  {n} on (x, w) vs {','.join(r['reciprocal_set'])} on flipped (x, w): "
              f"{r['differing_outputs']} of {r['outputs']} outputs differ")
    for key in ("kernel", "kernel_default"):
        k = doc["checks"][key]
        if "error" in k:
            print(f"  {key}: {k['error']}")
            continue
        for c in k["cases"]:
            print(f"  real kernel ({k['cpu_capability']}) {c['case']}: outputs differing from "
                  + ", ".join(f"{v} {c[v]['differing']}" for v in ("kernel", "kernel_avx2", "structured"))
                  + f" (of {c['outputs']})")
    print(f"\nrecommended by the rule: {doc['recommended']['name']}; by norm error alone: "
          f"{doc['best_by_norm_error']}; best at the current set's op count: "
          f"{doc['best_at_current_cost']}")
    print("scores (mean log norm error, random; mean log c, all but subnormal):")
    for s in doc["point_sets"]:
        print(f"  {s['name']:16s} norm {s['score_norm']:7.3f}  c {s['score_c']:7.3f}  "
              f"ops/tile {s['cost']}")


if __name__ == "__main__":
    main()
