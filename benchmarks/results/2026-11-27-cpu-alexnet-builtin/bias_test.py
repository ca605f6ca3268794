"""Why the paper's lr 0.01 diverges on the built-in data: the first 8 steps (batches of 128, centre
crops, dropout off) from the paper's initialisation, then with fc7's bias, then fc6's and fc7's,
set to 0 instead of the paper's 1.

    python bias_test.py [DATASET]
"""
import sys, numpy as np, convnet
from convnet import models, data
from convnet.data.augment import view_batch
from convnet.optim import SGD
ds = data.open_dataset(sys.argv[1] if len(sys.argv) > 1 else "/tmp/convnet-data/builtin-256-s0-5120-512-c10")
order = np.random.default_rng(0).permutation(len(ds.train))
for zero in ([], ["fc7.bias"], ["fc6.bias", "fc7.bias"]):
    net = models.alexnet(towers=1, devices=["cpu"], num_classes=10, dropout=0.0)
    sd = net.state_dict()
    for k in zero: sd[k][:] = 0
    net.load_state_dict(sd)
    opt = SGD(net, lr=0.01)
    losses = []
    for s in range(8):
        idx = np.sort(order[s * 128:(s + 1) * 128])
        x, _ = view_batch(ds.train.images[idx], 224, "center", mean=ds.mean)
        y = convnet.tensor(ds.train.labels[idx].astype(np.int32))
        logits, loss = net.forward(x, y, train=True); net.backward(); opt.step()
        losses.append(round(loss, 3))
    print("zero biases", zero or "none", "losses", losses, flush=True)
