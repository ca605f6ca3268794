"""The same layer graph in PyTorch, for comparisons only (tests and benchmarks; needs torch).

TorchNet(net) interprets a Net's layer specs with torch.nn.functional: grouped convs, the
paper's LRN (PyTorch divides alpha by the window size, so it is given alpha * size), 3/2 max
pools, dropout, softmax cross-entropy; its parameters are the Net's, in the one-device layout.
Two-tower nets run as written (one torch device), so both placements can be checked.
"""
import numpy as np


class TorchNet:
    def __init__(self, net, device="cpu", dtype=None):
        import torch

        self.torch = torch
        self.net = net
        self.dtype = dtype or torch.float32
        self.device = device
        self.params = {k: torch.tensor(np.asarray(v), dtype=self.dtype, device=device, requires_grad=True)
                       for k, v in net.state_dict().items()}

    def _part(self, layer, name):
        p = layer.params[name]
        return self.params[p.key][p.rows[0]:p.rows[1]]

    def forward(self, images, labels=None, train=False):
        torch, F = self.torch, self.torch.nn.functional
        net = self.net
        x = images if torch.is_tensor(images) else torch.tensor(np.asarray(images), dtype=self.dtype,
                                                                 device=self.device)
        out = {net.input_layer.name: x}
        loss = None
        for layer in net.order:
            if layer is net.input_layer or (layer is net.loss_layer and labels is None):
                continue
            xs = [out[n] for n in layer.inputs]
            h = xs[0] if len(xs) == 1 else torch.cat(xs, 1)
            t = layer.type
            if t == "conv":
                y = F.conv2d(h, self._part(layer, "weight"), self._part(layer, "bias"), layer.stride, layer.padding,
                             1, layer.groups)
            elif t == "linear":
                y = F.linear(h.reshape(h.shape[0], -1), self._part(layer, "weight"), self._part(layer, "bias"))
            elif t == "relu":
                y = F.relu(h)
            elif t == "lrn":
                chunks = torch.chunk(h, layer.groups, 1)
                y = torch.cat([F.local_response_norm(c, layer.size, layer.alpha * layer.size, layer.beta, layer.k)
                               for c in chunks], 1)
            elif t == "maxpool":
                y = F.max_pool2d(h, layer.size, layer.stride)
            elif t == "dropout":
                y = F.dropout(h, layer.p, training=train)
            elif t in ("flatten",):
                y = h.reshape(h.shape[0], -1)
            elif t == "concat":
                y = h
            elif t == "softmax_loss":
                lab = labels if torch.is_tensor(labels) else torch.tensor(np.asarray(labels), dtype=torch.long,
                                                                          device=self.device)
                loss = F.cross_entropy(h, lab)
                continue
            else:
                raise ValueError(f"TorchNet: layer type {t!r}")
            out[layer.name] = y
        logits = out[net.output_layer.name]
        return logits if labels is None else (logits, loss)

    def grads(self):
        return {k: p.grad.detach().cpu().numpy() for k, p in self.params.items()}
