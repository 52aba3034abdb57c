import pytest
import torch
from torch import nn

from lossgym.models import StackedNet


def member_module(net: StackedNet, flat_row: torch.Tensor) -> nn.Module:
    """An ordinary torch module carrying one member's parameters."""
    p = {k: v[0] for k, v in net.views(flat_row.unsqueeze(0)).items()}
    layers: list[nn.Module] = []
    if net.arch == "mlp":
        for i in range(net.depth):
            lin = nn.Linear(*p[f"w{i}"].shape)
            lin.weight.data = p[f"w{i}"].T.clone()
            lin.bias.data = p[f"b{i}"].clone()
            layers += [lin, nn.ReLU()]
        head = nn.Linear(p["w_out"].shape[0], net.num_classes)
        head.weight.data = p["w_out"][:, : net.num_classes].T.clone()
        head.bias.data = p["b_out"][: net.num_classes].clone()
        return nn.Sequential(*layers, head)
    layers.append(nn.Unflatten(1, (1, net.num_features)))
    length = net.num_features
    for i in range(net.depth):
        w = p[f"conv{i}"]
        conv = nn.Conv1d(w.shape[1], w.shape[0], w.shape[2], padding=w.shape[2] // 2)
        conv.weight.data, conv.bias.data = w.clone(), p[f"bias{i}"].clone()
        layers += [conv, nn.ReLU()]
        if length >= 2:
            layers.append(nn.MaxPool1d(2))
            length //= 2
    head = nn.Linear(p["w_out"].shape[0], net.num_classes)
    head.weight.data = p["w_out"][:, : net.num_classes].T.clone()
    head.bias.data = p["b_out"][: net.num_classes].clone()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = nn.Sequential(*layers), head

        def forward(self, x):
            return self.head(self.body(x).mean(-1))

    return Net()


@pytest.mark.parametrize("arch,depth", [("mlp", 1), ("mlp", 3), ("cnn", 1), ("cnn", 2)])
def test_each_member_equals_an_ordinary_module(arch, depth):
    net = StackedNet(arch, num_features=40, num_classes=10, width=16, depth=depth)
    flat = torch.stack([net.init_member(torch.Generator().manual_seed(s)) for s in range(4)])
    x = torch.randn(4, 9, 40)
    out = net.forward(flat, x)
    assert out.shape == (4, 9, 10)
    for i in range(4):
        ref = member_module(net, flat[i])(x[i])
        torch.testing.assert_close(out[i], ref, rtol=1e-5, atol=1e-5)


def test_init_is_per_member_and_bounded():
    net = StackedNet("mlp", 40, 10, 32, 2)
    a = net.init_member(torch.Generator().manual_seed(0))
    b = net.init_member(torch.Generator().manual_seed(0))
    c = net.init_member(torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    w0 = net.views(a.unsqueeze(0))["w0"]
    assert w0.abs().max() <= 1 / 40**0.5
    assert a.numel() == net.num_params == 40 * 32 + 32 + 32 * 32 + 32 + 32 * 16 + 16


def test_unknown_arch():
    with pytest.raises(ValueError, match="'resnet'"):
        StackedNet("resnet", 40, 10, 32, 2)
