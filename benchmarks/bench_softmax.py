"""Softmax with cross-entropy on the classifier output (batch, 1000): forward (loss and
probabilities, which includes the host sync for the loss) and backward."""
import numpy as np

import convnet
from convnet import ops

CLASSES = 1000


def _numpy_xent(x, labels):
    m = x.max(axis=1, keepdims=True)
    e = np.exp(x - m)
    s = e.sum(axis=1, keepdims=True)
    loss = float(np.mean(np.log(s[:, 0]) - (x[np.arange(len(labels)), labels] - m[:, 0])))
    return loss, e / s


def cases(ctx):
    dev, n, torch = ctx["device"], ctx["batch"], ctx["torch"]
    a = (3 * np.random.standard_normal((n, CLASSES))).astype(np.float32)
    lab = np.random.randint(0, CLASSES, n).astype(np.int32)
    x, labels = convnet.tensor(a, dev), convnet.tensor(lab, dev)
    probs = ops.softmax_cross_entropy(x, labels)[1]
    p = probs.numpy()
    onehot = np.eye(CLASSES, dtype=np.float32)[lab]
    fwd = {"name": f"softmax_xent fwd ({n}, {CLASSES})", "ours": lambda: ops.softmax_cross_entropy(x, labels),
           "bytes": 2 * a.nbytes, "numpy": lambda: _numpy_xent(a, lab)}
    bwd = {"name": f"softmax_xent bwd ({n}, {CLASSES})",
           "ours": lambda: ops.softmax_cross_entropy_backward(probs, labels),
           "bytes": 2 * a.nbytes, "numpy": lambda: (p - onehot) / np.float32(n)}
    if torch is not None:
        F = torch.nn.functional
        tx = torch.from_numpy(a).to(ctx["torch_device"])
        tl = torch.from_numpy(lab.astype(np.int64)).to(ctx["torch_device"])
        tp = torch.from_numpy(p).to(ctx["torch_device"])
        toh = torch.from_numpy(onehot).to(ctx["torch_device"])

        def torch_fwd():  # the same outputs: the loss as a Python float and the probabilities
            logp = F.log_softmax(tx, dim=1)
            return F.nll_loss(logp, tl).item(), logp.exp()

        fwd["torch"] = torch_fwd
        bwd["torch"] = lambda: (tp - toh) / n
    return [fwd, bwd]
