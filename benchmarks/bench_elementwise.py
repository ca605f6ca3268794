"""Elementwise ops on AlexNet activation shapes. A case: name, ours (callable), and
optionally numpy / torch callables doing the same work, bytes moved, flops, items."""
import numpy as np

import convnet
from convnet import ops

# (name, per-image shape) of the activations each op sees in AlexNet
RELU_SHAPES = [("conv1", (96, 55, 55)), ("conv3", (384, 13, 13)), ("fc6", (4096,))]


def cases(ctx):
    dev, n, torch = ctx["device"], ctx["batch"], ctx["torch"]
    out = []
    for name, shape in RELU_SHAPES:
        a = np.random.standard_normal((n,) + shape).astype(np.float32)
        x = convnet.tensor(a, dev)
        case = {"name": f"relu {name}", "ours": lambda x=x: ops.relu(x), "bytes": 2 * a.nbytes,
                "numpy": lambda a=a: np.maximum(a, 0)}
        if torch is not None:
            t = torch.from_numpy(a).to(ctx["torch_device"])
            case["torch"] = lambda t=t: torch.relu(t)
        out.append(case)
    return out
