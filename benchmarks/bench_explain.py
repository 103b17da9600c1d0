"""CPU timing of vitx's one-pass explainers against one forward + backward of the same model.

Goal being measured: "all one-pass explainers together <= 1.5 x one forward + backward".

Every variant runs in every repeat round, in a rotated order, so clock / thermal / load drift
hits all variants equally; the table reports the median and the minimum over the rounds.

    .venv/bin/python benchmarks/bench_explain.py                      # ViT-B/16 @ 224, 2 threads
    .venv/bin/python benchmarks/bench_explain.py --arch vit_small_patch16_224 --repeats 9
    .venv/bin/python benchmarks/bench_explain.py --with-slow --json /tmp/bench.json

Random-init weights (``pretrained=False``, 14 classes): timings do not depend on the weights.
Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

import torch
from torch import nn

import vitx_core as vx

BASELINE = "fwd+bwd eager"  # main denominator: the attention path vitx itself must use
FUSED = "fwd+bwd fused"


@contextlib.contextmanager
def fused_attention(model: nn.Module, on: bool) -> Iterator[None]:
    """Temporarily set ``fused_attn`` on every timm attention module."""
    mods = [m for m in model.modules() if hasattr(m, "fused_attn")]
    before = [m.fused_attn for m in mods]
    try:
        for m in mods:
            m.fused_attn = on
        yield
    finally:
        for m, v in zip(mods, before):
            m.fused_attn = v


@contextlib.contextmanager
def frozen_params(model: nn.Module) -> Iterator[None]:
    """Temporarily set ``requires_grad=False`` on every parameter (no weight gradients)."""
    params = list(model.parameters())
    before = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, v in zip(params, before):
            p.requires_grad_(v)


def build_variants(model: nn.Module, adapter: vx.VitAdapter, x: torch.Tensor, target: int,
                   with_gradcam_lib: bool) -> tuple[dict[str, Callable[[], object]], dict[str, str]]:
    """name -> zero-argument callable, and name -> one-line description."""
    fused_default = any(getattr(m, "fused_attn", False) for m in model.modules())
    variants: dict[str, Callable[[], object]] = {}
    notes: dict[str, str] = {}

    def forward():
        with torch.no_grad():
            return model(x)

    def fwd_bwd(fused: bool):
        def run():
            with fused_attention(model, fused):
                xi = x.detach().clone().requires_grad_(True)
                y = model(xi)[0, target]
                return torch.autograd.grad(y, xi)[0]
        return run

    variants["forward"] = forward
    notes["forward"] = f"plain forward, no_grad, model default attention (fused={fused_default})"
    variants[FUSED] = fwd_bwd(True)
    notes[FUSED] = "forward + autograd.grad(logits[0, c], input), fused SDPA attention"
    variants[BASELINE] = fwd_bwd(False)
    notes[BASELINE] = ("forward + autograd.grad(logits[0, c], input), eager attention "
                       "(materialised softmax, as vitx needs) -- the BASELINE")

    names = vx.default_methods()
    all_ex = [vx.get_explainer(n) for n in names]
    variants["vitx all one-pass"] = lambda: vx.run_explainers(adapter, x, all_ex, [target])
    notes["vitx all one-pass"] = f"vx.run_explainers with {', '.join(names)} together"
    for n in names:
        ex = [vx.get_explainer(n)]
        variants[f"vitx {n}"] = (lambda ex=ex: vx.run_explainers(adapter, x, ex, [target]))
        notes[f"vitx {n}"] = f"vx.run_explainers with {n} alone"

    if with_gradcam_lib:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        p = int(getattr(model, "num_prefix_tokens", 1))
        gh, gw = adapter.grid_size(tuple(x.shape[-2:]))

        def reshape(t: torch.Tensor) -> torch.Tensor:
            return t[:, p:].reshape(t.shape[0], gh, gw, t.shape[-1]).permute(0, 3, 1, 2)

        def gradcam_lib(frozen: bool):
            def run():
                ctx = frozen_params(model) if frozen else contextlib.nullcontext()
                # frozen weights: the input must require grad or there is no graph to backprop
                xi = x.detach().clone().requires_grad_(True) if frozen else x
                with ctx, GradCAM(model, [model.blocks[-1].norm1], reshape_transform=reshape) as cam:
                    return cam(xi, targets=[ClassifierOutputTarget(target)])
            return run

        variants["grad-cam lib"] = gradcam_lib(False)
        notes["grad-cam lib"] = ("pytorch-grad-cam GradCAM(model, [blocks[-1].norm1]) for one target, "
                                 "as users call it (loss.backward also fills weight grads)")
        variants["grad-cam lib frozen"] = gradcam_lib(True)
        notes["grad-cam lib frozen"] = ("same, parameters frozen and input requires grad (no weight "
                                        "gradients; comparable to the fwd+bwd rows)")
    return variants, notes


def time_rounds(variants: dict[str, Callable[[], object]], repeats: int, warmup: int
                ) -> dict[str, list[float]]:
    """Run every variant once per round, order rotated each round; wall-clock ms per round."""
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            t0 = time.perf_counter()
            variants[n]()
            dt = (time.perf_counter() - t0) * 1e3
            if r >= warmup:
                times[n].append(dt)
    return times


def time_once(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="vit_base_patch16_224", help="timm architecture")
    ap.add_argument("--img", type=int, default=224, help="square input size")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds (median / min reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    ap.add_argument("--target", type=int, default=3, help="class index explained")
    ap.add_argument("--no-gradcam-lib", action="store_true", help="skip pytorch-grad-cam rows")
    ap.add_argument("--with-slow", action="store_true",
                    help="also time attention_flow, occlusion and integrated_gradients once each")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)

    import timm

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model(args.arch, pretrained=False, num_classes=14,
                              img_size=(args.img, args.img)).eval()
    adapter = vx.adapter_from_module(model, multi_label=True)
    x = torch.randn(1, 3, args.img, args.img)

    with_lib = not args.no_gradcam_lib
    if with_lib:
        try:
            import pytorch_grad_cam  # noqa: F401
        except ImportError:
            print("pytorch-grad-cam not installed: reference rows skipped", file=sys.stderr)
            with_lib = False
    variants, notes = build_variants(model, adapter, x, args.target, with_lib)

    print(f"# {args.arch} @ {args.img}x{args.img}, batch 1, CPU, torch {torch.__version__}, "
          f"timm {timm.__version__}, threads {torch.get_num_threads()}, "
          f"{args.repeats} rounds (+{args.warmup} warm-up), {platform.processor() or platform.machine()}")
    times = time_rounds(variants, args.repeats, args.warmup)
    med = {n: statistics.median(v) for n, v in times.items()}
    mins = {n: min(v) for n, v in times.items()}
    base, fused = med[BASELINE], med[FUSED]

    w = max(len(n) for n in times) + 2
    print(f"{'variant':<{w}}{'median ms':>10}{'min ms':>9}{'/ fb eager':>11}{'/ fb fused':>11}"
          f"{'min/min':>9}")
    for n in times:
        print(f"{n:<{w}}{med[n]:>10.1f}{mins[n]:>9.1f}{med[n] / base:>11.2f}{med[n] / fused:>11.2f}"
              f"{mins[n] / mins[BASELINE]:>9.2f}")
    singles = [n for n in times if n.startswith("vitx ") and n != "vitx all one-pass"]
    together = med["vitx all one-pass"]
    single_sum = sum(med[n] for n in singles)
    print(f"{'sum of vitx singles':<{w}}{single_sum:>10.1f}{'':>9}{single_sum / base:>11.2f}"
          f"{single_sum / fused:>11.2f}")
    print("(ratios: median / median of the fb rows; min/min: best round / best round of fb eager)")
    print()
    print(f"all one-pass explainers together = {together / base:.2f} x one forward+backward "
          f"(eager attention; {together / fused:.2f} x with fused attention; "
          f"{together / med['forward']:.2f} x one forward; best rounds "
          f"{mins['vitx all one-pass'] / mins[BASELINE]:.2f} x)")
    print(f"sharing gain: {len(singles)} explainers one by one take {single_sum:.0f} ms, "
          f"together {together:.0f} ms ({single_sum / together:.2f} x faster together)")
    goal = "MET" if together / base <= 1.5 else "NOT MET"
    print(f"goal <= 1.5 x forward+backward (eager): {goal}")
    spread = max(max(v) / min(v) for v in times.values())
    if spread > 1.5:
        print(f"WARNING: some variant's slowest round took {spread:.1f} x its fastest: the machine "
              "was busy; prefer the min columns or rerun with more --repeats")

    slow: dict[str, float] = {}
    if args.with_slow:
        print("\n# on-demand explainers, one run each (ms)")
        for name in ("attention_flow", "occlusion", "integrated_gradients"):
            try:
                ex = [vx.get_explainer(name)]
            except KeyError as e:
                print(f"{name}: not registered ({e})")
                continue
            try:
                slow[name] = time_once(lambda ex=ex: vx.run_explainers(adapter, x, ex, [args.target]))
            except ImportError as e:  # captum / scipy missing
                print(f"{name}: skipped ({e})")
                continue
            print(f"{name:<{w}}{slow[name]:>10.0f}{'':>9}{slow[name] / base:>11.1f}")

    result = {
        "arch": args.arch, "img": args.img, "threads": torch.get_num_threads(),
        "repeats": args.repeats, "warmup": args.warmup, "torch": torch.__version__,
        "timm": timm.__version__, "baseline": BASELINE,
        "median_ms": med, "min_ms": mins, "all_ms": times,
        "notes": notes, "ratio_all_vs_fb_eager": together / base,
        "ratio_all_vs_fb_fused": together / fused, "sum_singles_ms": single_sum,
        "slow_once_ms": slow,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
        print(f"\nwrote {args.json}")
    return result


if __name__ == "__main__":
    main()
