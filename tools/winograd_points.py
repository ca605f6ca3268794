"""Derives the Winograd F(4x4, 3x3) matrices (Toom-Cook, exact rationals) for a few sets of
interpolation points and compares their float32 error on random 6x6 patches summed over 256
channels (float32 transforms and sums, float64 reference), norm-wise and worst element relative
to the largest output. csrc/cuda/winograd.cuh uses the set with the smallest error:
0, 1, -1, 1/2, -2 (and infinity).   python tools/winograd_points.py   (numpy; ~10 s)

Construction: A^T[i][k] = a_k^i, G[k][j] = a_k^j / prod_{l != k}(a_k - a_l) for the finite points,
the point at infinity a last column of A^T / row of G picking the leading coefficient; B^T is then
the unique solution of sum_k A^T[i][k] G[k][j] B^T[k][l] = [l == i + j] (solved exactly)."""
import numpy as np
from fractions import Fraction as F
m, r = 4, 3
n = m + r - 1
def mats(pts):
    pts = [F(p) for p in pts]
    AT = [[p**i for p in pts] + [F(int(i == m-1))] for i in range(m)]
    G = []
    for k, a in enumerate(pts):
        N = F(1)
        for l, b in enumerate(pts):
            if l != k: N *= (a - b)
        G.append([a**j / N for j in range(r)])
    G.append([F(int(j == r-1)) for j in range(r)])
    # solve sum_k AT[i][k] G[k][j] BT[k][l] = [l == i+j] for BT (exact, Gaussian elimination)
    rows, rhs = [], []
    for i in range(m):
        for j in range(r):
            for l in range(n):
                row = [F(0)]*(n*n)
                for k in range(n): row[k*n+l] = AT[i][k]*G[k][j]
                rows.append(row); rhs.append(F(int(l == i+j)))
    # least squares exact: normal equations would be fine but do row reduction with consistency check
    M = [row[:] + [b] for row, b in zip(rows, rhs)]
    ncol = n*n; piv = []; rr = 0
    for c in range(ncol):
        p = next((i for i in range(rr, len(M)) if M[i][c] != 0), None)
        if p is None: continue
        M[rr], M[p] = M[p], M[rr]
        pv = M[rr][c]; M[rr] = [x/pv for x in M[rr]]
        for i in range(len(M)):
            if i != rr and M[i][c] != 0:
                f = M[i][c]; M[i] = [x - f*y for x, y in zip(M[i], M[rr])]
        piv.append(c); rr += 1
    assert all(all(x == 0 for x in M[i]) for i in range(rr, len(M))), "inconsistent"
    assert rr == ncol, ("underdetermined", rr)
    BT = [[M[piv.index(k*n+l)][-1] for l in range(n)] for k in range(n)]
    return AT, G, BT
def err(pts, trials=2000, C=256):
    AT, G, BT = (np.array([[float(x) for x in row] for row in t]) for t in mats(pts))
    rng = np.random.default_rng(0)
    d = rng.standard_normal((trials, C, 6, 6)); g = rng.standard_normal((trials, C, 3, 3))
    f = np.float32
    V = np.einsum('ab,tcbd,ed->tcae', BT.astype(f), d.astype(f), BT.astype(f))  # float32 einsum
    U = np.einsum('ab,tcbd,ed->tcae', G, g, G).astype(f)  # filter transform: done once, treat as exact-ish in f32
    Mm = (U*V).sum(1, dtype=f)
    Y = np.einsum('ab,tbd,ed->tae', AT.astype(f), Mm, AT.astype(f))
    ref = np.zeros((trials, 4, 4))
    for i in range(4):
        for j in range(4):
            ref[:, i, j] = (d[:, :, i:i+3, j:j+3] * g).sum((1, 2, 3))
    return np.linalg.norm(Y - ref) / np.linalg.norm(ref), np.abs(Y-ref).max()/np.abs(ref).max()
for pts in ([0, 1, -1, 2, -2], [0, 1, -1, F(1,2), F(-1,2)], [0, 1, -1, F(1,2), -2], [0, 1, -1, 2, F(-1,2)]):
    AT, G, BT = mats(pts)
    print([str(p) for p in pts], "err norm/max %.2e %.2e" % err(pts))
    for name, t in (("AT", AT), ("G", G), ("BT", BT)):
        print(" ", name, [[str(x) for x in row] for row in t])
