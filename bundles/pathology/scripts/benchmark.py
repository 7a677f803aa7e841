"""Benchmark of the pathology bundle on synthetic data, through the real bundle commands.

Synthesizes a training set and a held-out set (different seeds; the held-out test split comes from a staining site
never seen in training), trains with the demo settings with and without stain normalisation (the ablation), once
per training seed, evaluates every run on the held-out test split, fits the colour-statistics baseline (logistic
regression on the mean and standard deviation of the H and E channels of ``skimage.color.rgb2hed``), measures
inference throughput and the time for one ``--slide_size`` square slide, checks where Grad-CAM points on phantom
tumour patches whose tumour mask the generator knows (``gradcam_faithfulness``: CAM mass inside the tumour against
the tumour's area fraction, what a uniform map scores), and writes everything to
``<work_dir>/benchmark_results.json`` (``common.benchmark``; peak RSS in MiB).

Run from the repository root:
    .venv/bin/python bundles/pathology/scripts/benchmark.py --work_dir /tmp/pathology_bench
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

BUNDLE = Path(__file__).resolve().parent.parent
REPO = BUNDLE.parent.parent
CONFIGS = BUNDLE / "configs"
sys.path.insert(0, str(REPO))

from common.benchmark import config_list, run_bundle, write_results  # noqa: E402


def bundle_run(configs: list[str], *args: object, log: Path, peaks: list[float]) -> float:
    """Run ``python -m monai.bundle run`` with ``configs`` (output to ``log``); append its peak RSS (MiB) to ``peaks``
    and return its wall time in seconds."""
    measured = run_bundle(["run", "--config_file", config_list(BUNDLE, *configs), *args], log)
    peaks.append(measured["peak_rss_mib"])
    return measured["wall_s"]


def colour_features(images: np.ndarray) -> np.ndarray:
    """Mean and standard deviation of the H and E channels of ``rgb2hed`` per patch."""
    from skimage.color import rgb2hed

    feats = []
    for image in images:
        hed = rgb2hed(image)
        feats.append([hed[..., 0].mean(), hed[..., 0].std(), hed[..., 1].mean(), hed[..., 1].std()])
    return np.asarray(feats)


def baseline_auc(train_dir: Path, test_dir: Path, normalise: bool, seed: int) -> float:
    """Test AUC of the colour-statistics logistic regression (optionally on Macenko-normalised patches)."""
    import h5py
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    sys.path.insert(0, str(BUNDLE))
    from scripts.transforms import MacenkoNormalize

    norm = MacenkoNormalize(enabled=normalise)

    def load(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
        stem = folder / f"camelyonpatch_level_2_split_{split}"
        with h5py.File(f"{stem}_x.h5") as fx, h5py.File(f"{stem}_y.h5") as fy:
            return colour_features([norm(x) for x in np.asarray(fx["x"])]), np.asarray(fy["y"]).reshape(-1)

    x_train, y_train = load(train_dir, "train")
    x_test, y_test = load(test_dir, "test")
    model = LogisticRegression(max_iter=5000, random_state=seed).fit(x_train, y_train)
    return float(roc_auc_score(y_test, model.predict_proba(x_test)[:, 1]))


def _median_rate(fn, items: int, repeats: int = 3) -> float:
    """Items per second of ``fn()`` (median of ``repeats`` timed calls after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return items / float(np.median(times))


def throughput(num_patches: int = 512, batch: int = 64) -> dict[str, float]:
    """Inference speed in one process with torch's default threads, measured in one sweep:

    * ``end_to_end_patches_per_s``: the bundle's own inference path (``inference.json``'s preprocessing with Macenko
      normalisation after the patch loader, the network, sigmoid, in batches of ``batch``) on uint8 patches of the
      unseen site;
    * ``network_patches_per_s`` and ``macenko_patches_per_s``: the two parts alone;
    * ``peer_resnet18_224_patches_per_s``: the architecture of the Model Zoo's ``pathology_tumor_detection`` (ResNet18,
      11.2 M parameters, MONAI's implementation) on 224 x 224 patches in batches of 64, as ANCHORS.md section 7
      timed it, so that the speed-up is read from the same sweep.
    """
    import torch
    from monai.bundle import ConfigParser
    from monai.networks.nets import resnet18
    from monai.transforms import Compose

    sys.path.insert(0, str(BUNDLE))
    from scripts.phantom import make_split
    from scripts.tissue import TEST_SITE
    from scripts.transforms import MacenkoNormalize

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser["stain_normalisation"] = True
    net = parser.get_parsed_content("network_def").eval()
    pre = Compose(parser.get_parsed_content("preprocessing").transforms[1:])  # what follows LoadInputPatchd

    def predictor(patches: np.ndarray) -> list[torch.Tensor]:
        return [torch.sigmoid(net(torch.stack([pre({"image": p})["image"] for p in patches[s:s + batch]])))
                for s in range(0, len(patches), batch)]

    images, _ = make_split(np.random.default_rng(0), num_patches, (TEST_SITE,))
    norm = MacenkoNormalize()
    x = torch.rand(batch, 3, 96, 96)
    # torchvision's ResNet18 stem (7x7 convolution with stride 2): MONAI's default stride is 1, 4x the compute
    peer = resnet18(spatial_dims=2, n_input_channels=3, num_classes=1, conv1_t_stride=2).eval()
    x_peer = torch.rand(64, 3, 224, 224)
    with torch.no_grad():
        result = {
            "end_to_end_patches_per_s": _median_rate(lambda: predictor(images), num_patches),
            "network_patches_per_s": _median_rate(lambda: net(x), batch),
            "macenko_patches_per_s": _median_rate(lambda: [norm(i) for i in images], num_patches),
            "peer_resnet18_224_patches_per_s": _median_rate(lambda: peer(x_peer), 64),
        }
    result["speedup_end_to_end_vs_peer"] = (result["end_to_end_patches_per_s"]
                                            / result["peer_resnet18_224_patches_per_s"])
    result["torch_threads"] = torch.get_num_threads()
    return result


def tumour_patches_with_masks(num_patches: int, seed: int, site: int | None = None, min_fraction: float = 0.05,
                              max_fraction: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """``num_patches`` phantom tumour patches (PCam label 1) of staining ``site`` (default: the unseen test site)
    whose tumour covers between ``min_fraction`` and ``max_fraction`` of the patch, with the generator's tumour masks:
    ``(N, 96, 96, 3)`` uint8 and ``(N, 96, 96)`` bool. Patches covered by tumour all over (60 % of the phantom's
    tumour patches) are left out: a uniform map would already score 1 there, so they test nothing.

    Raises:
        RuntimeError: fewer than ``num_patches`` such patches in ``200 * num_patches`` draws.
    """
    sys.path.insert(0, str(BUNDLE))
    from scripts.phantom import make_patch_with_mask
    from scripts.tissue import TEST_SITE

    rng = np.random.default_rng([int(seed), 15])
    images, masks = [], []
    for _ in range(200 * int(num_patches)):
        if len(images) == int(num_patches):
            break
        image, label, mask = make_patch_with_mask(rng, True, TEST_SITE if site is None else int(site))
        if label == 1 and min_fraction <= mask.mean() <= max_fraction:
            images.append(image)
            masks.append(mask)
    if len(images) < int(num_patches):
        raise RuntimeError(f"only {len(images)} of {num_patches} phantom patches with a partial tumour mask")
    return np.stack(images), np.stack(masks)


def cam_faithfulness(cam_of, images: np.ndarray, masks: np.ndarray, batch: int = 32, n_resamples: int = 1000,
                     seed: int = 0) -> dict:
    """Where Grad-CAM points on patches whose tumour mask is known (issue 15's faithfulness check).

    Args:
        cam_of: maps a ``(B, 96, 96, 3)`` uint8 batch to ``(B, 96, 96)`` maps (e.g. :func:`gradcam_of`).
        images, masks: ``(N, 96, 96, 3)`` patches and their ``(N, 96, 96)`` tumour masks.

    Returns:
        ``cam_in_tumour``: mean over patches of the share of the CAM's mass inside the tumour
        (``common.explain.mass_inside``); ``tumour_area_fraction``: mean share of the patch the tumour covers (what a
        uniform map scores, ``common.explain.area_fraction``); ``cam_minus_uniform`` (their mean paired difference)
        with its 95 % percentile bootstrap interval over patches ``cam_minus_uniform_ci95``; ``cam_beats_uniform``
        (the interval lies above 0), ``cam_beats_uniform_share`` (patches where the CAM scores above the uniform
        map); ``cam_num_patches``; ``cam_empty_maps`` (all-zero or non-finite maps, left out of the means).
    """
    sys.path.insert(0, str(REPO))
    from common.evaluation import bootstrap_ci
    from common.explain import area_fraction, mass_inside

    inside, uniform, empty = [], [], 0
    for start in range(0, len(images), int(batch)):
        heats = np.asarray(cam_of(images[start:start + int(batch)]), dtype=np.float64)
        for heat, mask in zip(heats, masks[start:start + int(batch)]):
            share = mass_inside(heat, mask) if np.isfinite(heat).all() else None
            if share is None:
                empty += 1
                continue
            inside.append(share)
            uniform.append(area_fraction(mask))
    inside_a, uniform_a = np.asarray(inside), np.asarray(uniform)
    diff = inside_a - uniform_a
    ci = bootstrap_ci(lambda idx: float(diff[idx].mean()), len(diff), n_resamples, seed) if len(diff) else None
    return {"cam_in_tumour": float(inside_a.mean()) if len(diff) else None,
            "tumour_area_fraction": float(uniform_a.mean()) if len(diff) else None,
            "cam_minus_uniform": float(diff.mean()) if len(diff) else None,
            "cam_minus_uniform_ci95": list(ci) if ci else None,
            "cam_beats_uniform": bool(ci is not None and ci[0] > 0),
            "cam_beats_uniform_share": float((diff > 0).mean()) if len(diff) else None,
            "cam_num_patches": int(len(diff)), "cam_empty_maps": int(empty)}


def gradcam_of(ckpt_path: str | Path, device: str = "cpu"):
    """The tumour-logit Grad-CAM of a trained checkpoint as a function of uint8 ``(B, 96, 96, 3)`` patches, through
    ``inference.json``'s preprocessing (stain normalisation as recorded beside the checkpoint), network and
    ``explain_layer`` (``common.explain.GradCam``, MONAI's ``GradCAM``)."""
    import torch
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    sys.path.insert(0, str(BUNDLE))
    from common.checkpoint import load_network_weights
    from common.explain import GradCam

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser["ckpt_path"] = str(ckpt_path)
    parser["device"] = f"$torch.device('{device}')"
    net = parser.get_parsed_content("network_def")
    load_network_weights(net, str(ckpt_path))
    net = net.to(device).eval()
    pre = Compose(parser.get_parsed_content("preprocessing").transforms[1:])  # what follows LoadInputPatchd
    cam = GradCam(net, parser.get_parsed_content("explain_layer"), class_idx=0)
    return lambda patches: cam(torch.stack([torch.as_tensor(pre({"image": p})["image"]) for p in patches]).to(device))


def big_slide(path: Path, size: int, seed: int, block: int = 2048) -> float:
    """Write a ``size`` square pyramidal slide made of tiled copies of one rendered ``block`` square slide (rendering
    8192 x 8192 pixels nucleus by nucleus would dominate the benchmark; the inference cost depends only on the size
    and the tissue fraction, which tiling keeps). Returns the seconds taken."""
    sys.path.insert(0, str(BUNDLE))
    from scripts.phantom import render_slide, write_pyramid

    start = time.perf_counter()
    image, _ = render_slide(seed, 0, min(block, size))
    reps = -(-size // image.shape[0])
    write_pyramid(path, np.tile(image, (reps, reps, 1))[:size, :size])
    return time.perf_counter() - start


def main(args: argparse.Namespace) -> dict:
    work = Path(args.work_dir)
    train_dir, test_dir, slide_dir = work / "train_data", work / "heldout_data", work / "slide"
    results: dict = {"settings": vars(args)}
    logs, peaks = work / "logs", []
    if not (train_dir / "camelyonpatch_level_2_split_train_x.h5").exists():
        bundle_run(["synthesize"], "--dataset_dir", train_dir, "--num_cases", args.num_train, "--seed", args.seed,
                   "--num_slides", 0, log=logs / "synthesize_train.log", peaks=peaks)
    if not (test_dir / "camelyonpatch_level_2_split_test_x.h5").exists():
        bundle_run(["synthesize"], "--dataset_dir", test_dir, "--num_cases", 2 * args.num_test, "--seed",
                   args.seed + 1, "--num_slides", 0, log=logs / "synthesize_heldout.log", peaks=peaks)
    seeds = [int(s) for s in str(args.train_seeds).split(",") if s.strip()]
    for name, normalise in (("with_stain_normalisation", True), ("without_stain_normalisation", False)):
        runs = []
        for train_seed in seeds:
            out = work / name if train_seed == seeds[0] else work / f"{name}_seed{train_seed}"
            train_s = bundle_run(["train"], "--dataset_dir", train_dir, "--output_dir", out,
                                 "--stain_normalisation", normalise, "--seed", train_seed,
                                 log=logs / f"train_{out.name}.log", peaks=peaks)
            # no --stain_normalisation here: evaluation reads the setting recorded beside the checkpoint
            eval_s = bundle_run(["train", "evaluate"], "--dataset_dir", test_dir, "--output_dir", out,
                                log=logs / f"evaluate_{out.name}.log", peaks=peaks)
            metrics = json.loads((out / "metrics.json").read_text())
            runs.append({"seed": train_seed, "train_s": train_s, "evaluate_s": eval_s, **metrics})
        aucs = [r["auc"] for r in runs]
        results[name] = {**runs[0], "auc_over_seeds": aucs, "auc_mean_over_seeds": float(np.mean(aucs)),
                         "auc_min_over_seeds": float(np.min(aucs)), "runs": runs}
    images, masks = tumour_patches_with_masks(args.num_cam, args.seed + 2)
    results["gradcam_faithfulness"] = cam_faithfulness(
        gradcam_of(work / "with_stain_normalisation" / "models" / "model.pt"), images, masks)
    results["baseline_colour_stats_auc"] = baseline_auc(train_dir, test_dir, False, args.seed)
    results["baseline_colour_stats_auc_on_normalised"] = baseline_auc(train_dir, test_dir, True, args.seed)
    results["throughput"] = throughput()
    slide_dir.mkdir(parents=True, exist_ok=True)
    if not (slide_dir / "synthetic_slide_000.tif").exists():
        results["slide_synthesis_s"] = big_slide(slide_dir / "synthetic_slide_000.tif", args.slide_size, args.seed)
    results["slide_inference_s"] = bundle_run(
        ["inference"], "--input_dir", slide_dir, "--output_dir", work / "slide_pred", "--ckpt_path",
        work / "with_stain_normalisation" / "models" / "model.pt", log=logs / "slide_inference.log",
        peaks=peaks)
    results["slide_size"] = args.slide_size
    results["peak_rss_mib"] = max(peaks)
    write_results(work, results)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", required=True, help="folder for data, runs and predictions")
    parser.add_argument("--num_train", type=int, default=2000, help="synthetic training patches")
    parser.add_argument("--num_test", type=int, default=500, help="held-out test patches (unseen staining site)")
    parser.add_argument("--num_cam", type=int, default=200,
                        help="phantom tumour patches (unseen site, partial tumour) for the Grad-CAM faithfulness check")
    parser.add_argument("--slide_size", type=int, default=8192, help="side of the slide timed for inference")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training set; held-out uses seed + 1")
    parser.add_argument("--train_seeds", default="0,1,2",
                        help="comma-separated training seeds (network initialisation, sampling, augmentation); "
                             "each arm of the ablation is trained once per seed, since a network's behaviour on an "
                             "unseen site varies from one training run to the next")
    return parser.parse_args(argv)


if __name__ == "__main__":
    print(json.dumps(main(parse_args()), indent=2))
