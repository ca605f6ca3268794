"""The paper's AlexNet (one device, grouped), the paper's recipe but no dropout (its masks are
ours): ours against PyTorch from the same weights on the same batches of the built-in data
(centre crops, mean subtracted); per step the two losses, the logits' spread and fc8's weights.

    python compare_steps.py [STEPS [LR [DATASET]]]   (DATASET: the built-in data at 256 px, made
    by python -m convnet.train --model alexnet --image-size 256 --num-train 5120 --num-val 512)
"""
import sys, time
import numpy as np, torch
import convnet
from convnet import models, data
from convnet.data.augment import view_batch
from convnet.optim import SGD
from convnet.torch_net import TorchNet

torch.set_num_threads(2)
steps = int(sys.argv[1]) if len(sys.argv) > 1 else 8
lr = float(sys.argv[2]) if len(sys.argv) > 2 else 0.01
B = 128
ds = data.open_dataset(sys.argv[3] if len(sys.argv) > 3 else "/tmp/convnet-data/builtin-256-s0-5120-512-c10")
rng = np.random.default_rng(0)
order = rng.permutation(len(ds.train))
net = models.alexnet(towers=1, devices=["cpu"], num_classes=10, dropout=0.0)
ref = TorchNet(models.alexnet(towers=1, devices=["cpu"], num_classes=10, dropout=0.0))
opt = SGD(net, lr=lr)
vel = {k: torch.zeros_like(p) for k, p in ref.params.items()}
for s in range(steps):
    idx = np.sort(order[s * B:(s + 1) * B])
    x, _ = view_batch(ds.train.images[idx], 224, "center", mean=ds.mean)
    y = convnet.tensor(ds.train.labels[idx].astype(np.int32))
    t0 = time.time()
    logits, loss = net.forward(x, y, train=True)
    net.backward(); opt.step()
    t1 = time.time()
    tl, tloss = ref.forward(x.numpy(), torch.tensor(ds.train.labels[idx].astype(np.int64)), train=True)
    tloss.backward()
    with torch.no_grad():
        for k, p in ref.params.items():
            vel[k].mul_(0.9).add_(p, alpha=-5e-4 * lr).add_(p.grad, alpha=-lr)
            p.add_(vel[k]); p.grad = None
    t2 = time.time()
    st = net.state_dict()
    print(f"step {s}: ours {loss:.4f} torch {tloss.item():.4f} | logits std ours {logits.numpy().std():.3f} "
          f"torch {tl.detach().numpy().std():.3f} | fc8 w std {st['fc8.weight'].std():.4f} "
          f"{t1 - t0:.1f}s / {t2 - t1:.1f}s", flush=True)
