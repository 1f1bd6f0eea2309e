"""Receptive fields against hand computations and a published figure, on the fx and export graphs."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from convert.surgery.receptive import receptive_fields


def _graphs(model: nn.Module, x: torch.Tensor) -> dict[str, fx.GraphModule]:
    gm = fx.symbolic_trace(model)
    ShapeProp(gm).propagate(x)
    return {"fx": gm, "export": torch.export.export(model, (x,)).module()}


def _output_field(gm: fx.GraphModule) -> tuple[int, ...]:
    (output,) = [n for n in gm.graph.nodes if n.op == "output"]
    return receptive_fields(gm)[output.args[0][0] if isinstance(output.args[0], tuple | list) else output.args[0]]


class Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 4, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.max_pool2d(x, 2), self.w, stride=1, dilation=2)


@pytest.mark.parametrize("path", ["fx", "export"])
def test_stacked_windows_match_the_recurrence(path: str) -> None:
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3),  # rf 3, jump 1
        nn.Conv2d(4, 4, 3, stride=2),  # rf 5, jump 2
        nn.MaxPool2d(2),  # rf 7, jump 4
        nn.Conv2d(4, 4, (3, 1), dilation=2),  # rf 7 + 2*2*4 = 23 by 7
        nn.ReLU(),
    ).eval()
    assert _output_field(_graphs(model, torch.randn(1, 2, 40, 40))[path]) == (23, 7)


@pytest.mark.parametrize("path", ["fx", "export"])
def test_functional_calls_and_conv1d(path: str) -> None:
    assert _output_field(_graphs(Functional().eval(), torch.randn(1, 4, 20, 20))[path]) == (
        10,
        10,
    )  # pool: 2, jump 2; conv: 2 + (3-1)*2*2
    conv1d = nn.Sequential(nn.Conv1d(1, 2, 5, stride=3), nn.Conv1d(2, 2, 3)).eval()
    assert _output_field(_graphs(conv1d, torch.randn(1, 1, 50))[path]) == (11,)  # 5 + 2*3


@pytest.mark.parametrize("path", ["fx", "export"])
def test_resnet18_last_conv_sees_435_pixels(path: str) -> None:
    """The published theoretical receptive field of ResNet-18's last conv is 435x435."""
    gm = _graphs(torchvision.models.resnet18().eval(), torch.randn(1, 3, 224, 224))[path]
    fields = receptive_fields(gm)
    convs = [n for n in gm.graph.nodes if "conv" in str(n.target)]
    assert fields[convs[-1]] == (435, 435)


def test_report_rows_carry_the_field() -> None:
    from convert import ConvertConfig, convert_model

    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Conv2d(4, 4, 3, stride=2), nn.Conv2d(4, 4, 3)).eval()
    rows = convert_model(model, torch.randn(1, 2, 20, 20), ConvertConfig()).report.layers
    assert [row.receptive_field for row in rows] == [[3, 3], [5, 5], [9, 9]]
