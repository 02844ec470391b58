"""`repro import-teacher`: zju-vipa checkpoints become teacher artefacts, or are refused with one line.

The zju-vipa networks below are written here, independently of repro/import_teacher.py and
repro/nets, after zju-vipa/CMI datafree/models/classifiers/{wresnet,resnet,vgg}.py: their own module
and parameter names, so the round trip checks the renaming *and* that our network computes the same
function.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import transforms
from torchvision.datasets import FakeData

from repro import artefact, cli, io
from repro.data.datasets import CIFAR10, DataSpec, RealDataset
from repro.errors import UserError
from repro.registry.import_teacher import import_teacher
from repro.train.evaluate import accuracy

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
TEST_IMAGES = 64


# ---------------------------------------------------------------- zju-vipa-style networks

class ZjuWrnBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(in_planes), nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(out_planes), nn.ReLU()
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.equal = in_planes == out_planes
        self.convShortcut = None if self.equal else nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(activated))))
        return torch.add(x if self.equal else self.convShortcut(activated), out)


class ZjuNetworkBlock(nn.Module):
    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[ZjuWrnBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
                                     for i in range(n)])


class ZjuWideResNet(nn.Module):
    def __init__(self, depth: int, widen: int, num_classes: int) -> None:
        super().__init__()
        n, widths = (depth - 4) // 6, [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.block1 = ZjuNetworkBlock(n, widths[0], widths[1], 1)
        self.block2 = ZjuNetworkBlock(n, widths[1], widths[2], 2)
        self.block3 = ZjuNetworkBlock(n, widths[2], widths[3], 2)
        self.bn1, self.fc = nn.BatchNorm2d(widths[3]), nn.Linear(widths[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3.layer(self.block2.layer(self.block1.layer(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.bn1(out)), (1, 1)).flatten(1))


class ZjuBasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False), nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class ZjuResNet(nn.Module):
    def __init__(self, num_blocks: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64)
        in_planes = 64
        for index, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks)):
            blocks = []
            for j in range(n):
                blocks.append(ZjuBasicBlock(in_planes, planes, (1 if index == 0 else 2) if j == 0 else 1))
                in_planes = planes
            setattr(self, f"layer{index + 1}", nn.Sequential(*blocks))
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(F.adaptive_avg_pool2d(out, (1, 1)).flatten(1))


class ZjuVGG(nn.Module):
    """zju-vipa's ``vgg11`` (RepDistiller ``vgg11_bn``): ``block0``..``block4`` of conv (with bias), BN,
    ReLU, each block's last ReLU left out of it and applied in ``forward``; max-pools ``pool0``..``pool2``,
    ``pool3`` only for 64-pixel-high inputs, global average ``pool4``, then ``classifier``."""

    def __init__(self, stages: tuple[tuple[int, ...], ...], num_classes: int) -> None:
        super().__init__()
        in_planes = 3
        for index, widths in enumerate(stages):
            layers: list[nn.Module] = []
            for width in widths:
                layers += [nn.Conv2d(in_planes, width, kernel_size=3, padding=1), nn.BatchNorm2d(width), nn.ReLU(True)]
                in_planes = width
            setattr(self, f"block{index}", nn.Sequential(*layers[:-1]))
        for index in range(4):
            setattr(self, f"pool{index}", nn.MaxPool2d(kernel_size=2, stride=2))
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[2]
        x = self.pool0(F.relu(self.block0(x)))
        x = self.pool1(F.relu(self.block1(x)))
        x = self.pool2(F.relu(self.block2(x)))
        x = F.relu(self.block3(x))
        if h == 64:
            x = self.pool3(x)
        x = self.pool4(F.relu(self.block4(x)))
        return self.classifier(x.view(x.size(0), -1))


ZJU_VGG11 = ((64,), (128,), (256, 256), (512, 512), (512, 512))  # their cfg 'A'
ZJU_VGG8 = ((64,), (128,), (256,), (512,), (512,))  # their cfg 'S' (zju-vipa 'vgg8')
ZJU_NETS = {"wrn16_1": lambda k: ZjuWideResNet(16, 1, k), "wrn16_2": lambda k: ZjuWideResNet(16, 2, k),
            "wrn40_2": lambda k: ZjuWideResNet(40, 2, k), "resnet18": lambda k: ZjuResNet((2, 2, 2, 2), k),
            "vgg11_bn": lambda k: ZjuVGG(ZJU_VGG11, k), "vgg8": lambda k: ZjuVGG(ZJU_VGG8, k)}


def zju_model(arch: str, num_classes: int = 10, seed: int = 0) -> nn.Module:
    """A zju-vipa network with random weights *and* random BatchNorm statistics (so nothing is trivial)."""
    torch.manual_seed(seed)
    model = ZJU_NETS[arch](num_classes)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.3, 0.3)
            module.num_batches_tracked.fill_(390 * 200)
    return model.eval()


def save_zju(model: nn.Module, path: Path, prefix: str = "", bare: bool = False) -> Path:
    """Save as zju-vipa's train_scratch.py does (DataParallel adds ``module.``), or as a bare state dict."""
    state = {prefix + key: value for key, value in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[100, 150], gamma=0.1)  # holds a Counter
    record = state if bare else {"state_dict": state, "best_acc1": 94.87, "epoch": 200,
                                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    torch.save(record, path)
    return path


class FakeCifar10(RealDataset):
    """CIFAR-10's spec (classes, shape, normalisation) over torchvision FakeData: no download needed."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.spec = DataSpec(name="cifar10", num_classes=num_classes, channels=3, image_size=32,
                             mean=CIFAR10_MEAN, std=CIFAR10_STD)

    def _load_split(self, name: str, augment: bool) -> FakeData:
        return fake_split()

    def describe(self) -> dict:
        return {"name": "cifar10", "source": "torchvision.datasets.FakeData"}


def fake_split() -> FakeData:
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
    return FakeData(TEST_IMAGES, (3, 32, 32), 10, transform=transform, random_offset=7)


def reference_top1(model: nn.Module) -> float:
    return accuracy(model, fake_split(), 10, torch.device("cpu"))["top1"]


def run(source: Path, arch: str, out: Path, **kwargs) -> dict:
    kwargs.setdefault("dataset", FakeCifar10())
    return import_teacher(source, arch, out, **kwargs)


# ---------------------------------------------------------------- round trips

@pytest.mark.parametrize("arch", ["wrn16_2", "resnet18", "vgg11_bn"])
def test_round_trip_gives_bit_identical_logits(arch: str, tmp_path: Path) -> None:
    source_model = zju_model(arch)
    source = save_zju(source_model, tmp_path / f"cifar10_{arch}.pth")
    expected = reference_top1(source_model)
    out, metrics_path = tmp_path / "teacher", tmp_path / "metrics" / "teacher.json"
    metrics = run(source, arch, out, expected_top1=expected, metrics_path=metrics_path)

    # The same layout `repro train-teacher` writes, loadable by what distill and publish call.
    assert sorted(path.name for path in out.iterdir()) == sorted([artefact.CONFIG_FILE, artefact.GIN_FILE,
                                                                  artefact.WEIGHTS_FILE])
    model, config = artefact.load_artefact(out)
    assert DataSpec.from_dict(config["data"]).num_classes == 10 and config["role"] == "teacher"
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(images), source_model(images))

    record = config["imported_from"]
    assert record["sha256"] == io.sha256_of(source)
    assert record["measured_top1"] == metrics["top1"] == expected
    assert record["reported_best_acc1"] == 94.87 and "stripped_prefix" not in record
    source_keys = list(source_model.state_dict())
    assert sorted(record["key_map"]) == sorted(source_keys)  # every key mapped, each to its own key
    assert sorted(record["key_map"].values()) == sorted(model.state_dict())
    assert json.loads(metrics_path.read_text())["model"] == str(out)


def test_vgg_import_keeps_zju_vipa_pooling_at_every_input_size(tmp_path: Path) -> None:
    # 32 px: no max-pool after block3; 64 px: pool3 too; other sizes (48, 8) follow the same h == 64 rule.
    source_model = zju_model("vgg11_bn", num_classes=100, seed=5)
    assert all(not torch.all(conv.bias == 0) for conv in source_model.modules() if isinstance(conv, nn.Conv2d))
    source = save_zju(source_model, tmp_path / "cifar100_vgg11.pth", prefix="module.")
    run(source, "vgg11_bn", tmp_path / "teacher", dataset=FakeCifar10(num_classes=100), expected_top1=0.0)
    model, config = artefact.load_artefact(tmp_path / "teacher")
    record = config["imported_from"]
    assert record["family"] == "vgg" and record["key_map"]["block3.3.weight"] == "stages.3.3.weight"
    with torch.no_grad():
        for size in (32, 64, 48, 8):
            images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(size))
            assert torch.equal(model(images), source_model(images)), size
            logits, features = model(images, return_features=True)
            assert features.shape == (3, 512) and torch.equal(model.classifier(features), logits)


def test_vgg_names_and_other_configurations_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "teacher"
    source = save_zju(zju_model("vgg11_bn"), tmp_path / "cifar10_vgg11.pth")
    _refused(source, "vgg11", out, "zju-vipa's name for repro's vgg11_bn", "--arch vgg11_bn", expected_top1=0.0)
    _refused(source, "resnet18", out, "file keys unused", "block0.0.weight", expected_top1=0.0)
    vgg8 = save_zju(zju_model("vgg8"), tmp_path / "cifar10_vgg8.pth")
    _refused(vgg8, "vgg11_bn", out, "does not fit --arch vgg11_bn", "unfilled", "stages.2.3.weight",
             expected_top1=0.0)


def test_data_parallel_prefix_and_bare_state_dict(tmp_path: Path) -> None:
    source_model = zju_model("wrn16_1", seed=3)
    source = save_zju(source_model, tmp_path / "dp.pth", prefix="module.", bare=True)
    run(source, "wrn16_1", tmp_path / "teacher", expected_top1=reference_top1(source_model))
    model, config = artefact.load_artefact(tmp_path / "teacher")
    assert config["imported_from"]["stripped_prefix"] == "module."
    assert config["imported_from"]["container"] == "bare state_dict"
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(images), source_model(images))


# ---------------------------------------------------------------- refusals: one line, nothing written

def _refused(source: Path, arch: str, out: Path, *fragments: str, **kwargs) -> str:
    with pytest.raises(UserError) as caught:
        run(source, arch, out, **kwargs)
    message = str(caught.value).splitlines()[0]  # what the CLI prints (gin appends the configurable's name below)
    for fragment in fragments:
        assert fragment in message, message
    assert not out.exists() and not any(path.name.startswith(f".{out.name}") for path in out.parent.iterdir())
    return message


def test_wrong_architecture_is_refused(tmp_path: Path) -> None:
    source = save_zju(zju_model("wrn16_2"), tmp_path / "cifar10_wrn16_2.pth")
    out = tmp_path / "teacher"
    _refused(source, "wrn40_2", out, "does not fit --arch wrn40_2", "unfilled", "blocks.2.", expected_top1=0.0)
    _refused(source, "wrn16_1", out, "shapes differ", "block1.layer.0.conv1.weight [32, 16, 3, 3]", expected_top1=0.0)
    _refused(source, "resnet18", out, "file keys unused", "block1.layer.0", expected_top1=0.0)
    _refused(source, "vgg11_bn", out, "file keys unused", "block1.layer.0", expected_top1=0.0)
    _refused(source, "digits_cnn_large", out, "cannot be imported", "wrn40_2", expected_top1=0.0)


def test_wrong_class_count_names_the_dataset(tmp_path: Path) -> None:
    source = save_zju(zju_model("wrn16_1", num_classes=100), tmp_path / "cifar100_wrn16_1.pth")
    _refused(source, "wrn16_1", tmp_path / "teacher", "100-class network", "dataset has 10", "--dataset",
             expected_top1=0.0)


def test_corrupt_or_foreign_files_are_refused(tmp_path: Path) -> None:
    good = save_zju(zju_model("wrn16_1"), tmp_path / "good.pth").read_bytes()
    out = tmp_path / "teacher"
    for name, content in [("truncated.pth", good[: len(good) // 2]), ("garbage.pth", b"not a checkpoint" * 64),
                          ("empty.pth", b"")]:
        (tmp_path / name).write_bytes(content)
        _refused(tmp_path / name, "wrn16_1", out, "corrupt or not a PyTorch checkpoint", name, expected_top1=0.0)
    torch.save({"best_acc1": 90.0, "epoch": 3}, tmp_path / "no_weights.pth")
    _refused(tmp_path / "no_weights.pth", "wrn16_1", out, "not a state dict", "best_acc1", expected_top1=0.0)
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    _refused(tmp_path / "list.pth", "wrn16_1", out, "not a state dict", expected_top1=0.0)
    _refused(tmp_path / "missing.pth", "wrn16_1", out, "no checkpoint file", expected_top1=0.0)


class _Payload:
    """Unpickling this object would create ``marker``: the loader must never run it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickled_object_is_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    source_model = zju_model("wrn16_1")
    torch.save({"state_dict": source_model.state_dict(), "args": _Payload(marker)}, tmp_path / "evil.pth")
    _refused(tmp_path / "evil.pth", "wrn16_1", tmp_path / "teacher", "Python object", "weights_only",
             expected_top1=0.0)
    assert not marker.exists()


def test_accuracy_far_below_expected_is_refused(tmp_path: Path) -> None:
    source_model = zju_model("wrn16_1")
    measured = reference_top1(source_model)
    source = save_zju(source_model, tmp_path / "cifar10_wrn16_1.pth")
    metrics_path = tmp_path / "teacher.json"
    _refused(source, "wrn16_1", tmp_path / "teacher", f"scores {measured:.2f}%", "nothing written",
             expected_top1=min(100.0, measured + 30.0), metrics_path=metrics_path)
    assert not metrics_path.exists()
    # Just inside the tolerance is accepted.
    run(source, "wrn16_1", tmp_path / "teacher", expected_top1=measured + 1.5, tolerance=2.0)
    assert (tmp_path / "teacher" / artefact.CONFIG_FILE).exists()


def test_expected_top1_defaults_to_the_benchmark_and_is_required_otherwise(tmp_path: Path) -> None:
    source_model = zju_model("wrn40_2")
    source = save_zju(source_model, tmp_path / "cifar10_wrn40_2.pth")
    # Random weights cannot reach the benchmark's 94.87% for a CIFAR-10 wrn40_2.
    _refused(source, "wrn40_2", tmp_path / "teacher", "expected 94.87%")
    _refused(save_zju(zju_model("wrn16_1"), tmp_path / "w.pth"), "wrn16_1", tmp_path / "teacher",
             "no reported top-1 for wrn16_1 on cifar10", "--expected-top1")


# ---------------------------------------------------------------- the command line

def test_cli_imports_through_the_gin_dataset_and_publish_accepts_it(tmp_path: Path, monkeypatch, capsys) -> None:
    opened: list[str] = []

    def fake_cifar_split(self, name: str, augment: bool) -> FakeData:  # no CIFAR download on this machine
        opened.append(self.root)
        return fake_split()

    monkeypatch.setattr(CIFAR10, "_load_split", fake_cifar_split)
    monkeypatch.chdir(tmp_path)  # publish reads metrics/teachers/seed<T>.json relative to the project
    source_model = zju_model("wrn16_1")
    source = save_zju(source_model, tmp_path / "cifar10_wrn16_1.pth", prefix="module.")
    code = cli.main(["import-teacher", str(source), "--arch", "wrn16_1", "--dataset", "cifar10",
                     "--out", "models/teachers/seed0", "--expected-top1", str(reference_top1(source_model)),
                     "--data-root", str(tmp_path / "cifar"), "--metrics", "metrics/teachers/seed0.json"])
    assert code == 0, capsys.readouterr().err
    assert opened == [str(tmp_path / "cifar")]
    operative = (tmp_path / "models/teachers/seed0" / artefact.GIN_FILE).read_text()
    assert "CIFAR10.root" in operative and repr(str(tmp_path / "cifar")) in operative
    assert "import_teacher.dataset = %DATASET" in operative
    assert cli.main(["publish", "--repo-id", "org/imported-teacher", "--model", "models/teachers/seed0", "--dry-run",
                     "--out", "hub", "--no-track"]) == 0, capsys.readouterr().err
    card = (tmp_path / "hub" / "org--imported-teacher" / "README.md").read_text()
    assert "teacher" in card and "imported" in card


def test_cli_bad_input_is_one_error_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "broken.pth").write_bytes(b"\0" * 100)
    code = cli.main(["import-teacher", str(tmp_path / "broken.pth"), "--arch", "wrn40_2", "--dataset", "cifar10",
                     "--out", str(tmp_path / "teacher")])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "corrupt" in lines[0], lines
    code = cli.main(["import-teacher", str(tmp_path / "broken.pth"), "--arch", "wrn40_2", "--dataset", "svhn"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and "cifar10, cifar100" in lines[0] and not (tmp_path / "teacher").exists()
