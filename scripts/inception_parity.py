"""Parity of jaxgan.metrics against the PyTorch references (pytorch-fid, torch-fidelity).

Needs torch (+ pytorch-fid and torch-fidelity for the full check; without them the script falls
back to a plain-PyTorch copy of the reference network). torch is a dependency of this script
only, never of jaxgan:

    python -m venv --system-site-packages /tmp/pvenv
    /tmp/pvenv/bin/pip install torch pytorch-fid torch-fidelity
    /tmp/pvenv/bin/python scripts/inception_parity.py

With the SAME random weights (a torch model initialised from a fixed seed, saved with torch.save
and read back by jaxgan's torch-free reader) it compares, on the same uint8 images:
  * torch-fidelity's FeatureExtractorInceptionV3 (TF1 resize, uint8 in) vs extract_features
    (resize="tf1"): pool 2048, logits without bias (`logits_unbiased`), logits with bias;
  * pytorch-fid's InceptionV3 (F.interpolate resize, [0, 1] in) vs resize="pytorch_fid";
  * read_pth on torch.save zip and legacy files vs the state_dict;
  * frechet_distance vs pytorch-fid's calculate_frechet_distance (incl. nearly singular
    covariances), inception_score / KID vs torch-fidelity's.
Prints max abs / relative differences; exits 1 if a feature difference exceeds --tol (relative to
the reference's max magnitude) or a metric's relative difference exceeds --metric-tol.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn as tnn  # noqa: E402

from jaxgan.metrics import fid, inception  # noqa: E402

FAILURES: list[str] = []


def report(name: str, got, ref, tol: float) -> None:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    abs_diff = float(np.max(np.abs(got - ref)))
    rel = abs_diff / max(float(np.max(np.abs(ref))), 1e-30)
    ok = rel <= tol
    print(f"  {name:<46} max|ref|={np.max(np.abs(ref)):.4g}  max abs diff={abs_diff:.3e}  "
          f"rel={rel:.3e}  {'OK' if ok else 'FAIL'}")
    if not ok:
        FAILURES.append(name)


def report_scalar(name: str, got: float, ref: float, tol: float) -> None:
    rel = abs(got - ref) / max(abs(ref), 1e-30)
    ok = rel <= tol
    print(f"  {name:<46} ours={got:.10g}  ref={ref:.10g}  rel={rel:.3e}  {'OK' if ok else 'FAIL'}")
    if not ok:
        FAILURES.append(name)


# ------------------------------------------------------------------------------------------
# Reference network
# ------------------------------------------------------------------------------------------


def build_reference_torch_model():
    """pytorch-fid's fid_inception_v3() architecture, without downloading its weights."""
    try:
        from pytorch_fid import inception as pfi

        model = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
        model.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
        model.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
        model.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
        model.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
        model.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
        model.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
        model.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
        model.Mixed_7b = pfi.FIDInceptionE_1(1280)
        model.Mixed_7c = pfi.FIDInceptionE_2(2048)
        return model, "pytorch_fid.inception (FIDInceptionA/C/E_1/E_2 on torchvision)"
    except ImportError:
        return PlainFIDInception(), "plain-PyTorch copy of the reference (pytorch-fid missing)"


class _BasicConv(tnn.Module):
    def __init__(self, cin, cout, **kw):
        super().__init__()
        self.conv = tnn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = tnn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


def _avg(x):
    return torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


class _A(tnn.Module):
    def __init__(self, cin, pf):
        super().__init__()
        self.branch1x1 = _BasicConv(cin, 64, kernel_size=1)
        self.branch5x5_1 = _BasicConv(cin, 48, kernel_size=1)
        self.branch5x5_2 = _BasicConv(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = _BasicConv(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = _BasicConv(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = _BasicConv(96, 96, kernel_size=3, padding=1)
        self.branch_pool = _BasicConv(cin, pf, kernel_size=1)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg(x))], 1)


class _B(tnn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = _BasicConv(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = _BasicConv(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = _BasicConv(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = _BasicConv(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            torch.nn.functional.max_pool2d(x, 3, 2)], 1)


class _C(tnn.Module):
    def __init__(self, cin, c7):
        super().__init__()
        self.branch1x1 = _BasicConv(cin, 192, kernel_size=1)
        self.branch7x7_1 = _BasicConv(cin, c7, kernel_size=1)
        self.branch7x7_2 = _BasicConv(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = _BasicConv(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _BasicConv(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = _BasicConv(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _BasicConv(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _BasicConv(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _BasicConv(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = _BasicConv(cin, 192, kernel_size=1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for i in range(1, 6):
            bd = getattr(self, f"branch7x7dbl_{i}")(bd)
        return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_avg(x))], 1)


class _D(tnn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1 = _BasicConv(cin, 192, kernel_size=1)
        self.branch3x3_2 = _BasicConv(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = _BasicConv(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = _BasicConv(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _BasicConv(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _BasicConv(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7,
                          torch.nn.functional.max_pool2d(x, 3, 2)], 1)


class _E(tnn.Module):
    def __init__(self, cin, pool):
        super().__init__()
        self.pool = pool
        self.branch1x1 = _BasicConv(cin, 320, kernel_size=1)
        self.branch3x3_1 = _BasicConv(cin, 384, kernel_size=1)
        self.branch3x3_2a = _BasicConv(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = _BasicConv(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _BasicConv(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = _BasicConv(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = _BasicConv(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _BasicConv(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = _BasicConv(cin, 192, kernel_size=1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        bp = _avg(x) if self.pool == "avg" else torch.nn.functional.max_pool2d(x, 3, 1, 1)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(bp)], 1)


class PlainFIDInception(tnn.Module):
    """The reference network in plain PyTorch (same module names as torchvision/pytorch-fid)."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = _BasicConv(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = _BasicConv(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = _BasicConv(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = _BasicConv(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = _BasicConv(80, 192, kernel_size=3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = _A(192, 32), _A(256, 64), _A(288, 64)
        self.Mixed_6a = _B(288)
        self.Mixed_6b, self.Mixed_6c = _C(768, 128), _C(768, 160)
        self.Mixed_6d, self.Mixed_6e = _C(768, 160), _C(768, 192)
        self.Mixed_7a = _D(768)
        self.Mixed_7b, self.Mixed_7c = _E(1280, "avg"), _E(2048, "max")
        self.fc = tnn.Linear(2048, 1008)


def plain_forward(model, x):
    """x: f32[N, 3, 299, 299] in [-1, 1] -> (pool [N, 2048], logits [N, 1008])."""
    mp = torch.nn.functional.max_pool2d
    x = model.Conv2d_2b_3x3(model.Conv2d_2a_3x3(model.Conv2d_1a_3x3(x)))
    x = model.Conv2d_4a_3x3(model.Conv2d_3b_1x1(mp(x, 3, 2)))
    x = mp(x, 3, 2)
    for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
        x = getattr(model, f"Mixed_{name}")(x)
    pool = x.mean(dim=(2, 3))
    return pool, model.fc(pool)


def randomize_(model: tnn.Module, seed: int) -> None:
    """He-normal convs and non-trivial BN statistics, so every mapped tensor matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, tnn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            elif isinstance(m, tnn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            elif isinstance(m, tnn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features ** 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))


# ------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------


def check_pth_reader(state_dict, tmp: Path) -> Path:
    print("torch-free .pth reader vs torch.save:")
    for legacy in (False, True):
        path = tmp / f"weights_{'legacy' if legacy else 'zip'}.pth"
        torch.save(state_dict, path, _use_new_zipfile_serialization=not legacy)
        loaded = inception.read_pth(path)
        same_keys = list(loaded) == list(state_dict)
        max_diff = max(float(np.max(np.abs(loaded[k].astype(np.float64) - v.numpy())))
                       for k, v in state_dict.items() if v.numel())
        ok = same_keys and max_diff == 0.0
        print(f"  {'legacy' if legacy else 'zip':<7} format: {len(loaded)} tensors, keys equal="
              f"{same_keys}, max abs diff={max_diff:.1e}  {'OK' if ok else 'FAIL'}")
        if not ok:
            FAILURES.append(f"read_pth {'legacy' if legacy else 'zip'}")
    return tmp / "weights_zip.pth"


def check_network(model, state_dict, pth: Path, images: dict, tol: float, batch_size: int):
    import jax

    variables = inception.load_inception_params(pth, download=False)
    print(f"JAX backend: {jax.default_backend()}")
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        tfe = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048", "logits_unbiased", "logits"],
            feature_extractor_weights_path=str(pth),
        )
        tf1_ref = "torch-fidelity FeatureExtractorInceptionV3"
    except ImportError:
        tfe, tf1_ref = None, "plain-PyTorch forward at 299x299 (torch-fidelity missing)"
    try:
        from pytorch_fid import inception as pfi

        pfi.load_state_dict_from_url = lambda *a, **k: state_dict  # offline: our random weights
        pfid = pfi.InceptionV3([3]).eval()
    except ImportError:
        pfid = None

    for label, imgs in images.items():
        nchw = torch.from_numpy(np.ascontiguousarray(imgs.transpose(0, 3, 1, 2)))
        pool, logits_u = inception.extract_features(variables, imgs, batch_size)
        _, logits_b = inception.extract_features(variables, imgs, batch_size, fc_bias=True)
        with torch.no_grad():
            if tfe is not None:
                ref_pool, ref_lu, ref_lb = (t.numpy() for t in tfe(nchw))
            elif imgs.shape[1:3] == (299, 299):
                x = (nchw.float() - 128) / 128
                ref_pool, ref_lb = (t.numpy() for t in plain_forward(model, x))
                ref_lu = ref_pool @ model.fc.weight.numpy().T
            else:
                ref_pool = None
        print(f"{label}: resize='tf1' vs {tf1_ref}")
        if ref_pool is not None:
            report("pool 2048", pool, ref_pool, tol)
            report("logits without fc bias (IS input)", logits_u, ref_lu, tol)
            report("logits with fc bias", logits_b, ref_lb, tol)
        if pfid is not None:
            pool_p, _ = inception.extract_features(variables, imgs, batch_size, resize="pytorch_fid")
            with torch.no_grad():
                ref = pfid(nchw.float() / 255.0)[0][:, :, 0, 0].numpy()
            print(f"{label}: resize='pytorch_fid' vs pytorch_fid.inception.InceptionV3")
            report("pool 2048", pool_p, ref, tol)
            if ref_pool is not None:
                gap = np.max(np.abs(ref - ref_pool)) / np.max(np.abs(ref_pool))
                print(f"  (pytorch-fid vs TF1 preprocessing differ by rel {gap:.3e} on these inputs)")


def check_metrics(seed: int, tol: float) -> None:
    rng = np.random.default_rng(seed)
    try:
        from pytorch_fid.fid_score import calculate_frechet_distance
    except ImportError:
        calculate_frechet_distance = None
    if calculate_frechet_distance is not None:
        print("frechet_distance vs pytorch_fid.fid_score.calculate_frechet_distance:")
        cases = {
            "full-rank D=64 (N=1000)": (1000, 1000, 64),
            "nearly singular D=256 (N=100, rank 99)": (100, 120, 256),
            "D=2048, N=5000 (Inception-sized)": (5000, 5000, 2048),
        }
        for name, (n1, n2, d) in cases.items():
            mix = rng.normal(size=(d, d)) / np.sqrt(d)
            f1 = rng.normal(size=(n1, d)) @ mix
            f2 = rng.normal(size=(n2, d)) @ mix * 1.1 + 0.05
            (m1, s1), (m2, s2) = fid.statistics(f1), fid.statistics(f2)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref = calculate_frechet_distance(m1, s1, m2, s2)
                got = fid.frechet_distance(m1, s1, m2, s2)
            report_scalar(name, got, float(ref), tol)
    try:
        from torch_fidelity.metric_isc import isc_features_to_metric
        from torch_fidelity.metric_kid import kid_features_to_metric
    except ImportError:
        return
    print("inception_score / kernel_inception_distance vs torch-fidelity:")
    logits = rng.normal(size=(1000, 1008)) * 4
    ref = isc_features_to_metric(torch.from_numpy(logits.astype(np.float32)))
    got = fid.inception_score(logits.astype(np.float32))
    report_scalar("IS mean (10 shuffled splits)", got[0], ref["inception_score_mean"], tol)
    report_scalar("IS std", got[1], ref["inception_score_std"], tol)
    f1 = rng.normal(size=(600, 2048)).astype(np.float32)
    f2 = (rng.normal(size=(500, 2048)) * 1.05 + 0.1).astype(np.float32)
    kw = dict(kid_subsets=20, kid_subset_size=200, verbose=False)
    ref = kid_features_to_metric(torch.from_numpy(f1), torch.from_numpy(f2), **kw)
    got = fid.kernel_inception_distance(f1, f2, subsets=20, subset_size=200)
    # torch-fidelity evaluates the kernel in float32, we in float64: compare at 1e-4.
    report_scalar("KID mean (20 subsets of 200)", got[0], ref["kernel_inception_distance_mean"], 1e-4)
    report_scalar("KID std", got[1], ref["kernel_inception_distance_std"], 1e-4)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=4, help="images per input size")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--metric-tol", type=float, default=1e-6)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model, source = build_reference_torch_model()
    randomize_(model, args.seed)
    model.eval()
    state_dict = {k: v.detach().clone() for k, v in model.state_dict().items()}
    print(f"torch {torch.__version__}; reference network: {source}; "
          f"{sum(v.numel() for v in state_dict.values())} weights")

    rng = np.random.default_rng(args.seed)
    images = {
        f"{args.n}x64x64 RGB (upsampled)": rng.integers(0, 256, (args.n, 64, 64, 3), np.uint8),
        f"{args.n}x299x299 RGB (no resize)": rng.integers(0, 256, (args.n, 299, 299, 3), np.uint8),
        f"{args.n}x331x400 RGB (downsampled)": rng.integers(0, 256, (args.n, 331, 400, 3), np.uint8),
    }
    with tempfile.TemporaryDirectory() as tmp:
        pth = check_pth_reader(state_dict, Path(tmp))
        check_network(model, state_dict, pth, images, args.tol, args.batch_size)
    check_metrics(args.seed, args.metric_tol)

    if FAILURES:
        print(f"FAILED: {', '.join(FAILURES)}")
        return 1
    print("all parity checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
