"""NumPy float64 references of the conv and fully-connected families.

The conv is a sum over kernel offsets (kr, ks): for each offset, a strided window of the
padded input times the weights at that offset, one batched matmul per offset over the groups."""
import numpy as np


def _windows(xpad, kr, ks, p, q, stride):
    sh, sw = stride
    return xpad[:, :, kr:kr + sh * (p - 1) + 1:sh, ks:ks + sw * (q - 1) + 1:sw]


def conv_out_size(h, w, r, s, stride, pad):
    return (h + 2 * pad[0] - r) // stride[0] + 1, (w + 2 * pad[1] - s) // stride[1] + 1


def conv2d(x, w, b=None, stride=(1, 1), pad=(0, 0), groups=1):
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    n, c, h, wd = x.shape
    k, cg, r, s = w.shape
    kg = k // groups
    p, q = conv_out_size(h, wd, r, s, stride, pad)
    xpad = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    y = np.zeros((groups, kg, n * p * q))
    wg = w.reshape(groups, kg, cg, r, s)
    for kr in range(r):
        for ks in range(s):
            win = _windows(xpad, kr, ks, p, q, stride).reshape(n, groups, cg, p * q)
            cols = win.transpose(1, 2, 0, 3).reshape(groups, cg, n * p * q)
            y += wg[:, :, :, kr, ks] @ cols
    y = y.reshape(k, n, p, q).transpose(1, 0, 2, 3)
    if b is not None:
        y = y + np.asarray(b, np.float64)[None, :, None, None]
    return y


def conv2d_backward(x, w, dy, stride=(1, 1), pad=(0, 0), groups=1):
    """(dx, dw, db) of sum(conv2d(x, w, b) * dy)."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    dy = np.asarray(dy, np.float64)
    n, c, h, wd = x.shape
    k, cg, r, s = w.shape
    kg = k // groups
    p, q = dy.shape[2:]
    xpad = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    dxpad = np.zeros_like(xpad)
    dyg = dy.transpose(1, 0, 2, 3).reshape(groups, kg, n * p * q)
    wg = w.reshape(groups, kg, cg, r, s)
    dw = np.zeros((groups, kg, cg, r, s))
    sh, sw = stride
    for kr in range(r):
        for ks in range(s):
            win = _windows(xpad, kr, ks, p, q, stride).reshape(n, groups, cg, p * q)
            cols = win.transpose(1, 2, 0, 3).reshape(groups, cg, n * p * q)
            dw[:, :, :, kr, ks] = dyg @ cols.transpose(0, 2, 1)
            dcols = wg[:, :, :, kr, ks].transpose(0, 2, 1) @ dyg  # (groups, cg, n*p*q)
            dwin = dcols.reshape(c, n, p, q).transpose(1, 0, 2, 3)
            dxpad[:, :, kr:kr + sh * (p - 1) + 1:sh, ks:ks + sw * (q - 1) + 1:sw] += dwin
    dx = dxpad[:, :, pad[0]:pad[0] + h, pad[1]:pad[1] + wd]
    return dx, dw.reshape(k, cg, r, s), dy.sum(axis=(0, 2, 3))


def linear(x, w, b=None):
    y = np.asarray(x, np.float64) @ np.asarray(w, np.float64).T
    return y if b is None else y + np.asarray(b, np.float64)


def linear_backward(x, w, dy):
    x, w, dy = (np.asarray(a, np.float64) for a in (x, w, dy))
    return dy @ w, dy.T @ x, dy.sum(axis=0)
