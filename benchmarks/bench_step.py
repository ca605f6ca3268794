"""The whole training step (forward, backward, SGD update) in images/s, two towers against one
grouped device, and the same one-device net in PyTorch (grouped convs, LRN with alpha * size,
the same weights; torch.optim.SGD with the same momentum and weight decay) on the same device.

On a GPU: the full AlexNet at batch ctx["batch"] (128). Two towers use logical devices cuda:0
and cuda:1 (two GPUs when there are two, else both on cuda:0 in two threads with per-thread
streams). On the CPU: the small AlexNet the training script uses, at ctx["batch"], and the
full AlexNet at batch 2 (a full batch would take minutes).

Each case repeats one batch of random images, so the learning rate is the paper's 0.01 scaled
by batch/128: at 0.01 the batch-2 AlexNet's loss left 10 by its third step and was NaN by its
twentieth (the same batch trained over and over), and a timing loop that long would then time
arithmetic on NaNs. Scaled, it stayed below 6 for 40 steps.
"""
import numpy as np

from convnet import models
from convnet.optim import SGD


def _lr(batch):
    return 0.01 * batch / 128


def _step_case(name, net, batch, num_classes, seed=0):
    rng = np.random.default_rng(seed)
    c, h, w = net.input_layer.shape
    x = rng.standard_normal((batch, c, h, w)).astype(np.float32)
    y = rng.integers(0, num_classes, batch).astype(np.int32)
    import convnet

    images = convnet.tensor(x, net.layers[1].device)
    opt = SGD(net, lr=_lr(batch))

    def step():
        net.forward(images, y, train=True)
        net.backward()
        opt.step()

    return {"name": name, "ours": step, "items": batch, "flops": 6 * net.forward_macs() * batch,
            "_x": x, "_y": y}


def _torch_step(torch, net, x, y, device):
    from convnet.torch_net import TorchNet

    ref = TorchNet(net, device=device)
    opt = torch.optim.SGD(list(ref.params.values()), lr=_lr(len(x)), momentum=0.9, weight_decay=5e-4)
    xt = torch.tensor(x, device=device)
    yt = torch.tensor(y, dtype=torch.long, device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        _, loss = ref.forward(xt, yt, train=True)
        loss.backward()
        opt.step()

    return step


def cases(ctx):
    dev, batch, torch = ctx["device"], ctx["batch"], ctx["torch"]
    gpu = dev != "cpu"
    configs = []
    if gpu:
        two = ["cuda:0", "cuda:1"]
        configs.append(("alexnet", batch, lambda t, d: models.alexnet(towers=t, devices=d), 1000, two, [dev]))
    else:
        two = ["cpu:0", "cpu:1"]
        configs.append(("small_alexnet", batch, lambda t, d: models.small_alexnet(towers=t, devices=d), 10, two,
                        ["cpu:0"]))
        configs.append(("alexnet", 2, lambda t, d: models.alexnet(towers=t, devices=d), 1000, two, ["cpu:0"]))
    out = []
    for name, n, make, classes, dev2, dev1 in configs:
        case2 = _step_case(f"{name} 2 towers b{n}", make(2, dev2), n, classes)
        one = make(1, dev1)
        case1 = _step_case(f"{name} 1 device b{n}", one, n, classes)
        if torch is not None:
            case1["torch"] = _torch_step(torch, one, case1["_x"], case1["_y"], ctx["torch_device"])
            case2["torch"] = case1["torch"]  # PyTorch has one (grouped) form of the net
        out += [case2, case1]
    return out
